"""The one jittered backoff (edged.retry): bounds, growth, cap, reset, jitter range."""

from __future__ import annotations

import pytest

from edged.retry import Backoff, backoff_delay, jittered

DRAWS = 200


def test_each_delay_lies_in_half_to_full_of_the_doubled_first_delay_up_to_the_cap() -> None:
    for attempt in range(14):
        ceiling = min(8.0, 0.25 * 2**attempt)
        delays = [backoff_delay(attempt, 0.25, 8.0) for _ in range(DRAWS)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))


def test_the_jitter_spreads_over_the_whole_lower_half() -> None:
    delays = [backoff_delay(3, 0.25, 8.0) for _ in range(DRAWS)]  # ceiling 2.0: in [1.0, 2.0]
    assert min(delays) < 1.25
    assert max(delays) > 1.75
    assert len(set(delays)) > DRAWS // 2


def test_backoff_grows_until_the_cap_and_starts_over_after_reset() -> None:
    backoff = Backoff(0.5, 30.0)
    ceilings = [min(30.0, 0.5 * 2**i) for i in range(12)]
    delays = [backoff.next() for _ in ceilings]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert backoff.failures == len(ceilings)
    # Growth: once the ceilings are 4x apart, the ranges cannot overlap.
    assert delays[0] < delays[2] < delays[4] < delays[6]
    assert all(15.0 <= d <= 30.0 for d in delays[7:])  # capped
    backoff.reset()
    assert backoff.failures == 0
    assert 0.25 <= backoff.next() <= 0.5


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert 5.0 <= backoff_delay(10_000, 0.1, 10.0) <= 10.0
    backoff = Backoff(1.0, 2.0)
    backoff.failures = 5000
    assert 1.0 <= backoff.next() <= 2.0


def test_jittered_stays_within_its_spread() -> None:
    values = [jittered(60.0) for _ in range(DRAWS)]
    assert all(45.0 <= v <= 75.0 for v in values)
    assert min(values) < 55.0 < 65.0 < max(values)


@pytest.mark.parametrize(("first", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_a_backoff_that_cannot_work_is_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first, cap)
