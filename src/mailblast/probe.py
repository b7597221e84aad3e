"""Relay probe: a short burst of real SMTP transactions per relay, to measure its rate.

Each relay gets ``messages`` copies of the campaign's first message, addressed to a sink address
the operator names, over as many sessions as its ``max_connections`` allows (at most one per
message). The rate is the accepted messages divided by the time from the first transaction's
start to the last reply, so session set-up is measured apart, as the connect time.
The relay's configured ``rate`` is not applied, because the probe measures what the relay
accepts, not what the campaign allows itself.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import dataclass, field

from mailblast.blast import build_composer, compile_templates, first_recipients
from mailblast.compose import Composed
from mailblast.config import Campaign, RelaySettings
from mailblast.errors import MailblastError
from mailblast.relay.classify import Scope
from mailblast.relay.client import CLOSE_SECONDS, wait_closed
from mailblast.relay.connection import RelayConnection, SessionError

logger = logging.getLogger("mailblast.probe")

MAX_ERRORS_SHOWN = 3


@dataclass
class ProbeResult:
    """The outcome of the burst on one relay, with times in seconds."""

    relay: str
    requested: int
    sessions: int = 0
    accepted: int = 0
    failed: int = 0  # messages with a reply other than success
    session_failures: int = 0
    connect_times: list[float] = field(default_factory=list)
    first_start: float | None = None
    last_reply: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Accepted messages per second over the burst; 0 when nothing was accepted."""
        if not self.accepted or self.first_start is None or self.last_reply is None:
            return 0.0
        return self.accepted / max(self.last_reply - self.first_start, 1e-6)

    @property
    def connect_time(self) -> float | None:
        return statistics.median(self.connect_times) if self.connect_times else None

    def add_error(self, text: str, message_failed: bool = True) -> None:
        """Count a failed message (or, with ``message_failed`` False, a failed session)."""
        if message_failed:
            self.failed += 1
        else:
            self.session_failures += 1
        if text not in self.errors and len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(text)

    def as_dict(self) -> dict[str, object]:
        return {
            "relay": self.relay,
            "requested": self.requested,
            "sessions": self.sessions,
            "accepted": self.accepted,
            "failed": self.failed,
            "session_failures": self.session_failures,
            "rate": round(self.rate, 3),
            "connect_time": self.connect_time,
            "errors": self.errors,
        }


def probe_messages(campaign: Campaign, address: str, count: int) -> list[Composed]:
    """Compose ``count`` messages from the list's first acceptable row, to ``address``."""
    recipients = list(first_recipients(campaign, 1))
    if not recipients:
        raise MailblastError(
            f"the list {campaign.recipients.path} has no acceptable row to build a probe"
            " message from; run 'mailblast check' on the campaign"
        )
    row = recipients[0]
    # The same builder as send and preview, so probe messages carry the campaign's
    # List-Unsubscribe headers and DKIM signature and cost the relay the same.
    composer = build_composer(campaign, compile_templates(campaign))
    return [
        composer.compose(f"{row.key}/probe-{number}", address, row.fields, False, token="probe")
        for number in range(count)
    ]


async def probe_relay(relay: RelaySettings, messages: list[Composed]) -> ProbeResult:
    """Send ``messages`` through ``relay`` over up to ``max_connections`` sessions."""
    result = ProbeResult(relay.name, len(messages))
    queue: asyncio.Queue[Composed] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    sessions = min(relay.max_connections, len(messages))
    await asyncio.gather(*(_session(relay, queue, result) for _ in range(sessions)))
    return result


async def _session(
    relay: RelaySettings, queue: asyncio.Queue[Composed], result: ProbeResult
) -> None:
    """Take messages off the queue until it is empty, with a new session when one ends."""
    while not queue.empty():
        connection = RelayConnection(relay)
        if not await _open(connection, result):
            return
        try:
            while (
                connection.is_open
                and connection.messages_sent < relay.max_messages_per_connection
                and not queue.empty()
            ):
                await _transaction(connection, queue.get_nowait(), result)
        finally:
            await connection.quit()


async def _open(connection: RelayConnection, result: ProbeResult) -> bool:
    started = time.monotonic()
    try:
        await connection.open()
    except SessionError as error:
        # Each concurrent session fails the same way on a relay that is down: log it once.
        log = logger.debug if result.session_failures else logger.warning
        log("relay %s: session failed: %s", result.relay, error)
        result.add_error(f"session: {error}", message_failed=False)
        return False
    result.connect_times.append(time.monotonic() - started)
    result.sessions += 1
    return True


async def _transaction(connection: RelayConnection, message: Composed, result: ProbeResult) -> None:
    started = time.monotonic()
    if result.first_start is None or started < result.first_start:
        result.first_start = started
    reply = await connection.send(
        message.envelope_sender, message.recipient, message.data, False, _nothing
    )
    result.last_reply = time.monotonic()
    if reply.scope is Scope.SUCCESS:
        result.accepted += 1
    else:
        result.add_error(reply.describe())


async def _nothing() -> None:
    return None


def probe(campaign: Campaign, address: str, count: int) -> list[ProbeResult]:
    """Probe every relay of the campaign in turn, so the bursts do not share the CPU."""
    if count <= 0:
        raise MailblastError(f"invalid --messages {count}: give a number of messages above 0")
    messages = probe_messages(campaign, address, count)

    async def run_all() -> list[ProbeResult]:
        results = [await probe_relay(relay, messages) for relay in campaign.relays]
        await wait_closed(CLOSE_SECONDS)
        return results

    return asyncio.run(run_all())
