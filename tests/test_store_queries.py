"""The dashboard's and bounce processing's store queries, on SQLite and on PostgreSQL.

The ``store`` fixture (tests/conftest.py) runs each test on both backends.
"""

from __future__ import annotations

import json

from mailblast.store import SQLStore
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
