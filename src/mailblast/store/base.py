"""The store interface: what the loader, the engine and the commands need from a database.

Each backend keeps one row per message with the states below, an append-only delivery log, the
suppression list, the campaigns' settings and the runs that are sending. Methods are synchronous
and each one is a single transaction. The engine calls them from one dedicated thread, so a
backend object never runs two calls at once.

Message states::

    queued ─► sending ─► sent | deferred | bounced | failed | unknown
    deferred ─► (due) sending;  deferred past the maximum age ─► expired
    queued or deferred when the campaign is cancelled ─► cancelled
    queued, deferred or sending when the address is on the suppression list ─► suppressed
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

FINAL_STATES = frozenset({"sent", "bounced", "failed", "expired", "cancelled", "suppressed"})
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
    "suppressed",
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


# Delivery record types that report a problem, shown by the dashboard as its last errors.
PROBLEM_TYPES = ("deferred", "bounced", "failed", "unknown", "expired")
# SMTP steps before MAIL FROM: a deferral there means the relay itself failed, not a recipient.
SESSION_COMMANDS = ("connect", "ehlo", "starttls", "auth")


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
    suppressed: bool = False  # the address was on the suppression list when it was claimed


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
class RelayActivity:
    """Delivery records of one relay and type in a time window; ``session`` marks failures
    before MAIL FROM (SESSION_COMMANDS)."""

    relay: str
    type: str
    session: bool
    count: int
    last: float


@dataclass(slots=True)
class DeferredMessage:
    """A deferred message waiting for its next attempt."""

    id: int
    line: int
    address: str
    attempts: int
    due_at: float
    relay: str | None
    code: int | None
    status: str | None
    reply: str | None


@dataclass(slots=True)
class Outcome:
    """The new state of one message after an attempt, with the record that explains it."""

    message: int
    state: str
    attempts: int
    due_at: float
    first_attempt_at: float | None  # None for a message never attempted
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


# Suppression list

SUPPRESSION_REASONS = ("unsubscribed", "hard-bounce", "soft-bounce", "complaint", "manual")
EVERY_CAMPAIGN = 0  # the campaign_id of a suppression that applies to every campaign


@dataclass(slots=True)
class Suppression:
    """One entry of the suppression list, unique by (key, campaign_id)."""

    key: str  # recipients.normalise_address's de-duplication key
    address: str
    reason: str  # one of SUPPRESSION_REASONS
    campaign_id: int  # EVERY_CAMPAIGN, or the id of the one campaign it applies to
    origin: str | None  # name of the campaign that caused it (an unsubscribe, a bounce)
    time: float
    campaign: str | None = None  # name of campaign_id, filled in when read from the store


@dataclass(slots=True)
class RecoveryResult:
    """Messages taken back from runs that are gone or whose lease expired."""

    requeued: int
    unknown: int


@dataclass(slots=True)
class MessageRef:
    """The fields of a queued message that bounce processing uses."""

    id: int
    campaign_id: int
    address: str
    key: str
    state: str


@dataclass(slots=True)
class BounceEvent:
    """One processed bounce, complaint or unsubscribe request for one recipient.

    ``id`` identifies the returned message and the recipient, so the same event recorded twice
    is stored once. ``bounce_class`` is hard, soft, delayed, block, complaint or unsubscribe.
    """

    id: str
    key: str
    bounce_class: str
    campaign_id: int  # 0 when no campaign is known
    record: LogRecord
    mark_bounced: bool  # turn the message from sent to bounced


@dataclass(slots=True)
class AttemptSpan:
    """When a campaign's attempts began and ended, and how many were sent."""

    first: float | None
    last: float | None
    attempts: int
    sent: int


@dataclass(slots=True)
class ReplyGroup:
    """Attempt records with the same type, command, code and enhanced status."""

    type: str
    command: str | None
    code: int | None
    status: str | None
    count: int
    example: str | None  # the text of one of the records


@dataclass(slots=True)
class Reason:
    """One reason for a deferral, bounce or failure, with one example reply."""

    command: str | None
    code: int | None
    status: str | None
    count: int
    example: str | None
    relay: str | None  # the relay of one of the records


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

    # Suppression list. A campaign_id of None in a filter means every scope.

    def is_suppressed(self, campaign_id: int, key: str) -> bool: ...

    def add_suppression(
        self,
        key: str,
        address: str,
        reason: str,
        campaign_id: int,
        now: float,
        origin: str | None = None,
        record: LogRecord | None = None,
    ) -> bool:
        """Add one entry; return False, changing nothing, when (key, campaign_id) is listed.

        A new entry's ``record`` is appended to the delivery log of the campaign named by
        ``origin`` in the same transaction, when that campaign is in the store.
        """
        ...

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        """Add entries in one transaction, keeping existing ones; return how many were new."""
        ...

    def remove_suppressions(
        self, campaign_id: int, keys: Sequence[str] | None = None, reason: str | None = None
    ) -> int:
        """Remove the given keys, or with no keys every entry of that reason, from one scope."""
        ...

    def count_suppressions(
        self, campaign_id: int | None = None, reason: str | None = None
    ) -> int: ...

    def list_suppressions(
        self,
        campaign_id: int | None = None,
        reason: str | None = None,
        after: tuple[str, int] | None = None,
        limit: int = 1000,
    ) -> list[Suppression]:
        """Return up to ``limit`` entries after the (key, campaign_id) ``after``, in that order."""
        ...

    def suppressed_claims(self, campaign_id: int, owner: str) -> list[int]:
        """Return the ids of messages ``owner`` has claimed whose address is now suppressed."""
        ...

    def iter_log(self, campaign_id: int) -> Iterator[dict[str, Any]]: ...

    def relay_totals(self, campaign_id: int) -> dict[str, dict[str, Any]]: ...

    # Dashboard queries: each one reads an index range or a bounded number of rows, so that a
    # page polling every second stays cheap on a store with a million messages.

    def relay_activity(self, campaign_id: int, since: float) -> list[RelayActivity]: ...

    def last_problems(self, campaign_id: int, limit: int) -> list[LogRecord]: ...

    def relay_last_problems(self, campaign_id: int, since: float) -> dict[str, LogRecord]: ...

    def deferred_due_counts(self, campaign_id: int, bounds: Sequence[float]) -> list[int]: ...

    def next_deferred(self, campaign_id: int, limit: int) -> list[DeferredMessage]: ...

    # Bounce processing

    def find_message(self, message: int) -> MessageRef | None: ...

    def find_messages_by_key(self, key: str) -> list[MessageRef]: ...

    def count_soft_bounces(self, key: str) -> int: ...

    def bounce_recorded(self, bounce_id: str) -> bool: ...

    def record_bounce(self, event: BounceEvent) -> bool: ...

    # Reports and metrics: aggregates computed by the database, so that memory stays flat
    # however long the delivery log is. An attempt record is a delivery record with a command.

    def attempt_span(self, campaign_id: int) -> AttemptSpan: ...

    def sent_timeline(
        self, campaign_id: int, start: float, bucket: float
    ) -> list[tuple[int, str | None, int]]: ...

    def reply_timeline(
        self, campaign_id: int, start: float, bucket: float
    ) -> list[tuple[int, ReplyGroup]]: ...

    def reply_groups(self, campaign_id: int) -> list[tuple[str | None, ReplyGroup]]: ...

    def top_reasons(self, campaign_id: int, kind: str, limit: int) -> list[Reason]: ...

    def domain_outcomes(self, campaign_id: int, limit: int) -> list[tuple[str, str, int]]: ...

    def duration_histogram(
        self, campaign_id: int, bounds: Sequence[float]
    ) -> tuple[list[int], float, int]: ...

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
