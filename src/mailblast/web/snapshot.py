"""The dashboard's figures for every campaign in a store, as JSON-ready data.

Each call reads only index ranges and bounded row sets (see the dashboard queries of
:class:`mailblast.store.base.Store`), so a page may poll it every second during a blast.
Recipients appear by domain only: the dashboard is an operations view, not an address book.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailblast.store.base import (
    FINAL_STATES,
    MESSAGE_STATES,
    PROBLEM_TYPES,
    CampaignRow,
    LogRecord,
    RelayActivity,
    Store,
)

# Relay health and the sending rate cover the delivery records of this many recent seconds.
WINDOW_SECONDS = 60.0
# Each relay's last problem is looked for in this many recent seconds.
PROBLEM_WINDOW_SECONDS = 300.0
# Upper bounds (seconds from now) of the due-time buckets of deferred messages.
DUE_BOUNDS = (0.0, 60.0, 600.0, 3600.0)
DUE_LABELS = ("due now", "within 1 min", "1 to 10 min", "10 to 60 min", "later")
NEXT_DEFERRED = 5
LAST_PROBLEMS = 10
# A run whose heartbeat is older than this is shown as stale rather than sending.
RUN_STALE_SECONDS = 10.0


def dashboard_snapshot(store: Store, now: float, control: bool) -> dict[str, Any]:
    """Return the figures of every campaign in the store, oldest campaign first."""
    campaigns = [campaign_snapshot(store, row, now) for row in store.list_campaigns()]
    return {
        "now": now,
        "control": control,
        "window_seconds": WINDOW_SECONDS,
        "campaigns": campaigns,
    }


def campaign_snapshot(store: Store, row: CampaignRow, now: float) -> dict[str, Any]:
    counts = store.counts(row.id)
    activity = store.relay_activity(row.id, now - WINDOW_SECONDS)
    runs = store.runs(row.id)
    last_problems = store.relay_last_problems(row.id, now - PROBLEM_WINDOW_SECONDS)
    return {
        "name": row.name,
        "status": row.status,
        "status_reason": row.status_reason,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "running": sum(1 for run in runs if now - run["heartbeat_at"] <= RUN_STALE_SECONDS),
        "progress": progress(row, counts, activity, now),
        "relays": relay_health(row, activity, last_problems),
        "deferred": deferred_panel(store, row, now),
        "problems": [record_json(r) for r in store.last_problems(row.id, LAST_PROBLEMS)],
    }


def progress(
    row: CampaignRow, counts: dict[str, int], activity: Sequence[RelayActivity], now: float
) -> dict[str, Any]:
    """Return counts by state, the sending rate over the window and the estimated time left."""
    states = {state: counts.get(state, 0) for state in MESSAGE_STATES}
    remaining = states["queued"] + states["deferred"] + states["sending"]
    sent_recently = sum(entry.count for entry in activity if entry.type == "sent")
    span = WINDOW_SECONDS
    if row.started_at is not None:
        span = min(WINDOW_SECONDS, max(now - row.started_at, 1.0))
    rate = sent_recently / span
    sending = row.status == "active" and rate > 0
    return {
        "counts": states,
        "total": sum(states.values()),
        "sent": states["sent"],
        "finished": sum(states[state] for state in FINAL_STATES),
        "remaining": remaining,
        "rate": round(rate, 2),
        "eta_seconds": round(remaining / rate) if sending and remaining else None,
    }


def relay_health(
    row: CampaignRow, activity: Sequence[RelayActivity], last_problems: dict[str, LogRecord]
) -> list[dict[str, Any]]:
    """Return each relay's recent counts, last problem and state, configured relays first."""
    names = [relay["name"] for relay in row.settings.get("relays", [])]
    names += sorted({entry.relay for entry in activity} - set(names))
    relays = []
    for name in names:
        entries = [entry for entry in activity if entry.relay == name]
        counts = {kind: 0 for kind in ("sent", *PROBLEM_TYPES)}
        for entry in entries:
            counts[entry.type] += entry.count
        problem = last_problems.get(name)
        relays.append(
            {
                "name": name,
                "state": relay_state(entries),
                "counts": counts,
                "last_problem": None if problem is None else record_json(problem),
            }
        )
    return relays


def relay_state(entries: Sequence[RelayActivity]) -> str:
    """Return "idle" with no records in the window, "down" when a session failure (connect,
    EHLO, STARTTLS, AUTH) came after the last message sent, and "up" otherwise."""
    if not entries:
        return "idle"
    last_sent = max((e.last for e in entries if e.type == "sent"), default=None)
    last_failure = max((e.last for e in entries if e.session), default=None)
    if last_failure is not None and (last_sent is None or last_failure > last_sent):
        return "down"
    return "up"


def deferred_panel(store: Store, row: CampaignRow, now: float) -> dict[str, Any]:
    """Return deferred messages counted by when they fall due, and the next few to be retried."""
    counts = store.deferred_due_counts(row.id, [now + bound for bound in DUE_BOUNDS])
    buckets = [
        {"label": label, "count": count} for label, count in zip(DUE_LABELS, counts, strict=True)
    ]
    upcoming = [
        {
            "line": message.line,
            "domain": domain_of(message.address),
            "attempts": message.attempts,
            "due_at": message.due_at,
            "relay": message.relay,
            "code": message.code,
            "status": message.status,
            "text": message.reply,
        }
        for message in store.next_deferred(row.id, NEXT_DEFERRED)
    ]
    return {"buckets": buckets, "next": upcoming}


def record_json(record: LogRecord) -> dict[str, Any]:
    return {
        "time": record.time,
        "type": record.type,
        "relay": record.relay,
        "domain": domain_of(record.recipient),
        "line": record.line,
        "attempt": record.attempt,
        "command": record.command,
        "code": record.code,
        "status": record.status,
        "text": record.text,
    }


def domain_of(address: str | None) -> str | None:
    return None if address is None else address.rpartition("@")[2]
