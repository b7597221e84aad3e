"""The retry schedule, printed and checked whole, with a fixed clock and seeded jitter."""

from __future__ import annotations

import random

from mailblast.retry import RetryPolicy


def test_schedule_without_jitter() -> None:
    policy = RetryPolicy(initial=60, factor=2, maximum=3600, jitter=0)
    schedule = [policy.delay(n) for n in range(1, 10)]
    print("retry delays (s):", schedule)
    assert schedule == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(initial=60, factor=2, maximum=3600, jitter=0.2)
    rng = random.Random(7)
    for attempts in range(1, 30):
        base = policy.base_delay(attempts)
        delay = policy.delay(attempts, rng)
        assert base * 0.8 <= delay <= base * 1.2


def test_greylisting_passes_by_third_attempt() -> None:
    # A greylisting relay typically accepts a retry made 5 minutes or more after the first try.
    policy = RetryPolicy(initial=60, factor=2, maximum=3600, jitter=0)
    clock = 0.0
    times = [clock]
    for attempts in range(1, 4):
        clock += policy.delay(attempts)
        times.append(clock)
    assert times == [0, 60, 180, 420]
    assert any(t >= 300 for t in times[:4])


def test_next_attempt_expires_past_max_age() -> None:
    policy = RetryPolicy(initial=60, factor=2, maximum=3600, jitter=0, max_age=600)
    first = 1000.0
    assert policy.next_attempt(1, first, first) == first + 60
    assert policy.next_attempt(4, first, first + 400) is None


def test_next_attempt_expires_past_max_attempts() -> None:
    policy = RetryPolicy(jitter=0, max_attempts=3)
    assert policy.next_attempt(2, 0.0, 0.0) is not None
    assert policy.next_attempt(3, 0.0, 0.0) is None


def test_huge_attempt_count_does_not_overflow() -> None:
    policy = RetryPolicy(initial=60, factor=2, maximum=3600, jitter=0)
    assert policy.base_delay(10_000) == 3600
