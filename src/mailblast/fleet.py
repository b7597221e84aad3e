"""Relay limits held for every worker of a campaign together, through the store.

With a store that several machines share (PostgreSQL), a relay's ``max_connections`` are rows of
``relay_slots``: a session holds one, under the run's lease, while its connection is open. The
relay's ``rate`` is a shared time of the next send in ``relay_budget``, and its ``daily_quota``
a per-day counter beside it. A worker that dies keeps its slots only until its lease expires.

With a SQLite store one process sends, so connections and rate stay in memory, with no store
round trip per message. Only a daily quota is counted in the store, so that it survives a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailblast.relay.pool import RelayState

logger = logging.getLogger("mailblast.relay")

SLOT_POLL_SECONDS = 0.1
DAY_SECONDS = 86400.0


class RelayLimits:
    """Connection slots, rate and daily quota of each relay, for this run's sessions."""

    def __init__(
        self,
        store: Any,
        campaign_id: int,
        run_id: str,
        lease: float,
        run_in_store_thread: Callable[..., Awaitable[Any]],
        clock: Callable[[], float] = time.time,
        pool_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.run_id = run_id
        self.lease = lease
        self.db = run_in_store_thread
        self.clock = clock
        self.pool_clock = pool_clock
        self.shared: bool = store.shared

    async def prepare(self, relays: list[RelayState[Any]]) -> None:
        counts = [(relay.name, relay.settings.max_connections) for relay in relays]
        await self.db(self.store.prepare_relays, self.campaign_id, counts)

    # NOTE: a run that cannot renew its lease in time (a process stalled for longer than the
    # lease) keeps its open connections while another run takes over their slots, so the relay
    # may briefly see more than max_connections. Its messages are safe: see commit_group.
    async def acquire_slot(
        self, relay: RelayState[Any], keep_waiting: Callable[[], bool]
    ) -> int | None:
        """Wait for one of the relay's connection slots; None once keep_waiting returns False."""
        if not self.shared:
            return 0
        while keep_waiting():
            now = self.clock()
            slot = await self.db(
                self.store.acquire_slot,
                self.campaign_id,
                relay.name,
                self.run_id,
                now,
                now + self.lease,
            )
            if slot is not None:
                return int(slot)
            await asyncio.sleep(SLOT_POLL_SECONDS)
        return None

    async def release_slot(self, relay: RelayState[Any], slot: int) -> None:
        if self.shared:
            await self.db(self.store.release_slot, self.campaign_id, relay.name, slot, self.run_id)

    async def release_all(self) -> None:
        if self.shared:
            await self.db(self.store.release_slots, self.campaign_id, self.run_id)

    async def pace(self, relay: RelayState[Any]) -> bool:
        """Wait for the relay's rate; False when its daily quota is used up for today."""
        settings = relay.settings
        shared_rate = self.shared and settings.rate is not None
        if not shared_rate:
            await relay.limiter.acquire()
            if settings.daily_quota is None:
                return True
        now = self.clock()
        interval = 1.0 / settings.rate if shared_rate and settings.rate else 0.0
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        start = await self.db(
            self.store.take_send_budget,
            self.campaign_id,
            relay.name,
            now,
            interval,
            settings.daily_quota,
            day,
        )
        if start is None:
            self._rest_until_tomorrow(relay, now)
            return False
        if start > now:
            await asyncio.sleep(start - now)
        return True

    def _rest_until_tomorrow(self, relay: RelayState[Any], now: float) -> None:
        """Take the relay out of the pool until midnight UTC, when its quota starts again."""
        wait = DAY_SECONDS - now % DAY_SECONDS
        relay.down_until = self.pool_clock() + wait
        relay.last_failure = f"daily quota of {relay.settings.daily_quota} messages reached"
        logger.warning(
            "relay %s: %s; resting for %.0fs until midnight UTC",
            relay.name,
            relay.last_failure,
            wait,
        )
