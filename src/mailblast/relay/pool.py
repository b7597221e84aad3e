"""The relay pool: which relay takes the next message, and each relay's limits and health.

Selection is smooth weighted round robin (the nginx algorithm) over the usable relays. A relay
whose queue stays full, or that is failing, spills its share to the others. Each
relay has one bounded queue drained by at most ``max_connections`` sessions.

Throttling replies (421, 450, 451, 452) halve the sessions a relay may use, and each success
grows them back a little (AIMD). A relay that asks us to slow down gets fewer connections until
it recovers.

Health is a circuit breaker: after ``FAILURES_TO_OPEN`` consecutive connection failures the relay
is left alone for a backoff that doubles up to ``MAX_BACKOFF`` seconds, then one session probes it
again. A relay-scope refusal (authentication, relaying denied) takes the relay out for the rest of
the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from mailblast.aio import raise_if_cancelling
from mailblast.config import RelaySettings

logger = logging.getLogger("mailblast.relay")

FAILURES_TO_OPEN = 3
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
# A relay whose queue stays full this long is skipped for SATURATED_PAUSE seconds.
SPILL_WAIT = 0.25
SATURATED_PAUSE = 1.0
THROTTLE_INTERVAL = 1.0

JobT = TypeVar("JobT")


class RateLimiter:
    """Spaces acquisitions at least ``1 / rate`` seconds apart, shared by a relay's sessions."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.clock = clock
        self.next_slot = 0.0

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        slot = max(now, self.next_slot)
        self.next_slot = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class RelayState(Generic[JobT]):
    """A relay's runtime state: queue, weight bookkeeping, sessions, counters and health."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.queue: asyncio.Queue[JobT] = asyncio.Queue(maxsize=settings.max_connections)
        self.limiter = RateLimiter(settings.rate)
        self.current_weight = 0
        self.sessions_open = 0
        self.failures = 0
        self.last_failure = ""
        self.down_until = 0.0
        self.saturated_until = 0.0
        self.disabled_reason: str | None = None
        self.smtputf8: bool | None = None  # unknown until a session has seen the EHLO reply
        self.sent = 0
        self.attempts = 0
        # Sessions allowed now: halved by throttling replies, grown back by one per
        # ``allowed`` successes (additive increase, multiplicative decrease).
        self.allowed = float(settings.max_connections)
        self.last_throttle = -THROTTLE_INTERVAL

    def usable(self, now: float) -> bool:
        return self.disabled_reason is None and now >= self.down_until

    def record_success(self) -> None:
        if self.failures >= FAILURES_TO_OPEN:
            logger.info("relay %s: back in the pool after %d failures", self.name, self.failures)
        self.failures = 0
        self.down_until = 0.0

    def record_failure(self, reason: str, now: float) -> None:
        """Count a connection-scope failure; open the circuit after several in a row."""
        self.failures += 1
        self.last_failure = reason
        if self.failures < FAILURES_TO_OPEN:
            return
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.failures - FAILURES_TO_OPEN))
        self.down_until = now + backoff
        if self.failures == FAILURES_TO_OPEN or backoff == MAX_BACKOFF:
            logger.warning(
                "relay %s: %d failures in a row (%s); out of the pool for %.0fs",
                self.name,
                self.failures,
                reason,
                backoff,
            )

    def throttle(self, reason: str, now: float) -> None:
        """Halve the sessions allowed, at most once per THROTTLE_INTERVAL seconds."""
        if now - self.last_throttle < THROTTLE_INTERVAL or self.allowed <= 1:
            return
        self.last_throttle = now
        self.allowed = max(1.0, self.allowed / 2)
        sessions = int(self.allowed)
        logger.info(
            "relay %s: throttled to at most %d concurrent %s after: %s",
            self.name,
            sessions,
            "session" if sessions == 1 else "sessions",
            reason,
        )

    def recover(self) -> None:
        """Grow the sessions allowed back towards max_connections after a success."""
        maximum = self.settings.max_connections
        if self.allowed < maximum:
            self.allowed = min(maximum, self.allowed + 1 / self.allowed)
            if self.allowed == maximum:
                # Logged once per recovery, so that a later throttle line reads as a new event.
                logger.info("relay %s: back to %d concurrent sessions", self.name, maximum)

    def session_allowed(self, slot: int) -> bool:
        return slot < int(self.allowed)

    def enable(self) -> None:
        """Put a relay taken out of the pool back in (after the operator resumes a campaign)."""
        self.disabled_reason = None
        self.failures = 0
        self.down_until = 0.0

    def disable(self, reason: str) -> None:
        if self.disabled_reason is None:
            logger.error("relay %s: taken out of the pool: %s", self.name, reason)
        self.disabled_reason = reason


class RelayPool(Generic[JobT]):
    """All relays of a campaign, with smooth weighted round robin selection."""

    def __init__(self, relays: list[RelaySettings], clock: Callable[[], float] = time.monotonic):
        self.relays: list[RelayState[JobT]] = [RelayState(settings) for settings in relays]
        self.clock = clock
        self.capacity = asyncio.Event()

    def choose(
        self, needs_smtputf8: bool = False, excluded: frozenset[str] = frozenset()
    ) -> RelayState[JobT] | None:
        """Pick the next relay for a message, or None when none can take it now.

        A relay whose queue is full is still chosen while it keeps up, so that weights hold
        when relays differ only in speed; :meth:`put` spills the message if it does not.
        """
        now = self.clock()
        candidates = [
            relay
            for relay in self.relays
            if relay.usable(now)
            and now >= relay.saturated_until
            and relay.name not in excluded
            and not (needs_smtputf8 and relay.smtputf8 is False)
        ]
        if not candidates:
            return None
        total = 0
        best = candidates[0]
        for relay in candidates:
            relay.current_weight += relay.settings.weight
            total += relay.settings.weight
            if relay.current_weight > best.current_weight:
                best = relay
        best.current_weight -= total
        return best

    async def put(self, relay: RelayState[JobT], job: JobT) -> bool:
        """Queue a job on a relay; False (and the relay marked saturated) if it stays full."""
        if not relay.queue.full():
            relay.queue.put_nowait(job)
            return True
        try:
            async with asyncio.timeout(SPILL_WAIT):
                await relay.queue.put(job)
        except TimeoutError:
            raise_if_cancelling()
            relay.saturated_until = self.clock() + SATURATED_PAUSE
            logger.debug(
                "relay %s: queue full for %.2fs; spilling to others", relay.name, SPILL_WAIT
            )
            return False
        return True

    async def wait_for_capacity(self, timeout: float) -> None:
        """Wait until a relay frees queue room or the timeout passes (a relay may come back)."""
        self.capacity.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.capacity.wait()
        except TimeoutError:
            raise_if_cancelling()

    def notify(self) -> None:
        self.capacity.set()

    def any_usable(self, excluded: frozenset[str] = frozenset()) -> bool:
        """True when some relay not in ``excluded`` could take a message now (full or not)."""
        now = self.clock()
        return any(r.usable(now) and r.name not in excluded for r in self.relays)

    def all_disabled(self) -> bool:
        return all(relay.disabled_reason is not None for relay in self.relays)

    def smtputf8_possible(self, excluded: frozenset[str]) -> bool:
        """True while some usable relay offers SMTPUTF8 or has not been asked yet."""
        return any(
            relay.smtputf8 is not False
            and relay.disabled_reason is None
            and relay.name not in excluded
            for relay in self.relays
        )
