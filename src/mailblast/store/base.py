"""The store interface: what the loader, the engine and the commands need from a database.

Each backend keeps one row per message with the states below, an append-only delivery log, the
suppression list, the campaigns' settings and the runs that are sending. Methods are synchronous
and each one is a single transaction. The engine calls them from one dedicated thread, so a
backend object never runs two calls at once.

Message states::

    queued ─► sending ─► sent | deferred | bounced | failed | unknown
    deferred ─► (due) sending;  deferred past the maximum age ─► expired
    queued or deferred when the campaign is cancelled ─► cancelled
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

FINAL_STATES = frozenset({"sent", "bounced", "failed", "expired", "cancelled"})
MESSAGE_STATES = (
    "queued",
    "sending",
    "deferred",
    "sent",
    "bounced",
    "failed",
    "unknown",
    "expired",
    "cancelled",
)
LOG_TYPES = frozenset(
    {
        "queued",
        "attempt",
        "sent",
        "deferred",
        "bounced",
        "failed",
        "unknown",
        "expired",
        "suppressed",
        "rejected",
        "cancelled",
        "complaint",
        "unsubscribed",
    }
)
LOG_COLUMNS = (
    "time",
    "campaign",
    "message_id",
    "recipient",
    "type",
    "relay",
    "attempt",
    "command",
    "code",
    "status",
    "text",
    "duration",
    "line",
)


@dataclass(slots=True)
class CampaignRow:
    """A campaign row of the store."""

    id: int
    name: str
    settings: dict[str, Any]
    status: str
    status_reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    loaded_at: float | None
    load_line: int
    rows_read: int
    rows_rejected: int
    rows_duplicate: int
    rows_suppressed: int


@dataclass(slots=True)
class ClaimedMessage:
    """A message claimed for sending under a lease."""

    id: int
    line: int
    address: str
    key: str
    smtputf8: bool
    fields: str  # JSON object, parsed only when the message is composed
    attempts: int
    first_attempt_at: float | None


@dataclass(slots=True)
class LogRecord:
    """One delivery record; ``type`` is one of LOG_TYPES."""

    type: str
    time: float
    message: int | None = None
    message_id: str | None = None
    recipient: str | None = None
    relay: str | None = None
    attempt: int | None = None
    command: str | None = None
    code: int | None = None
    status: str | None = None
    text: str | None = None
    duration: float | None = None
    line: int | None = None


@dataclass(slots=True)
class Outcome:
    """The new state of one message after an attempt, with the record that explains it."""

    message: int
    state: str
    attempts: int
    due_at: float
    first_attempt_at: float
    record: LogRecord


@dataclass(slots=True)
class LoadRow:
    """A recipient ready to be queued."""

    line: int
    address: str
    key: str
    smtputf8: bool
    fields: str  # JSON object


@dataclass(slots=True)
class LoadChunkResult:
    """Outcome of loading one chunk of accepted rows."""

    queued: int = 0
    duplicates: list[tuple[LoadRow, int]] = field(default_factory=list)  # (row, line of first)
    suppressed: list[LoadRow] = field(default_factory=list)


@dataclass(slots=True)
class RecoveryResult:
    """Messages taken back from runs that are gone or whose lease expired."""

    requeued: int
    unknown: int


class Store(Protocol):
    """The operations every backend provides; see the module docstring for the contract."""

    def close(self) -> None: ...

    def upsert_campaign(self, name: str, settings: dict[str, Any], now: float) -> CampaignRow: ...

    def get_campaign(self, name: str) -> CampaignRow | None: ...

    def list_campaigns(self) -> list[CampaignRow]: ...

    def load_chunk(
        self,
        campaign_id: int,
        rows: Sequence[LoadRow],
        rejected: Sequence[LogRecord],
        last_line: int,
        rows_read: int,
    ) -> LoadChunkResult: ...

    def finish_load(self, campaign_id: int, now: float) -> None: ...

    def claim(
        self, campaign_id: int, owner: str, now: float, lease_until: float, limit: int
    ) -> list[ClaimedMessage]: ...

    def renew_lease(self, campaign_id: int, owner: str, lease_until: float) -> None: ...

    def commit_group(
        self,
        campaign_id: int,
        in_flight: Sequence[int],
        outcomes: Sequence[Outcome],
        records: Sequence[LogRecord] = (),
        owner: str | None = None,
    ) -> list[int]: ...

    def release(self, campaign_id: int, owner: str, ids: Sequence[int]) -> None: ...

    def recover(
        self, campaign_id: int, dead_owners: Sequence[str], now: float
    ) -> RecoveryResult: ...

    def retry_unknown(self, campaign_id: int, now: float) -> int: ...

    def cancel_remaining(self, campaign_id: int, now: float) -> int: ...

    def counts(self, campaign_id: int) -> dict[str, int]: ...

    def next_due(self, campaign_id: int) -> float | None: ...

    def set_status(self, campaign_id: int, status: str, reason: str | None, now: float) -> None: ...

    def mark_started(self, campaign_id: int, now: float) -> None: ...

    def register_run(
        self, run_id: str, campaign_id: int, host: str, pid: int, now: float
    ) -> None: ...

    def heartbeat(self, run_id: str, now: float, sent: int | None = None) -> None: ...

    def remove_run(self, run_id: str) -> None: ...

    def runs(self, campaign_id: int) -> list[dict[str, Any]]: ...

    def lease_owners(self, campaign_id: int) -> list[str]: ...

    def is_suppressed(self, campaign_id: int, key: str) -> bool: ...

    def iter_log(self, campaign_id: int) -> Iterator[dict[str, Any]]: ...

    def relay_totals(self, campaign_id: int) -> dict[str, dict[str, Any]]: ...

    # Relay limits held for all runs of a campaign together (see mailblast.fleet)

    def prepare_relays(self, campaign_id: int, relays: Sequence[tuple[str, int]]) -> None: ...

    def acquire_slot(
        self, campaign_id: int, relay: str, owner: str, now: float, lease_until: float
    ) -> int | None: ...

    def release_slot(self, campaign_id: int, relay: str, slot: int, owner: str) -> None: ...

    def release_slots(self, campaign_id: int, owner: str) -> None: ...

    def take_send_budget(
        self,
        campaign_id: int,
        relay: str,
        now: float,
        interval: float,
        quota: int | None,
        day: str,
    ) -> float | None: ...
