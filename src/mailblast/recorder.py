"""Group commit: outcomes, delivery records and in-flight marks written together every few ms.

One transaction per message would cap a SQLite store at a few thousand messages per second and
make every session wait for its own commit. Instead the recorder commits whatever has gathered as
soon as the previous commit ends, so the batch grows with the load and an idle store adds no
delay. In-flight marks are the only writes a session waits for: the message's final dot is not
sent before its mark is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mailblast.errors import LeaseLostError, StoreError
from mailblast.store.base import LogRecord, Outcome

logger = logging.getLogger("mailblast.store")


class Recorder:
    """Collects writes from many sessions and commits them in one transaction."""

    def __init__(
        self,
        store: Any,
        campaign_id: int,
        run_in_store_thread: Callable[..., Awaitable[Any]],
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.run_in_store_thread = run_in_store_thread
        self.in_flight: list[int] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.outcomes: list[Outcome] = []
        self.records: list[LogRecord] = []
        self.wake = asyncio.Event()
        self.failed: StoreError | None = None
        self.stopped = False
        self.committed = 0
        self.on_failure: Callable[[StoreError], None] | None = None
        self.owner: str | None = None  # the run whose lease an in-flight mark requires
        # Sees every delivery record as it is handed over (the metrics of `send --metrics`).
        self.observer: Callable[[LogRecord], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def mark_in_flight(self, message: int) -> None:
        """Return once the message's in-flight mark is durable; raise StoreError if it cannot be."""
        if self.failed is not None:
            raise self.failed
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.in_flight.append(message)
        self.waiters.append(future)
        self.wake.set()
        await future

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.wake.set()
        if self.observer is not None:
            self.observer(outcome.record)

    def log(self, record: LogRecord) -> None:
        self.records.append(record)
        self.wake.set()
        if self.observer is not None:
            self.observer(record)

    def pending(self) -> int:
        return len(self.in_flight) + len(self.outcomes) + len(self.records)

    async def run(self) -> None:
        """Commit what has gathered, repeatedly, until stopped; raise on a store failure."""
        # Kept for mark_in_flight: asyncio.get_running_loop() makes a getpid() system call.
        self._loop = asyncio.get_running_loop()
        while not self.stopped or self.pending():
            await self.wake.wait()
            self.wake.clear()
            await self._commit()

    async def flush(self) -> None:
        """Commit everything gathered so far (used before reading counts)."""
        if self.pending():
            await self._commit()

    async def stop(self, task: asyncio.Task[None]) -> None:
        self.stopped = True
        self.wake.set()
        await task

    async def _commit(self) -> None:
        in_flight, self.in_flight = self.in_flight, []
        waiters, self.waiters = self.waiters, []
        outcomes, self.outcomes = self.outcomes, []
        records, self.records = self.records, []
        if not (in_flight or outcomes or records):
            return
        try:
            lost = await self.run_in_store_thread(
                self.store.commit_group, self.campaign_id, in_flight, outcomes, records, self.owner
            )
        except StoreError as error:
            self.failed = error
            logger.error("cannot record outcomes; sending stops: %s", error)
            if self.on_failure is not None:
                self.on_failure(error)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            raise
        self.committed += len(outcomes)
        refused = set(lost)
        for message, waiter in zip(in_flight, waiters, strict=True):
            if waiter.done():
                continue
            if message in refused:
                waiter.set_exception(LeaseLostError(f"message {message}: lease lost"))
            else:
                waiter.set_result(None)
