"""The stores on both backends: loading, claims under lease, group commits, recovery, failures.

The ``store`` fixture (tests/conftest.py) runs each test on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailblast.compose import message_id_for
from mailblast.errors import StoreError
from mailblast.store import SQLStore, open_store
from mailblast.store.base import LoadRow, LogRecord, Outcome
from mailblast.store.sqlite import SQLiteStore


def rows(count: int, start: int = 0) -> list[LoadRow]:
    return [
        LoadRow(
            line=i + 2,
            address=f"user{i}@example.com",
            key=f"user{i}@example.com",
            smtputf8=False,
            fields="{}",
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "store.db")
    yield opened
    opened.close()


def make_campaign(store: SQLStore) -> int:
    return store.upsert_campaign("spring", {"name": "spring"}, 100.0).id


def outcome(message: int, state: str, now: float = 200.0) -> Outcome:
    record = LogRecord(type=state, time=now, message=message, relay="r1", code=250)
    return Outcome(message, state, 1, now, now, record)


def test_wal_mode_enabled(sqlite_store: SQLiteStore) -> None:
    assert sqlite_store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_load_chunk_deduplicates_on_key(store: SQLStore) -> None:
    campaign = make_campaign(store)
    first = store.load_chunk(campaign, rows(3), [], 4, 3)
    again = rows(1)
    again[0].line = 9
    second = store.load_chunk(campaign, again, [], 9, 4)
    assert first.queued == 3
    assert second.queued == 0
    assert second.duplicates == [(again[0], 2)]
    assert store.counts(campaign) == {"queued": 3}
    row = store.get_campaign("spring")
    assert row is not None
    assert (row.rows_duplicate, row.load_line, row.rows_read) == (1, 9, 4)


def test_load_chunk_skips_suppressed(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.add_suppression("user1@example.com", "user1@example.com", "manual", 0, 1.0)
    result = store.load_chunk(campaign, rows(3), [], 4, 3)
    assert result.queued == 2
    assert [r.key for r in result.suppressed] == ["user1@example.com"]


def test_suppression_record_tied_to_message(store: SQLStore) -> None:
    settings = {"name": "spring", "from_address": "events@Example.COM"}
    campaign = store.upsert_campaign("spring", settings, 100.0).id
    store.load_chunk(campaign, rows(2), [], 3, 2)
    record = LogRecord(type="unsubscribed", time=5.0, recipient="user1@example.com")

    added = store.add_suppression(
        "user1@example.com", "user1@example.com", "unsubscribed", 0, 5.0, "spring", record
    )

    [logged] = [r for r in store.iter_log(campaign) if r["type"] == "unsubscribed"]
    assert added
    assert logged["line"] == 3
    assert logged["message_id"] == message_id_for("spring", "user1@example.com", "example.com")


def test_claim_respects_limit_and_due(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(5), [], 6, 5)
    claimed = store.claim(campaign, "run-a", now=10, lease_until=70, limit=3)
    assert [m.line for m in claimed] == [2, 3, 4]
    again = store.claim(campaign, "run-b", now=10, lease_until=70, limit=10)
    assert [m.line for m in again] == [5, 6]
    assert store.claim(campaign, "run-c", now=10, lease_until=70, limit=10) == []


def test_commit_group_records_outcomes_and_log(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(2), [], 3, 2)
    claimed = store.claim(campaign, "run-a", 10, 70, 10)
    store.commit_group(campaign, [claimed[0].id], [outcome(claimed[0].id, "sent")])
    assert store.counts(campaign) == {"sent": 1, "sending": 1}
    log = list(store.iter_log(campaign))
    assert [r["type"] for r in log] == ["sent"]
    assert log[0]["campaign"] == "spring"


def test_recover_in_flight_becomes_unknown(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(3), [], 4, 3)
    claimed = store.claim(campaign, "dead-run", 10, 1000, 10)
    store.commit_group(campaign, [claimed[0].id], [])
    result = store.recover(campaign, ["dead-run"], 20)
    assert (result.unknown, result.requeued) == (1, 2)
    assert store.counts(campaign) == {"unknown": 1, "queued": 2}


def test_recover_expired_lease_only(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(2), [], 3, 2)
    store.claim(campaign, "live-run", 10, 100, 1)
    assert store.recover(campaign, [], 50).requeued == 0
    assert store.recover(campaign, [], 150).requeued == 1


def test_renewed_lease_not_recovered(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(2), [], 3, 2)
    store.claim(campaign, "live-run", 10, 100, 2)
    store.renew_lease(campaign, "live-run", 400)
    assert store.recover(campaign, [], 150).requeued == 0
    assert store.recover(campaign, [], 450).requeued == 2


def test_release_returns_unattempted(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(2), [], 3, 2)
    claimed = store.claim(campaign, "run-a", 10, 100, 10)
    store.release(campaign, "run-a", [m.id for m in claimed])
    assert store.counts(campaign) == {"queued": 2}


def test_cancel_remaining_leaves_final(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(3), [], 4, 3)
    claimed = store.claim(campaign, "run-a", 10, 100, 1)
    store.commit_group(campaign, [], [outcome(claimed[0].id, "sent")])
    assert store.cancel_remaining(campaign, 30) == 2
    assert store.counts(campaign) == {"sent": 1, "cancelled": 2}


def test_full_disk_raises_store_error(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(2), [], 3, 2)
    claimed = store.claim(campaign, "run-a", 10, 100, 10)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    big = outcome(claimed[0].id, "sent")
    big.record.text = "x" * 200_000
    with pytest.raises(StoreError, match="recording outcomes failed in store"):
        store.commit_group(campaign, [], [big])
    assert store.counts(campaign) == {"sending": 2}


def test_read_only_store_raises_store_error(tmp_path: Path) -> None:
    writer = SQLiteStore(tmp_path / "ro.db")
    campaign = make_campaign(writer)
    writer.close()
    reader = SQLiteStore(tmp_path / "ro.db", read_only=True)
    try:
        with pytest.raises(StoreError, match="attempt to write a readonly database"):
            reader.set_status(campaign, "paused", None, 1.0)
    finally:
        reader.close()


def test_newer_schema_refused(store_location: str) -> None:
    with open_store(store_location) as store:
        store.db.execute("UPDATE schema_version SET version = 99")
        store.db.commit()
    with pytest.raises(StoreError, match="newer than this mailblast"):
        open_store(store_location)


def test_connection_slots_capped(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 2)])
    first = store.acquire_slot(campaign, "r1", "run-a", 10, 100)
    second = store.acquire_slot(campaign, "r1", "run-b", 10, 100)
    assert {first, second} == {0, 1}
    assert store.acquire_slot(campaign, "r1", "run-c", 10, 100) is None
    store.release_slot(campaign, "r1", 0, "run-a")
    assert store.acquire_slot(campaign, "r1", "run-c", 10, 100) == 0


def test_expired_slot_taken_over(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 1)])
    assert store.acquire_slot(campaign, "r1", "dead-run", 10, 100) == 0
    store.renew_lease(campaign, "dead-run", 200)
    assert store.acquire_slot(campaign, "r1", "run-b", 150, 300) is None
    assert store.acquire_slot(campaign, "r1", "run-b", 250, 300) == 0


def test_release_slots_of_run(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 3), ("r2", 1)])
    for relay in ("r1", "r1", "r2"):
        assert store.acquire_slot(campaign, relay, "run-a", 10, 100) is not None
    store.release_slots(campaign, "run-a")
    assert store.acquire_slot(campaign, "r2", "run-b", 10, 100) == 0


def test_prepare_relays_shrinks_slots(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 3)])
    store.prepare_relays(campaign, [("r1", 1)])
    assert store.acquire_slot(campaign, "r1", "run-a", 10, 100) == 0
    assert store.acquire_slot(campaign, "r1", "run-b", 10, 100) is None


def test_send_budget_spaces_messages(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 1)])
    starts = [store.take_send_budget(campaign, "r1", 100.0, 0.5, None, "d1") for _ in range(3)]
    assert starts == [100.0, 100.5, 101.0]
    assert store.take_send_budget(campaign, "r1", 200.0, 0.5, None, "d1") == 200.0


def test_daily_quota_resets_next_day(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.prepare_relays(campaign, [("r1", 1)])
    taken = [store.take_send_budget(campaign, "r1", 10.0, 0.0, 2, "2026-12-04") for _ in range(3)]
    assert taken == [10.0, 10.0, None]
    assert store.take_send_budget(campaign, "r1", 20.0, 0.0, 2, "2026-12-05") == 20.0


def test_in_flight_mark_needs_lease(store: SQLStore) -> None:
    campaign = make_campaign(store)
    store.load_chunk(campaign, rows(1), [], 2, 1)
    message = store.claim(campaign, "slow-run", 10, 20, 1)[0].id
    store.recover(campaign, [], 30)
    assert store.claim(campaign, "new-run", 30, 90, 1)[0].id == message
    assert store.commit_group(campaign, [message], [], owner="slow-run") == [message]
    assert store.commit_group(campaign, [message], [], owner="new-run") == []
    assert store.recover(campaign, ["new-run"], 40).unknown == 1
