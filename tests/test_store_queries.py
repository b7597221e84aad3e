"""The store's dashboard, bounce and report queries, on SQLite and on PostgreSQL.

The ``store`` fixture (tests/conftest.py) runs each test on both backends.
"""

from __future__ import annotations

import json
from pathlib import Path

from mailblast.metrics import StoreCollector
from mailblast.report import build_report
from mailblast.store import SQLStore, open_store
from mailblast.store.base import BounceEvent, LoadRow, LogRecord, MessageRef, Outcome
from mailblast.web.snapshot import dashboard_snapshot


def load(store: SQLStore, name: str, count: int) -> tuple[int, list[int]]:
    """Queue and claim ``count`` messages of a new campaign; return its id and the message ids."""
    campaign = store.upsert_campaign(name, {"relays": [{"name": "r1"}, {"name": "r2"}]}, 1.0).id
    rows = [
        LoadRow(i + 2, f"user{i}@example.com", f"user{i}@example.com", False, "{}")
        for i in range(count)
    ]
    store.load_chunk(campaign, rows, [], count + 1, count)
    claimed = store.claim(campaign, "run", now=100.0, lease_until=1e9, limit=count)
    return campaign, [message.id for message in claimed]


def event(
    message: int, state: str, relay: str, now: float, command: str = "data", due: float = 0.0
) -> Outcome:
    record = LogRecord(
        type=state,
        time=now,
        message=message,
        recipient=f"user{message}@example.com",
        relay=relay,
        command=command,
        code=250 if state == "sent" else 451,
    )
    return Outcome(message, state, 1, due or now, now, record)


def blast(store: SQLStore) -> tuple[int, list[int]]:
    """A campaign with one sent and two deferred messages and one bounce in the last window,
    and one sent message long before it."""
    campaign, ids = load(store, "spring", 5)
    outcomes = [
        event(ids[0], "sent", "r1", 200.0),
        event(ids[1], "deferred", "r1", 210.0, "rcpt", due=400.0),
        event(ids[2], "deferred", "r2", 220.0, "connect", due=1000.0),
        event(ids[3], "bounced", "r2", 230.0),
        event(ids[4], "sent", "r2", 50.0),
    ]
    store.commit_group(campaign, [], outcomes)
    return campaign, ids


def test_relay_activity_in_window(store: SQLStore) -> None:
    campaign, _ = blast(store)
    activity = store.relay_activity(campaign, since=100.0)
    found = {(a.relay, a.type, a.session, a.count, a.last) for a in activity}
    assert found == {
        ("r1", "sent", False, 1, 200.0),
        ("r1", "deferred", False, 1, 210.0),
        ("r2", "deferred", True, 1, 220.0),
        ("r2", "bounced", False, 1, 230.0),
    }


def test_last_problems(store: SQLStore) -> None:
    campaign, ids = blast(store)
    assert [(r.type, r.time) for r in store.last_problems(campaign, 2)] == [
        ("bounced", 230.0),
        ("deferred", 220.0),
    ]
    latest = store.relay_last_problems(campaign, since=100.0)
    assert {relay: record.message for relay, record in latest.items()} == {
        "r1": ids[1],
        "r2": ids[3],
    }


def test_deferred_by_due_time(store: SQLStore) -> None:
    campaign, ids = blast(store)
    assert store.deferred_due_counts(campaign, [300.0, 500.0]) == [0, 1, 1]
    [first] = store.next_deferred(campaign, 1)
    assert (first.id, first.due_at, first.relay, first.code) == (ids[1], 400.0, "r1", 451)


def test_dashboard_feed(store: SQLStore) -> None:
    blast(store)
    figures = dashboard_snapshot(store, now=240.0, control=False)
    [campaign] = json.loads(json.dumps(figures))["campaigns"]
    assert campaign["progress"]["counts"]["sent"] == 2
    assert campaign["progress"]["remaining"] == 2
    assert {relay["name"]: relay["state"] for relay in campaign["relays"]} == {
        "r1": "up",
        "r2": "down",
    }
    assert [bucket["count"] for bucket in campaign["deferred"]["buckets"]] == [0, 0, 1, 1, 0]
    assert campaign["problems"][0]["type"] == "bounced"


def test_find_messages(store: SQLStore) -> None:
    spring, spring_ids = load(store, "spring", 2)
    autumn, autumn_ids = load(store, "autumn", 1)
    assert store.find_message(spring_ids[1]) == MessageRef(
        spring_ids[1], spring, "user1@example.com", "user1@example.com", "sending"
    )
    assert store.find_message(10_000) is None
    found = store.find_messages_by_key("user0@example.com")
    assert [(m.id, m.campaign_id) for m in found] == [
        (autumn_ids[0], autumn),
        (spring_ids[0], spring),
    ]


def test_bounce_recorded_once(store: SQLStore) -> None:
    campaign, ids = load(store, "spring", 1)
    store.commit_group(campaign, [], [event(ids[0], "sent", "r1", 200.0)])
    record = LogRecord(type="bounced", time=300.0, message=ids[0], recipient="user0@example.com")
    bounce = BounceEvent(
        "dsn-1\nuser0@example.com", "user0@example.com", "soft", campaign, record, True
    )

    assert store.record_bounce(bounce) is True
    assert store.record_bounce(bounce) is False
    assert store.bounce_recorded(bounce.id)
    assert not store.bounce_recorded("dsn-2\nuser0@example.com")
    assert store.count_soft_bounces("user0@example.com") == 1
    assert store.counts(campaign) == {"bounced": 1}
    assert [r["type"] for r in store.iter_log(campaign)] == ["sent", "bounced"]


def report_blast(store: SQLStore) -> None:
    """A campaign over two relays and two domains whose attempts carry durations and replies."""
    campaign, ids = load(store, "spring", 6)
    rename = "UPDATE messages SET address = 'guest@EXAMPLE.net' WHERE id = ?"
    store._write("renaming", store._execute, rename, (ids[5],))
    outcomes = []
    for index, message in enumerate(ids):
        state = ("sent", "sent", "deferred", "bounced", "sent", "sent")[index]
        relay = "r1" if index % 2 else "r2"
        outcome = event(message, state, relay, 200.0 + 7 * index, "rcpt" if index == 3 else "data")
        outcome.record.duration = 0.05 * (index + 1)
        outcome.record.status = "5.1.1" if state == "bounced" else None
        outcomes.append(outcome)
    store.commit_group(campaign, [], outcomes)


def test_report_queries(store: SQLStore) -> None:
    report_blast(store)
    campaign = store.list_campaigns()[0].id
    span = store.attempt_span(campaign)
    assert (span.first, span.last, span.attempts, span.sent) == (200.0, 235.0, 6, 4)
    assert store.sent_timeline(campaign, 200.0, 10.0) == [
        (0, "r1", 1),
        (0, "r2", 1),
        (2, "r2", 1),
        (3, "r1", 1),
    ]
    [reason] = store.top_reasons(campaign, "bounced", 5)
    assert (reason.command, reason.code, reason.status, reason.count) == ("rcpt", 451, "5.1.1", 1)
    assert store.domain_outcomes(campaign, 1) == [
        ("example.com", "bounced", 1),
        ("example.com", "deferred", 1),
        ("example.com", "sent", 3),
    ]
    cumulative, total, count = store.duration_histogram(campaign, [0.1, 0.25])
    assert (cumulative, count) == ([2, 5], 6)
    assert round(total, 6) == 1.05


def metric_samples(collector: StoreCollector) -> list[tuple[str, str, float]]:
    return [
        (sample.name, json.dumps(sample.labels, sort_keys=True), sample.value)
        for metric in collector.collect()
        for sample in metric.samples
    ]


def test_report_same_on_both_backends(tmp_path: Path, postgres_url: str) -> None:
    figures = []
    collected = []
    for location in (str(tmp_path / "store.db"), postgres_url):
        with open_store(location) as store:
            report_blast(store)
            figures.append(build_report(store, "spring", now=300.0))
            collected.append(sorted(metric_samples(StoreCollector(store))))
    assert figures[0] == figures[1]
    assert figures[0]["reasons"]["bounced"][0]["count"] == 1
    assert collected[0] == collected[1]
    assert ("mailblast_send_duration_seconds_count", "{}", 6) in collected[0]
