"""edged.wasm.scratch: the ticker cuts a worker's stdio files only while a WASI context may write them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.wasm.scratch import STDERR_LIMIT, Scratch, make_scratch_root, remove_scratch_root


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    root = make_scratch_root()
    made = Scratch(root)
    try:
        yield made
    finally:
        made.close()
        remove_scratch_root(root)


def flood(path: Path) -> None:
    path.write_bytes(b"x" * (STDERR_LIMIT + 1024 * 1024))


def test_files_no_wasi_context_may_write_are_not_checked(scratch: Scratch) -> None:
    flood(scratch.stderr)  # not a guest's doing: nothing armed the watch
    scratch.enforce_limits()
    assert scratch.cuts == 0
    assert scratch.stderr.stat().st_size == STDERR_LIMIT + 1024 * 1024


def test_armed_files_are_cut_back_and_reset_disarms(scratch: Scratch) -> None:
    scratch.arm()
    flood(scratch.stderr)
    scratch.enforce_limits()
    assert scratch.cuts == 1
    assert scratch.stderr.stat().st_size == STDERR_LIMIT + 1
    scratch.reset()
    flood(scratch.stderr)
    scratch.enforce_limits()
    assert scratch.cuts == 1
