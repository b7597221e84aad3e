"""The sending engine: claim ─► compose ─► send ─► record, on one asyncio event loop.

Tasks:
- the claimer takes batches of due messages from the store under a lease;
- the dispatcher hands each message to a relay chosen by the pool;
- each relay has up to ``max_connections`` session tasks that compose and send;
- the recorder writes outcomes and in-flight marks in group commits.

Suppression: the claim flags messages whose address is already suppressed, and the control task
queries the store once a second which claimed messages became suppressed since. Each message is
checked against that small set just before it is composed. A suppression added mid-blast so
stops every message not composed before the engine's next look, for one store query per
claimed batch and one per second.

Crash safety: a message's in-flight mark is committed after the relay's 354 and before the
message and its final dot are written, and the outcome after the reply. A run that dies leaves
each claimed message either without the mark (requeued by the next run) or with it (``unknown``).
If a commit fails, the recorder fails every waiting mark, so no further message is handed over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailblast.aio import raise_if_cancelling
from mailblast.compose import Composer, message_id_for, needs_smtputf8
from mailblast.config import Campaign
from mailblast.errors import LeaseLostError, StoreError, TemplateError
from mailblast.fleet import RelayLimits
from mailblast.recorder import Recorder
from mailblast.relay.classify import Command, Reply, Scope
from mailblast.relay.client import CLOSE_SECONDS, wait_closed
from mailblast.relay.connection import RelayConnection, SessionError, default_ehlo_name
from mailblast.relay.pool import RelayPool, RelayState
from mailblast.retry import RetryPolicy
from mailblast.store.base import CampaignRow, ClaimedMessage, LogRecord, Outcome
from mailblast.store.sql import SQLStore

logger = logging.getLogger("mailblast.engine")

IDLE_SESSION_SECONDS = 5.0
# On a shared store an idle session keeps a connection slot that another run may be waiting for.
SHARED_IDLE_SESSION_SECONDS = 0.3
# On a shared store a run claims about what its sessions send in this time. Then the messages it
# claimed do not wait while other runs have free sessions. A claim is at least CLAIM_PER_SESSION
# messages for each session.
CLAIM_AHEAD_SECONDS = 2.0
CLAIM_PER_SESSION = 10
IDLE_CHECK_SECONDS = 2.0  # a session idle this long is checked with NOOP before reuse
THROTTLED_SLOT_POLL = 0.2
SHUTDOWN_SECONDS = 30.0
# Replies that ask a client to slow down (RFC 5321 section 4.2.3 and common relay practice).
THROTTLE_CODES = frozenset({421, 450, 451, 452})
CONTROL_POLL_SECONDS = 1.0
MAX_REDISPATCH = 5

T = TypeVar("T")


@dataclass(slots=True)
class Job:
    """A claimed message on its way through the pipeline."""

    message: ClaimedMessage
    excluded: frozenset[str] = frozenset()
    redispatches: int = 0


@dataclass
class RunStats:
    """Counters of this run, for the progress display and the summary."""

    started: float = field(default_factory=time.monotonic)
    outcomes: Counter[str] = field(default_factory=Counter)
    next_due: float | None = None
    stop_reason: str | None = None
    interrupted: bool = False  # stopped by SIGINT or SIGTERM before the work was done


class Engine:
    """Sends one campaign's due messages until none remain, or until stopped."""

    def __init__(
        self,
        store: SQLStore,
        campaign: Campaign,
        row: CampaignRow,
        composer: Composer,
        *,
        clock: Callable[[], float] = time.time,
        ehlo_name: str | None = None,
    ) -> None:
        self.store = store
        self.campaign = campaign
        self.row = row
        self.composer = composer
        self.clock = clock
        self.ehlo_name = ehlo_name or default_ehlo_name()
        self.run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.policy = RetryPolicy.from_settings(campaign.sending)
        self.pool: RelayPool[Job] = RelayPool(list(campaign.relays))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailblast-store")
        self.recorder = Recorder(store, row.id, self._db)
        self.recorder.on_failure = lambda error: self.request_stop(f"the store failed: {error}")
        self.recorder.owner = self.run_id
        self.stats = RunStats()
        self.pending: deque[Job] = deque()
        self.pending_ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.paused = False
        self.wait_for_deferred = True
        self._claimed: dict[int, Job] = {}
        self._suppressed: set[int] = set()  # ids of claimed messages suppressed since the claim
        self.failure: Exception | None = None
        self.cancelled = False
        self._busy: set[asyncio.Task[Any]] = set()
        self.recent_errors: deque[bool] = deque(maxlen=campaign.sending.error_window)
        self.recent_error_count = 0  # the True entries of recent_errors, kept without a sum
        self.limits = RelayLimits(
            store, row.id, self.run_id, campaign.sending.lease, self._db, clock, self.pool.clock
        )
        self._slots: dict[RelayConnection, int] = {}  # connection -> its relay_slots row
        self._claim_call: asyncio.Future[list[ClaimedMessage]] | None = None
        self._done_samples: deque[int] = deque(maxlen=4)  # this run's outcomes, counted each second

    async def _db(self, function: Callable[..., T], *args: Any) -> T:
        """Run a store call on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, function, *args)

    # Lifecycle

    async def run(self, *, wait: bool = True) -> RunStats:
        """Send until every message is final (or, without ``wait``, until nothing is due now).

        Raises the first error a task met (a StoreError when an outcome cannot be written),
        after stopping every other task.
        """
        self.wait_for_deferred = wait
        await self._start()
        recorder_task = asyncio.create_task(self._guard(self.recorder.run()), name="recorder")
        control_tasks: list[asyncio.Task[None]] = []
        session_tasks: list[asyncio.Task[None]] = []
        if not self.stopping.is_set():  # a paused campaign under --no-wait starts nothing
            control = [self._claimer(), self._dispatcher(), self._control()]
            control_tasks = [asyncio.create_task(self._guard(worker)) for worker in control]
            session_tasks = [
                asyncio.create_task(self._guard(self._session(relay, slot)))
                for relay in self.pool.relays
                for slot in range(relay.settings.max_connections)
            ]
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown(control_tasks, session_tasks, recorder_task)
        if self.failure is not None:
            raise self.failure
        return self.stats

    async def _guard(self, worker: Coroutine[Any, Any, None]) -> None:
        """Run one task; an error in any of them stops the whole engine, never just that task."""
        try:
            await worker
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self.failure is None:
                self.failure = error
            logger.error("campaign %s: stopping after an error: %s", self.campaign.name, error)
            self.request_stop(f"error: {error}")

    async def _start(self) -> None:
        now = self.clock()
        await self._db(
            self.store.register_run,
            self.run_id,
            self.row.id,
            socket.gethostname(),
            os.getpid(),
            now,
        )
        await self.limits.prepare(self.pool.relays)
        dead = await self._db(self._dead_owners)
        result = await self._db(self.store.recover, self.row.id, dead, now)
        if result.requeued or result.unknown:
            logger.warning(
                "campaign %s: took over %d claimed messages from stopped runs (%d unknown)",
                self.campaign.name,
                result.requeued + result.unknown,
                result.unknown,
            )
        await self._db(self.store.mark_started, self.row.id, now)
        if self.row.status == "paused":
            # Start paused, so that nothing goes out before the control task's first poll.
            self.paused = True
            logger.info(
                "campaign %s: paused (%s); waiting for 'mailblast resume'",
                self.campaign.name,
                self.row.status_reason or "no reason given",
            )
            if not self.wait_for_deferred:
                self.request_stop("paused")

    def _sending(self) -> bool:
        return not (self.paused or self.stopping.is_set())

    def _dead_owners(self) -> list[str]:
        """Runs on this host whose process is gone; their claims can be taken over at once."""
        host = socket.gethostname()
        dead = []
        for owner in self.store.lease_owners(self.row.id):
            owner_host, _, rest = owner.partition(":")
            pid_text = rest.partition(":")[0]
            if owner_host == host and pid_text.isdigit() and not _process_alive(int(pid_text)):
                dead.append(owner)
        return dead

    def request_stop(self, reason: str) -> None:
        """Stop starting new messages; sessions finish the message they are sending."""
        if not self.stopping.is_set():
            logger.info("campaign %s: stopping: %s", self.campaign.name, reason)
            self.stats.stop_reason = reason
            self.stopping.set()

    async def _shutdown(
        self,
        control_tasks: list[asyncio.Task[None]],
        session_tasks: list[asyncio.Task[None]],
        recorder_task: asyncio.Task[None],
    ) -> None:
        """Let sessions finish the message they are sending, then stop and save the state.

        Idle sessions are cancelled at once; busy ones get SHUTDOWN_SECONDS. If this coroutine
        is itself cancelled (a second Ctrl-C), claimed messages stay claimed, and the next run
        takes them back: requeued, or unknown when their final dot may have been written.
        """
        self.stopping.set()
        for task in control_tasks:
            task.cancel()
        for task in session_tasks:
            if task not in self._busy:
                task.cancel()
        stuck: set[asyncio.Task[None]] = set()
        if control_tasks or session_tasks:
            _, stuck = await asyncio.wait(control_tasks + session_tasks, timeout=SHUTDOWN_SECONDS)
        if stuck:
            logger.error(
                "campaign %s: %d sessions still sending after %.0fs; cancelling them",
                self.campaign.name,
                len(stuck),
                SHUTDOWN_SECONDS,
            )
            for task in stuck:
                task.cancel()
            await asyncio.wait(stuck)
        await wait_closed(CLOSE_SECONDS)
        await self._adopt_cancelled_claim()
        unsent = [job.message.id for job in self._claimed.values()]
        try:
            # After a store failure nothing more can be written: the claims stay, and the
            # next run takes them back. After any other failure the state is saved as usual.
            if not isinstance(self.failure, StoreError):
                await self.recorder.stop(recorder_task)
                if unsent:
                    await self._db(self.store.release, self.row.id, self.run_id, unsent)
                await self.limits.release_all()
                if self.cancelled:
                    count = await self._db(self.store.cancel_remaining, self.row.id, self.clock())
                    logger.info("campaign %s: cancelled %d messages", self.campaign.name, count)
                await self._db(self.store.remove_run, self.run_id)
        finally:
            recorder_task.cancel()
            await asyncio.gather(recorder_task, return_exceptions=True)
            self.executor.shutdown(wait=True)

    async def _adopt_cancelled_claim(self) -> None:
        """Count as claimed the messages of a claim whose claimer was cancelled while it ran."""
        claim, self._claim_call = self._claim_call, None
        if claim is None:
            return
        try:
            claimed = await claim
        except Exception:
            return  # a claim that failed claimed nothing; the shutdown goes on
        for message in claimed:
            self._claimed[message.id] = Job(message)

    # Claiming and dispatching

    def _claim_size(self) -> int:
        """Return how many messages to claim: ``batch_size``, capped on a shared store.

        The cap is CLAIM_AHEAD_SECONDS of this run's recent sending, and of the relays' rates
        when every relay has one.
        """
        batch = self.campaign.sending.batch_size
        if not self.limits.shared:
            return batch
        relays = [relay.settings for relay in self.pool.relays]
        sessions = sum(settings.max_connections for settings in relays)
        samples = self._done_samples
        per_second = (samples[-1] - samples[0]) / (len(samples) - 1) if len(samples) > 1 else 0
        size = max(sessions * CLAIM_PER_SESSION, per_second * CLAIM_AHEAD_SECONDS)
        rates = [settings.rate for settings in relays]
        if all(rate is not None for rate in rates):
            # At least one a session, so that sessions pacing a slow rate never sit idle.
            per_rate = sum(r for r in rates if r is not None) * CLAIM_AHEAD_SECONDS
            size = min(size, max(sessions, per_rate))
        return max(1, min(batch, int(size)))

    async def _claimer(self) -> None:
        while not self.stopping.is_set():
            if self.paused:
                await asyncio.sleep(CONTROL_POLL_SECONDS / 4)
                continue
            batch = self._claim_size()
            if len(self._claimed) >= batch * 2:
                await asyncio.sleep(0.005)
                continue
            now = self.clock()
            lease_until = now + self.campaign.sending.lease
            # Shielded, so that a claim the store makes while the claimer is cancelled is not
            # lost: the shutdown adopts it and releases its messages.
            self._claim_call = asyncio.ensure_future(
                self._db(self.store.claim, self.row.id, self.run_id, now, lease_until, batch)
            )
            claimed = await asyncio.shield(self._claim_call)
            self._claim_call = None
            for message in claimed:
                job = Job(message)
                self._claimed[message.id] = job
                if message.suppressed:
                    self._skip_suppressed(job)
                else:
                    self.pending.append(job)
            if claimed:
                self.pending_ready.set()
                continue
            if not self._claimed:
                await self._idle(now)
            else:
                await asyncio.sleep(0.02)

    async def _idle(self, now: float) -> None:
        """Nothing claimed and nothing due: finish, or sleep until the next retry falls due."""
        await self.recorder.flush()
        next_due = await self._db(self.store.next_due, self.row.id)
        self.stats.next_due = next_due
        if next_due is None:
            counts = await self._db(self.store.counts, self.row.id)
            if not any(counts.get(state) for state in ("queued", "deferred", "sending")):
                self.request_stop("every message is final")
            else:
                # Other runs are sending; on a shared store, poll it less often.
                await asyncio.sleep(0.5 if self.limits.shared else 0.05)
            return
        if not self.wait_for_deferred and next_due > now:
            self.request_stop("nothing is due now (--no-wait)")
            return
        await asyncio.sleep(min(1.0, max(0.01, next_due - now)))

    async def _dispatcher(self) -> None:
        while True:
            while not self.pending:
                self.pending_ready.clear()
                await self.pending_ready.wait()
            job = self.pending.popleft()
            relay = await self._choose_relay(job)
            if relay is not None and not await self.pool.put(relay, job):
                self.pending.appendleft(job)

    async def _choose_relay(self, job: Job) -> RelayState[Job] | None:
        while True:
            if self.paused or self.stopping.is_set():
                self.pending.appendleft(job)
                await asyncio.sleep(0.1)
                return None
            if job.message.smtputf8 and not self.pool.smtputf8_possible(job.excluded):
                self._fail_smtputf8(job)
                return None
            relay = self.pool.choose(job.message.smtputf8, job.excluded)
            if relay is not None:
                return relay
            if self.pool.all_disabled():
                await self._pause_self("no relay is usable: " + self._disabled_reasons())
                self.pending.appendleft(job)
                return None
            if not self.pool.any_usable(job.excluded):
                self._defer_unroutable(job)
                return None
            await self.pool.wait_for_capacity(0.05)

    def _defer_unroutable(self, job: Job) -> None:
        """Record a message as deferred while every relay is out of the pool after failures.

        Holding it in memory would keep a --no-wait run alive and hide the wait from status.
        """
        reasons = "; ".join(
            f"{relay.name}: {relay.last_failure}" for relay in self.pool.relays if relay.failures
        )
        text = f"no relay is usable now ({reasons or 'all out of the pool'})"
        self._finish(job, None, Reply(Command.CONNECT, None, None, text, Scope.CONNECTION), 0.0)

    def _disabled_reasons(self) -> str:
        return "; ".join(f"{r.name}: {r.disabled_reason}" for r in self.pool.relays)

    def _redispatch(self, job: Job) -> None:
        job.redispatches += 1
        self.pending.appendleft(job)
        self.pending_ready.set()

    # Sessions

    async def _session(self, relay: RelayState[Job], slot: int) -> None:
        """Take messages from the relay's queue and send them over one connection slot.

        Slots at or above the relay's allowed session count (lowered by throttling replies)
        close their session and take nothing until the relay recovers.
        """
        connection: RelayConnection | None = None
        # The job taken while the previous one was sent, whose envelope may be written ahead.
        following: Job | None = None
        task = asyncio.current_task()
        assert task is not None
        try:
            # Checking stopping as well as being cancelled: on Python 3.11 a cancellation that
            # meets a timeout's expiry can be lost (see aio.raise_if_cancelling). A job still
            # in ``following`` then stays claimed, and the shutdown releases it.
            while not self.stopping.is_set():
                if not relay.session_allowed(slot):
                    if following is not None:
                        self._redispatch(following)
                        following = None
                    await self._close(relay, connection)
                    connection = None
                    await asyncio.sleep(THROTTLED_SLOT_POLL)
                    continue
                job, following = following, None
                if job is None:
                    job = await self._next_job(relay, connection)
                    if job is None:
                        await self._close(relay, connection)
                        connection = None
                        continue
                    self.pool.notify()
                self._busy.add(task)
                try:
                    connection, following = await self._send_job(relay, connection, job)
                finally:
                    self._busy.discard(task)
        finally:
            if connection is not None:
                relay.sessions_open -= 1
                connection.close()
                self._slots.pop(connection, None)  # the shutdown releases the run's slots

    async def _close(self, relay: RelayState[Job], connection: RelayConnection | None) -> None:
        if connection is not None:
            relay.sessions_open -= 1
            await connection.quit()
            slot = self._slots.pop(connection, None)
            if slot is not None:
                await self.limits.release_slot(relay, slot)
        return None

    async def _next_job(
        self, relay: RelayState[Job], connection: RelayConnection | None
    ) -> Job | None:
        """Wait for the relay's next job; None when an open session stayed idle too long."""
        if not relay.queue.empty():
            # The common case under load; it skips the timeout's timer.
            return relay.queue.get_nowait()
        if connection is not None and self.limits.shared and not self._claimed:
            return None  # this run has nothing claimed, so the slot goes back to other runs
        idle = SHARED_IDLE_SESSION_SECONDS if self.limits.shared else IDLE_SESSION_SECONDS
        timeout = idle if connection is not None else THROTTLED_SLOT_POLL * 5
        try:
            async with asyncio.timeout(timeout):
                return await relay.queue.get()
        except TimeoutError:
            raise_if_cancelling()
            return None

    async def _usable_session(
        self, relay: RelayState[Job], connection: RelayConnection | None
    ) -> RelayConnection | None:
        """Return the slot's session if it can carry another message, else close it."""
        if connection is None:
            return None
        worn_out = connection.messages_sent >= relay.settings.max_messages_per_connection
        idle = time.monotonic() - connection.last_used > IDLE_CHECK_SECONDS
        if not connection.is_open or worn_out or (idle and not await connection.check()):
            await self._close(relay, connection)
            return None
        return connection

    async def _send_job(
        self, relay: RelayState[Job], connection: RelayConnection | None, job: Job
    ) -> tuple[RelayConnection | None, Job | None]:
        """Send one job over the slot's session (opening one if needed).

        Return the session and the relay's next job when one was taken to be sent next.
        """
        following: Job | None = None
        try:
            connection, following = await self._send_job_once(relay, connection, job)
        finally:
            if connection is not None and connection.has_envelope_ahead(job.message.id):
                # The job's envelope went out behind the previous message, but the job was not
                # sent, so the relay must not get a message for it on this session.
                connection.close()
        if connection is not None and not connection.is_open:
            await self._close(relay, connection)
            connection = None
        return connection, following

    async def _send_job_once(
        self, relay: RelayState[Job], connection: RelayConnection | None, job: Job
    ) -> tuple[RelayConnection | None, Job | None]:
        if self.stopping.is_set() or not relay.usable(self.pool.clock()):
            self._redispatch(job)
            return connection, None
        if job.message.id in self._suppressed:
            # Before the relay's rate and daily quota, which a message not sent must not use.
            self._skip_suppressed(job)
            return connection, None
        connection = await self._usable_session(relay, connection)
        if connection is None:
            connection = await self._open(relay, job)
            if connection is None:
                return None, None
        if job.message.smtputf8 and not connection.smtputf8:
            job.excluded = job.excluded | {relay.name}
            self._redispatch(job)
            return connection, None
        if not await self.limits.pace(relay):
            self._redispatch(job)  # the relay's daily quota is used up
            return connection, None
        following = self._take_following(relay)
        ahead = self._envelope_ahead(relay, connection, following)
        await self._attempt(relay, connection, job, ahead)
        return connection, following

    def _take_following(self, relay: RelayState[Job]) -> Job | None:
        """Take the relay's next queued job, if any, so its envelope can go out ahead."""
        if relay.queue.empty() or self.stopping.is_set():
            return None
        following = relay.queue.get_nowait()
        self.pool.notify()
        return following

    def _envelope_ahead(
        self, relay: RelayState[Job], connection: RelayConnection, following: Job | None
    ) -> tuple[object, list[bytes]] | None:
        """Return the key and envelope lines to write behind this message, or None.

        Only a job that this session will send next qualifies: the session is not worn out by
        then, the relay has no rate or daily quota to wait for, and the job needs nothing the
        relay lacks.
        """
        settings = relay.settings
        if (
            following is None
            or not connection.pipelining
            or settings.rate is not None
            or settings.daily_quota is not None
            or connection.messages_sent + 2 > settings.max_messages_per_connection
            or following.message.id in self._suppressed
        ):
            return None
        message = following.message
        smtputf8 = needs_smtputf8(message.address, message.smtputf8)
        if smtputf8 and not connection.smtputf8:
            return None
        try:
            sender = self.composer.envelope_sender(str(message.id))
        except ValueError:
            return None  # the message's own attempt reports the invalid token
        lines = connection.envelope_lines(sender, message.address, smtputf8)
        return None if isinstance(lines, Reply) else (message.id, lines)

    async def _open(self, relay: RelayState[Job], job: Job) -> RelayConnection | None:
        slot = await self.limits.acquire_slot(relay, self._sending)
        if slot is None:
            self._redispatch(job)
            return None
        connection = RelayConnection(relay.settings, self.ehlo_name)
        started = time.monotonic()
        try:
            await connection.open()
        except SessionError as error:
            await self.limits.release_slot(relay, slot)
            self._session_failed(relay, job, error.reply, time.monotonic() - started)
            return None
        self._slots[connection] = slot
        relay.sessions_open += 1
        relay.smtputf8 = connection.smtputf8
        return connection

    def _session_failed(
        self, relay: RelayState[Job], job: Job, reply: Reply, duration: float
    ) -> None:
        """Send the message elsewhere after a relay failed it, without counting it against it."""
        if reply.scope is Scope.RELAY:
            relay.disable(reply.describe())
        else:
            relay.record_failure(reply.describe(), self.pool.clock())
        self._log_only(job, relay, reply, duration)
        self._requeue_elsewhere(job, relay, reply)

    def _requeue_elsewhere(self, job: Job, relay: RelayState[Job], reply: Reply) -> None:
        """Retry at once while a relay is usable; otherwise record the message as deferred.

        When every relay is taken out, the dispatcher pauses the campaign and gives the
        message back unattempted, so it goes there too.
        """
        if self.pool.all_disabled():
            self._redispatch(job)
            return
        if job.redispatches < MAX_REDISPATCH and self.pool.any_usable(job.excluded):
            self._redispatch(job)
            return
        self._finish(job, relay, reply, 0.0, state="deferred")

    async def _attempt(
        self,
        relay: RelayState[Job],
        connection: RelayConnection,
        job: Job,
        ahead: tuple[object, list[bytes]] | None = None,
    ) -> None:
        message = job.message
        if message.id in self._suppressed:
            self._skip_suppressed(job)
            return
        try:
            composed = self.composer.compose(
                message.key,
                message.address,
                json.loads(message.fields),
                message.smtputf8,
                token=str(message.id),
                now=self.clock(),
                eight_bit=connection.eight_bit_mime,
            )
        except (TemplateError, ValueError) as error:
            # One recipient's message cannot be built (a template error, an address that
            # cannot be written into To): fail that message, not the run.
            reply = Reply(Command.DATA, None, None, f"cannot compose: {error}", Scope.MESSAGE)
            self._finish(job, relay, reply, 0.0)
            return
        started = time.monotonic()
        try:
            reply = await connection.send(
                composed.envelope_sender,
                composed.recipient,
                composed.data,
                composed.smtputf8,
                lambda: self.recorder.mark_in_flight(message.id),
                ahead,
            )
        except StoreError as error:
            self.request_stop(f"the store failed: {error}")
            return
        except LeaseLostError:
            # This run was too slow to renew its lease, and another run took the message over.
            # That run sends it. Here the session was closed before the final dot.
            logger.warning("message %d: lease expired and taken over; not sent here", message.id)
            self._claimed.pop(message.id, None)
            return
        self._handle_reply(relay, job, reply, time.monotonic() - started, composed.message_id)

    def _handle_reply(
        self, relay: RelayState[Job], job: Job, reply: Reply, duration: float, message_id: str
    ) -> None:
        relay.attempts += 1
        if reply.code in THROTTLE_CODES:
            relay.throttle(reply.describe(), self.pool.clock())
        if reply.scope in (Scope.CONNECTION, Scope.RELAY):
            self._session_failed(relay, job, reply, duration)
            return
        relay.record_success()
        if reply.scope is Scope.SENDER:
            self._finish(job, relay, reply, duration, message_id, state="deferred")
            reason = f"relay {relay.name} refused the sender: {reply.describe()}"
            self.loop_call(self._pause_self(reason))
            return
        if reply.scope is Scope.SUCCESS:
            relay.sent += 1
            relay.recover()
        self._finish(job, relay, reply, duration, message_id)

    def loop_call(self, coroutine: Any) -> None:
        asyncio.get_running_loop().create_task(coroutine)

    def _finish(
        self,
        job: Job,
        relay: RelayState[Job] | None,
        reply: Reply,
        duration: float,
        message_id: str | None = None,
        state: str | None = None,
    ) -> None:
        """Record the outcome of an attempt and release the job."""
        message = job.message
        now = self.clock()
        attempts = message.attempts + 1
        first = message.first_attempt_at or now
        state = state or reply.state
        due = now
        if state == "deferred":
            next_attempt = self.policy.next_attempt(attempts, first, now)
            state, due = ("expired", now) if next_attempt is None else ("deferred", next_attempt)
        record = self._record(job, relay, reply, duration, state, attempts, message_id)
        self.recorder.record(Outcome(message.id, state, attempts, due, first, record))
        self._claimed.pop(message.id, None)
        self._suppressed.discard(message.id)
        self.stats.outcomes[state] += 1
        self._spend_error_budget(state)

    def _spend_error_budget(self, state: str) -> None:
        """Pause the campaign when bounces and failures pass their share of recent attempts."""
        window = self.recent_errors
        size = self.campaign.sending.error_window
        error = state in ("bounced", "failed")
        if len(window) == size and window[0]:
            self.recent_error_count -= 1  # the append below drops this entry
        window.append(error)
        self.recent_error_count += error
        if len(window) < size or self.paused:
            return
        share = self.recent_error_count / size
        budget = self.campaign.sending.error_budget
        if share <= budget:
            return
        window.clear()
        self.recent_error_count = 0
        reason = (
            f"bounces and failures were {share:.0%} of the last {size} attempts, over the error"
            f" budget of {budget:.0%}; check the list and the delivery log, then resume"
        )
        self.loop_call(self._pause_self(reason))

    def _log_only(self, job: Job, relay: RelayState[Job], reply: Reply, duration: float) -> None:
        record = self._record(
            job, relay, reply, duration, "deferred", job.message.attempts + 1, None
        )
        self.recorder.log(record)

    def _record(
        self,
        job: Job,
        relay: RelayState[Job] | None,
        reply: Reply,
        duration: float,
        kind: str,
        attempt: int,
        message_id: str | None,
    ) -> LogRecord:
        return LogRecord(
            type=kind,
            time=self.clock(),
            message=job.message.id,
            message_id=message_id
            or message_id_for(self.campaign.name, job.message.key, self.campaign.from_domain),
            recipient=job.message.address,
            relay=relay.name if relay is not None else None,
            attempt=attempt,
            command=str(reply.command),
            code=reply.code,
            status=reply.status,
            text=reply.text[:1000],
            duration=round(duration, 4),
            line=job.message.line,
        )

    def _fail_smtputf8(self, job: Job) -> None:
        reply = Reply(
            Command.MAIL,
            None,
            None,
            "the address has a non-ASCII local part and no relay offers SMTPUTF8",
            Scope.MESSAGE,
        )
        self._finish(job, None, reply, 0.0)

    # Control

    async def _control(self) -> None:
        """Follow pause, resume and cancel requests made from other processes.

        Also writes the run's heartbeat, and renews the lease on its claimed messages every
        third of the lease, so that messages waiting for a relay are not taken over.
        """
        renewed = self.clock()
        while not self.stopping.is_set():
            await asyncio.sleep(CONTROL_POLL_SECONDS)
            now = self.clock()
            row = await self._db(self.store.get_campaign, self.campaign.name)
            sent = self.stats.outcomes["sent"]
            self._done_samples.append(sum(self.stats.outcomes.values()))
            await self._db(self.store.heartbeat, self.run_id, now, sent)
            await self._poll_suppressions()
            lease = self.campaign.sending.lease
            if now - renewed >= lease / 3:
                await self._db(self.store.renew_lease, self.row.id, self.run_id, now + lease)
                await self._take_over_expired(now)
                renewed = now
            if row is None:
                continue
            if row.status == "cancelled":
                await self._cancel()
                return
            was_paused, self.paused = self.paused, row.status == "paused"
            if was_paused and not self.paused:
                logger.info("campaign %s: resumed", self.campaign.name)
                for relay in self.pool.relays:
                    relay.enable()
            if self.paused and not was_paused:
                logger.info("campaign %s: paused: %s", self.campaign.name, row.status_reason or "")
                await self._release_unstarted()
                if not self.wait_for_deferred:
                    self.request_stop("paused")

    async def _take_over_expired(self, now: float) -> None:
        """Take back the messages of runs whose lease expired (a worker killed or cut off)."""
        result = await self._db(self.store.recover, self.row.id, [], now)
        if result.requeued or result.unknown:
            logger.warning(
                "campaign %s: took over %d messages whose lease expired (%d unknown)",
                self.campaign.name,
                result.requeued + result.unknown,
                result.unknown,
            )
        lease = self.campaign.sending.lease
        for run in await self._db(self.store.runs, self.row.id):
            if run["heartbeat_at"] < now - lease:
                await self._db(self.store.remove_run, run["id"])

    # Suppression

    async def _poll_suppressions(self) -> None:
        """Note the claimed messages whose address was suppressed after they were claimed."""
        ids = await self._db(self.store.suppressed_claims, self.row.id, self.run_id)
        self._suppressed.update(i for i in ids if i in self._claimed)

    def _skip_suppressed(self, job: Job) -> None:
        """Record a message as suppressed instead of sending it; it counts as no attempt."""
        message = job.message
        now = self.clock()
        record = LogRecord(
            type="suppressed",
            time=now,
            message=message.id,
            message_id=message_id_for(self.campaign.name, message.key, self.campaign.from_domain),
            recipient=message.address,
            text="on the suppression list; not sent",
            line=message.line,
        )
        first = message.first_attempt_at
        self.recorder.record(
            Outcome(message.id, "suppressed", message.attempts, now, first, record)
        )
        self._claimed.pop(message.id, None)
        self._suppressed.discard(message.id)
        self.stats.outcomes["suppressed"] += 1

    async def _release_unstarted(self) -> None:
        """Release claimed messages that no session has taken yet, so a pause keeps none."""
        jobs = list(self.pending)
        self.pending.clear()
        for relay in self.pool.relays:
            while not relay.queue.empty():
                jobs.append(relay.queue.get_nowait())
        for job in jobs:
            self._claimed.pop(job.message.id, None)
        if jobs:
            await self._db(
                self.store.release, self.row.id, self.run_id, [j.message.id for j in jobs]
            )

    async def _cancel(self) -> None:
        """Stop; the shutdown marks every message not yet sent as cancelled."""
        self.cancelled = True
        self.request_stop("cancelled")

    async def _pause_self(self, reason: str) -> None:
        if self.paused:
            return
        self.paused = True
        logger.error("campaign %s: pausing: %s", self.campaign.name, reason)
        await self._db(self.store.set_status, self.row.id, "paused", reason, self.clock())
        if not self.wait_for_deferred:
            self.request_stop(f"paused: {reason}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
