"""Relay pool: weighted selection, spill, circuit breaker, throttling and rate limiting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest

from mailblast.config import RelaySettings
from mailblast.relay.pool import (
    FAILURES_TO_OPEN,
    MAX_BACKOFF,
    RateLimiter,
    RelayPool,
    RelayState,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def relay(name: str, weight: int = 1, max_connections: int = 4) -> RelaySettings:
    return RelaySettings(
        name=name, host="127.0.0.1", weight=weight, max_connections=max_connections
    )


def test_smooth_weighted_round_robin_order() -> None:
    pool: RelayPool[int] = RelayPool([relay("a", 5), relay("b", 1), relay("c", 1)])
    order = []
    for _ in range(7):
        chosen = pool.choose()
        assert chosen is not None
        order.append(chosen.name)
    assert order == ["a", "a", "b", "a", "c", "a", "a"]


def test_weights_hold_over_many_picks() -> None:
    pool: RelayPool[int] = RelayPool([relay("a", 1), relay("b", 1), relay("c", 2)])
    picks = Counter()
    for _ in range(4000):
        chosen = pool.choose()
        assert chosen is not None
        picks[chosen.name] += 1
    assert picks == {"a": 1000, "b": 1000, "c": 2000}


def test_failing_relay_spills_to_others() -> None:
    clock = FakeClock()
    pool: RelayPool[int] = RelayPool([relay("a"), relay("b")], clock=clock)
    for _ in range(FAILURES_TO_OPEN):
        pool.relays[0].record_failure("refused", clock.now)
    names = set()
    for _ in range(10):
        chosen = pool.choose()
        assert chosen is not None
        names.add(chosen.name)
    assert names == {"b"}


def test_circuit_probes_relay_back_in() -> None:
    clock = FakeClock()
    state: RelayState[int] = RelayState(relay("a"))
    for _ in range(FAILURES_TO_OPEN - 1):
        state.record_failure("timeout", clock.now)
    assert state.usable(clock.now)
    state.record_failure("timeout", clock.now)
    assert not state.usable(clock.now)
    assert state.usable(clock.now + 1.0)
    state.record_success()
    assert state.failures == 0
    assert state.usable(clock.now)


def test_circuit_backoff_doubles_to_maximum() -> None:
    state: RelayState[int] = RelayState(relay("a"))
    backoffs = []
    for _ in range(FAILURES_TO_OPEN + 8):
        state.record_failure("refused", 0.0)
        backoffs.append(state.down_until)
    assert backoffs[FAILURES_TO_OPEN - 1 :] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert max(backoffs) == MAX_BACKOFF


def test_disabled_relay_never_chosen_until_enabled() -> None:
    pool: RelayPool[int] = RelayPool([relay("a"), relay("b")])
    pool.relays[0].disable("535 5.7.8 authentication failed")
    assert {pool.choose().name for _ in range(5)} == {"b"}  # type: ignore[union-attr]
    pool.relays[1].disable("550 5.7.1 relaying denied")
    assert pool.choose() is None
    assert pool.all_disabled()
    pool.relays[0].enable()
    chosen = pool.choose()
    assert chosen is not None
    assert chosen.name == "a"


def test_throttle_halves_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailblast.relay")
    state: RelayState[int] = RelayState(relay("a", max_connections=8))
    state.throttle("421", 0.0)
    assert state.allowed == 4
    state.throttle("421", 0.5)  # within the throttle interval: ignored
    assert state.allowed == 4
    state.throttle("451", 1.5)
    assert state.allowed == 2
    assert state.session_allowed(1)
    assert not state.session_allowed(2)
    successes = 0
    while state.allowed < 8:
        state.recover()
        successes += 1
    assert 20 <= successes <= 40
    assert state.allowed == 8
    state.recover()
    recovered = [r.getMessage() for r in caplog.records if "back to" in r.getMessage()]
    assert recovered == ["relay a: back to 8 concurrent sessions"]


def test_smtputf8_relay_skipped_when_known_without() -> None:
    pool: RelayPool[int] = RelayPool([relay("plain"), relay("utf8")])
    pool.relays[0].smtputf8 = False
    pool.relays[1].smtputf8 = True
    assert {pool.choose(needs_smtputf8=True).name for _ in range(4)} == {"utf8"}  # type: ignore[union-attr]
    assert not pool.smtputf8_possible(frozenset({"utf8"}))


def test_put_spills_when_queue_stays_full() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        pool: RelayPool[int] = RelayPool([relay("a", max_connections=1), relay("b")])
        first = await pool.put(pool.relays[0], 1)
        second = await pool.put(pool.relays[0], 2)
        return first, second, pool.relays[0].saturated_until

    first, second, saturated_until = asyncio.run(scenario())
    assert first is True
    assert second is False
    assert saturated_until > 0


def test_rate_limiter_spaces_messages() -> None:
    async def scenario() -> float:
        limiter = RateLimiter(50.0)
        started = time.monotonic()
        for _ in range(11):
            await limiter.acquire()
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert 0.19 <= elapsed < 0.5
