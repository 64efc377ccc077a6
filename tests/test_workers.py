"""edged.wasm.workers: jobs, cancellation before a worker takes them, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edged.wasm.workers import Job, Permits, Workers

pytestmark = pytest.mark.timeout(60)


def test_results_and_errors_reach_the_caller() -> None:
    workers = Workers(2, "test-workers")
    ended: list[str] = []

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> None:
        ok = Job(lambda a, b: (a + b, threading.current_thread().name), (1, 2), lambda: ended.append("ok"))
        bad = Job(boom, (), lambda: ended.append("bad"))
        workers.submit(ok)
        workers.submit(bad)
        value, thread = await ok.future
        assert value == 3
        assert thread.startswith("test-workers_")
        with pytest.raises(ValueError, match="boom"):
            await bad.future

    try:
        asyncio.run(main())
    finally:
        workers.shutdown()
    assert sorted(ended) == ["bad", "ok"]


def test_a_job_cancelled_before_a_worker_takes_it_never_runs_and_ends_once() -> None:
    workers = Workers(1, "test-workers")
    gate = threading.Event()
    ran: list[str] = []
    ended: list[str] = []

    async def main() -> None:
        blocker = Job(gate.wait, (30,), lambda: ended.append("blocker"))
        waiting = Job(lambda: ran.append("waiting"), (), lambda: ended.append("waiting"))
        workers.submit(blocker)
        workers.submit(waiting)
        waiting.future.cancel()
        await asyncio.sleep(0)  # the future's callbacks run on the loop
        assert ended == ["waiting"]
        gate.set()
        assert await blocker.future is True

    try:
        asyncio.run(main())
    finally:
        workers.shutdown()
    assert ran == []
    assert sorted(ended) == ["blocker", "waiting"]


def test_shutdown_runs_what_was_queued_then_refuses() -> None:
    workers = Workers(1, "test-workers")
    gate = threading.Event()
    ran: list[int] = []

    async def main() -> list[asyncio.Future[None]]:
        jobs = [Job(gate.wait, (30,), lambda: None)]
        jobs += [Job(ran.append, (i,), lambda: None) for i in range(3)]
        for job in jobs:
            workers.submit(job)
        return [job.future for job in jobs]

    asyncio.run(main())  # the loop is gone before the jobs end: their results go nowhere
    closer = threading.Thread(target=workers.shutdown)
    closer.start()
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    assert ran == [0, 1, 2]

    async def late() -> None:
        with pytest.raises(RuntimeError, match="shut down"):
            workers.submit(Job(ran.append, (9,), lambda: None))

    asyncio.run(late())


def test_permits_bound_holders_and_block_until_one_is_given_back() -> None:
    permits = Permits(2)
    entered = threading.Event()
    with permits, permits:  # both permits taken
        third = threading.Thread(target=lambda: (permits.__enter__(), entered.set()), daemon=True)
        third.start()
        assert not entered.wait(0.05)  # a third holder waits while both are held
    assert entered.wait(10), "a permit given back lets the waiting holder in"
    third.join(10)
