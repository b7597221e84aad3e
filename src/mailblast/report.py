"""The figures of a campaign report, computed from the store's aggregates.

Every figure comes from a grouped query (see the store's "Reports and metrics" methods), so
building a report reads a bounded number of rows however long the delivery log is. The HTML
rendering lives in :mod:`mailblast.report_html`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from mailblast.blast import require_campaign, summarise
from mailblast.relay.classify import Command, Scope, classify
from mailblast.store.base import MESSAGE_STATES, AttemptSpan, ReplyGroup
from mailblast.store.sql import SQLStore

REASON_KINDS = ("deferred", "bounced", "failed")
TOP_REASONS = 10
TOP_DOMAINS = 20
TOP_STATUSES = 8
MAX_BUCKETS = 120
# Bucket widths in seconds for the charts; the smallest that keeps MAX_BUCKETS is used.
BUCKET_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MASK = "********"
SECRET_WORDS = ("password", "secret", "token", "key")


def reply_class(group: ReplyGroup) -> str:
    """Return the scope (see mailblast.relay.classify) of the replies in a group of records.

    The delivery log keeps the command, code, status and text of each reply, so the scope is
    classified again from them. A record without a code is a connection failure, a reply lost
    after the end of DATA (unknown) or a message that could not be composed (failed).
    """
    if group.code is None:
        by_type = {"unknown": Scope.UNKNOWN, "failed": Scope.MESSAGE}
        return str(by_type.get(group.type, Scope.CONNECTION))
    try:
        command = Command(group.command or "")
    except ValueError:
        command = Command.DATA
    return str(classify(command, group.code, group.example or "").scope)


def choose_bucket(duration: float) -> int:
    """Return the chart bucket width in seconds for attempts spread over ``duration`` seconds."""
    for step in BUCKET_STEPS:
        if duration / step <= MAX_BUCKETS:
            return step
    return BUCKET_STEPS[-1]


def mask_secrets(value: Any) -> Any:
    """Return a copy of the settings with the value of every secret-like key masked."""
    if isinstance(value, dict):
        return {
            key: MASK if _secret_name(key) and item not in (None, "") else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


def _secret_name(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def build_report(store: SQLStore, name: str, now: float | None = None) -> dict[str, Any]:
    """Compute every figure of the campaign's report; the result is plain JSON data."""
    row = require_campaign(store, name)
    summary = summarise(store, name)
    span = store.attempt_span(row.id)
    first = span.first if span.first is not None else (row.started_at or row.created_at)
    last = span.last if span.last is not None else first
    bucket = choose_bucket(last - first)
    buckets = int((last - first) // bucket) + 1
    throughput = _throughput(store.sent_timeline(row.id, first, bucket), buckets, bucket)
    classes, statuses = _reply_series(store.reply_timeline(row.id, first, bucket), buckets)
    return {
        "campaign": row.name,
        "status": row.status,
        "status_reason": row.status_reason,
        "generated_at": time.time() if now is None else now,
        "totals": summary.counts,
        "total": summary.total,
        "load": summary.load,
        "timing": _timing(row.started_at, row.finished_at, span, throughput, bucket),
        "bucket_seconds": bucket,
        "bucket_starts": [first + index * bucket for index in range(buckets)],
        "throughput": throughput,
        "reply_classes": classes,
        "status_codes": statuses,
        "reasons": {kind: _reasons(store, row.id, kind) for kind in REASON_KINDS},
        "domains": _domains(store.domain_outcomes(row.id, TOP_DOMAINS)),
        "relays": summary.relays,
        "settings": mask_secrets(row.settings),
    }


def _throughput(
    timeline: Iterable[tuple[int, str | None, int]], buckets: int, bucket: int
) -> dict[str, Any]:
    """Sent messages per second in each bucket, per relay and in total."""
    per_relay: dict[str, list[float]] = {}
    total = [0.0] * buckets
    for index, relay, count in timeline:
        series = per_relay.setdefault(relay or "none", [0.0] * buckets)
        series[index] += count / bucket
        total[index] += count / bucket
    return {"relays": dict(sorted(per_relay.items())), "total": total}


def _reply_series(
    timeline: list[tuple[int, ReplyGroup]], buckets: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Attempt records per bucket by reply class, and by enhanced status code."""
    classes: dict[str, list[int]] = defaultdict(lambda: [0] * buckets)
    statuses: dict[str, list[int]] = defaultdict(lambda: [0] * buckets)
    for index, group in timeline:
        classes[reply_class(group)][index] += group.count
        if group.status is not None:
            statuses[group.status][index] += group.count
    status_totals = Counter({status: sum(series) for status, series in statuses.items()})
    top = [status for status, _ in status_totals.most_common(TOP_STATUSES)]
    return (
        {
            "totals": {name: sum(series) for name, series in sorted(classes.items())},
            "series": dict(sorted(classes.items())),
        },
        {
            "totals": {status: status_totals[status] for status in top},
            "series": {status: statuses[status] for status in top},
        },
    )


def _timing(
    started_at: float | None,
    finished_at: float | None,
    span: AttemptSpan,
    throughput: dict[str, Any],
    bucket: int,
) -> dict[str, Any]:
    duration = None
    if span.first is not None and span.last is not None:
        duration = span.last - span.first
    mean = span.sent / duration if duration else None
    # A span shorter than one bucket would show a peak below the mean; its peak is the mean.
    totals = throughput["total"]
    peak = max(totals, default=0.0) if len(totals) > 1 or mean is None else mean
    return {
        "started_at": started_at,
        "finished_at": finished_at,
        "first_attempt_at": span.first,
        "last_attempt_at": span.last,
        "duration": duration,
        "attempts": span.attempts,
        "sent": span.sent,
        "mean_rate": mean,
        "peak_rate": peak,
        "peak_window_seconds": bucket,
    }


def _reasons(store: SQLStore, campaign_id: int, kind: str) -> list[dict[str, Any]]:
    return [
        {
            "command": reason.command,
            "code": reason.code,
            "status": reason.status,
            "count": reason.count,
            "example": reason.example,
            "relay": reason.relay,
        }
        for reason in store.top_reasons(campaign_id, kind, TOP_REASONS)
    ]


def _domains(rows: Iterable[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """Group (domain, state, count) rows, already in order, into one entry per domain."""
    domains: dict[str, dict[str, int]] = {}
    for domain, state, count in rows:
        domains.setdefault(domain, {})[state] = count
    return [
        {
            "domain": domain,
            "total": sum(states.values()),
            "states": {state: states.get(state, 0) for state in MESSAGE_STATES},
        }
        for domain, states in domains.items()
    ]
