"""The suppression list: store methods and `mailblast suppress` through the CLI."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from mailblast import suppressions
from mailblast.cli.main import main
from mailblast.store import SQLStore, migrations
from mailblast.store.base import LoadRow, LogRecord
from mailblast.store.sqlite import SQLiteStore
from mailblast.suppressions import iter_suppressions, make_entry


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "mailblast.db"
    store = SQLiteStore(path)
    store.upsert_campaign("spring", {"name": "spring"}, 100.0)
    store.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def suppress(
    capsys: pytest.CaptureFixture[str], store: Path, *arguments: str
) -> tuple[int, str, str]:
    action, *rest = arguments
    return run(capsys, "suppress", action, "--store", str(store), *rest)


def listed(capsys: pytest.CaptureFixture[str], store: Path, *filters: str) -> list[list[str]]:
    code, out, _ = suppress(capsys, store, "list", *filters)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "address\treason\tcampaign\ttime\torigin"
    return [line.split("\t") for line in lines[1:]]


def load_rows(*keys: str) -> list[LoadRow]:
    return [LoadRow(i + 2, key, key, False, "{}") for i, key in enumerate(keys)]


# Store


def test_add_keeps_first_entry(store: SQLStore) -> None:
    first = store.add_suppression("a@example.com", "a@example.com", "manual", 0, 10.0)
    again = store.add_suppression("a@example.com", "A@example.com", "complaint", 0, 20.0)
    [entry] = store.list_suppressions()
    assert first is True
    assert again is False
    assert (entry.reason, entry.time, entry.address) == ("manual", 10.0, "a@example.com")


def test_scopes_are_separate(store: SQLStore) -> None:
    spring = store.upsert_campaign("spring", {}, 1.0).id
    autumn = store.upsert_campaign("autumn", {}, 1.0).id
    store.add_suppression("a@example.com", "a@example.com", "manual", spring, 1.0)
    assert store.is_suppressed(spring, "a@example.com")
    assert not store.is_suppressed(autumn, "a@example.com")
    store.add_suppression("a@example.com", "a@example.com", "complaint", 0, 2.0)
    assert store.is_suppressed(autumn, "a@example.com")
    assert store.count_suppressions() == 2
    assert store.count_suppressions(spring) == 1
    assert store.count_suppressions(reason="complaint") == 1


def test_iteration_crosses_pages(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suppressions, "PAGE_SIZE", 3)
    entries = [make_entry(f"user{i:02}@example.com", "manual") for i in range(10)]
    assert store.add_suppressions(entries) == 10
    assert store.add_suppressions(entries[:4]) == 0
    keys = [entry.key for entry in iter_suppressions(store)]
    assert keys == sorted(entry.key for entry in entries)


def test_claim_flags_suppressed(store: SQLStore) -> None:
    campaign = store.upsert_campaign("spring", {}, 1.0).id
    store.load_chunk(campaign, load_rows("a@example.com", "b@example.com"), [], 3, 2)
    store.add_suppression("b@example.com", "b@example.com", "manual", campaign, 2.0)
    claimed = store.claim(campaign, "run-a", now=10, lease_until=70, limit=10)
    assert [(m.key, m.suppressed) for m in claimed] == [
        ("a@example.com", False),
        ("b@example.com", True),
    ]
    store.add_suppression("a@example.com", "a@example.com", "manual", 0, 3.0)
    assert store.suppressed_claims(campaign, "run-a") == [m.id for m in claimed]
    assert store.suppressed_claims(campaign, "run-b") == []


def test_record_written_once(store: SQLStore) -> None:
    campaign = store.upsert_campaign("spring", {}, 1.0).id
    store.load_chunk(campaign, load_rows("a@example.com"), [], 2, 1)
    for _ in range(2):
        record = LogRecord(type="unsubscribed", time=5.0, recipient="a@example.com")
        store.add_suppression(
            "a@example.com", "a@example.com", "unsubscribed", 0, 5.0, "spring", record
        )
    log = [r for r in store.iter_log(campaign) if r["type"] == "unsubscribed"]
    assert len(log) == 1
    assert log[0]["line"] == 2


def test_remove_by_keys_and_by_reason(store: SQLStore) -> None:
    entries = [make_entry(f"user{i}@example.com", "manual") for i in range(4)]
    store.add_suppressions([*entries, make_entry("c@example.com", "complaint")])
    assert store.remove_suppressions(0, [entries[0].key, entries[1].key, "none@example.com"]) == 2
    assert store.remove_suppressions(0, [entries[2].key], reason="complaint") == 0
    assert store.remove_suppressions(0, reason="manual") == 2
    assert [entry.key for entry in store.list_suppressions()] == ["c@example.com"]


def test_store_of_first_release_gains_origin(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(migrations.scripts("sqlite")[0][1])
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute(
            "INSERT INTO suppressions VALUES ('a@example.com', 0, 'a@example.com', 'manual', 1)"
        )
    db.close()
    store = SQLiteStore(path)
    [entry] = store.list_suppressions()
    store.close()
    assert (entry.key, entry.origin) == ("a@example.com", None)


def test_store_with_origin_added_in_place_upgrades(tmp_path: Path) -> None:
    # Builds before versioned migrations added the column on open and kept version 1.
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(migrations.scripts("sqlite")[0][1])
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("ALTER TABLE suppressions ADD COLUMN origin TEXT")
        db.execute(
            "INSERT INTO suppressions VALUES"
            " ('a@example.com', 0, 'a@example.com', 'unsubscribed', 1, 'spring')"
        )
    db.close()
    store = SQLiteStore(path)
    [entry] = store.list_suppressions()
    assert store.schema_version() == migrations.latest("sqlite")
    assert "bounces" in store.catalog()
    store.close()
    assert entry.origin == "spring"


# Commands


def test_add_matches_case_and_idn(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, out, _ = suppress(capsys, store_path, "add", "Guest@bücher.EXAMPLE.com")
    assert code == 0
    assert "suppressed (every campaign)" in out
    code, out, _ = suppress(
        capsys, store_path, "add", "guest@xn--bcher-kva.example.com", "--reason", "complaint"
    )
    assert code == 0
    assert "already suppressed; unchanged" in out
    [entry] = listed(capsys, store_path)
    assert entry[:3] == ["Guest@xn--bcher-kva.example.com", "manual", "*"]


def test_add_for_one_campaign(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, out, _ = suppress(
        capsys,
        store_path,
        "add",
        "a@example.com",
        "--campaign",
        "spring",
        "--reason",
        "hard bounce",
    )
    assert code == 0
    assert "(campaign spring)" in out
    [entry] = listed(capsys, store_path, "--campaign", "spring")
    assert entry[:3] == ["a@example.com", "hard-bounce", "spring"]
    assert entry[4] == "spring"
    assert entry[3].endswith("+00:00")


def test_add_invalid_address(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, _, err = suppress(capsys, store_path, "add", "ok@example.com", "not-an-address")
    assert code == 2
    assert "invalid address 'not-an-address'" in err
    assert listed(capsys, store_path) == []


def test_add_unknown_campaign(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, _, err = suppress(capsys, store_path, "add", "a@example.com", "--campaign", "autumn")
    assert code == 2
    assert "campaign 'autumn' not found" in err
    assert "campaigns there: spring" in err


def test_add_invalid_reason(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["suppress", "add", "a@example.com", "--store", str(store_path), "--reason", "spam"])
    assert exited.value.code == 2
    assert "invalid reason 'spam'; use one of unsubscribed" in capsys.readouterr().err


def test_remove_one_and_missing(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    suppress(capsys, store_path, "add", "a@example.com")
    code, out, _ = suppress(capsys, store_path, "remove", "A@example.com")
    assert code == 0
    assert "A@example.com: removed (every campaign)" in out
    code, out, _ = suppress(capsys, store_path, "remove", "a@example.com")
    assert "a@example.com: not listed" in out
    assert listed(capsys, store_path) == []


def test_remove_many_needs_yes(
    capsys: pytest.CaptureFixture[str], store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suppress(capsys, store_path, "add", "a@example.com", "b@example.com", "c@example.com")
    suppress(capsys, store_path, "add", "d@example.com", "--reason", "complaint")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, _ = suppress(capsys, store_path, "remove", "--reason", "manual")
    assert code == 1
    assert "nothing removed" in out
    assert len(listed(capsys, store_path)) == 4

    code, out, _ = suppress(capsys, store_path, "remove", "--reason", "manual", "--yes")
    assert code == 0
    assert "removed 3 entries" in out
    assert [entry[0] for entry in listed(capsys, store_path)] == ["d@example.com"]


def test_remove_needs_address_or_reason(
    capsys: pytest.CaptureFixture[str], store_path: Path
) -> None:
    code, _, err = suppress(capsys, store_path, "remove")
    assert code == 2
    assert "no address given" in err


def test_list_filters_and_limit(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    suppress(capsys, store_path, "add", "a@example.com", "b@example.com")
    suppress(capsys, store_path, "add", "c@example.com", "--reason", "complaint")
    assert [e[0] for e in listed(capsys, store_path, "--reason", "complaint")] == ["c@example.com"]
    assert len(listed(capsys, store_path, "--limit", "2")) == 2
    assert listed(capsys, store_path, "--campaign", "spring") == []


def test_export_import_round_trip(
    capsys: pytest.CaptureFixture[str], store_path: Path, tmp_path: Path
) -> None:
    suppress(capsys, store_path, "add", "+1@example.com", "b@example.com", "--campaign", "spring")
    suppress(capsys, store_path, "add", "c@example.com", "--reason", "unsubscribed")
    export = tmp_path / "list.csv"
    code, _, err = suppress(capsys, store_path, "export", "--output", str(export))
    assert code == 0
    assert "wrote 3 entries" in err
    with export.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["address", "reason", "campaign", "time", "origin"]
    assert rows[0]["address"] == "'+1@example.com"  # kept from running as a formula

    other = tmp_path / "other.db"
    created = SQLiteStore(other)
    created.upsert_campaign("spring", {}, 1.0)
    created.close()
    code, out, _ = suppress(capsys, other, "import", str(export))
    assert code == 0
    assert "3 rows: 3 added, 0 already listed, 0 rejected" in out
    assert listed(capsys, other) == listed(capsys, store_path)


def test_import_reports_bad_rows(
    capsys: pytest.CaptureFixture[str], store_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "Address,Reason,Campaign,Time\n"
        "good1@example.com,,,\n"
        "not-an-address,,,\n"
        "good2@example.com,spam,,\n"
        "good3@example.com,,autumn,\n"
        "good4@example.com,,,yesterday\n"
        ",complaint,,\n"
        "good5@example.com,complaint,spring,2026-01-31T12:00:00Z\n"
        "GOOD1@example.com,,,\n",
        encoding="utf-8",
    )
    code, out, err = suppress(capsys, store_path, "import", str(source))
    assert code == 1
    assert "8 rows: 2 added, 1 already listed, 5 rejected" in out
    assert f"{source} line 3: rejected: 'not-an-address'" in err
    assert "line 4: rejected: 'good2@example.com': invalid reason 'spam'" in err
    assert "line 5: rejected: campaign 'autumn' is not in the store" in err
    assert "line 6: rejected: 'good4@example.com': invalid time 'yesterday'" in err
    assert "line 7: rejected: the address is empty" in err
    entries = {e[0]: e for e in listed(capsys, store_path)}
    assert sorted(entries) == ["good1@example.com", "good5@example.com"]
    assert entries["good5@example.com"][1:4] == ["complaint", "spring", "2026-01-31T12:00:00+00:00"]


def test_import_reads_past_unparseable_row(
    capsys: pytest.CaptureFixture[str], store_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    huge = "x" * 2000
    source.write_text(f"address\n{huge}@example.com\nafter@example.com\n", encoding="utf-8")
    limit = csv.field_size_limit(1000)  # the recipient reader raises the global limit
    try:
        code, out, err = suppress(capsys, store_path, "import", str(source))
    finally:
        csv.field_size_limit(limit)
    assert code == 1
    assert "2 rows: 1 added, 0 already listed, 1 rejected" in out
    assert "line 2: rejected: unreadable CSV: field larger than field limit" in err
    assert [entry[0] for entry in listed(capsys, store_path)] == ["after@example.com"]


def test_import_defaults_from_options(
    capsys: pytest.CaptureFixture[str], store_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("address\na@example.com\n", encoding="utf-8")
    args = ("--campaign", "spring", "--reason", "hard-bounce")
    code, _, _ = suppress(capsys, store_path, "import", str(source), *args)
    assert code == 0
    [entry] = listed(capsys, store_path)
    assert entry[:3] == ["a@example.com", "hard-bounce", "spring"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"email\na@example.com\n", "line 1: the header has no 'address' column"),
        (b"address\n\xff@example.com\n", "is not UTF-8 text"),
    ],
)
def test_import_unreadable_file(
    capsys: pytest.CaptureFixture[str],
    store_path: Path,
    tmp_path: Path,
    content: bytes,
    message: str,
) -> None:
    source = tmp_path / "in.csv"
    source.write_bytes(content)
    code, _, err = suppress(capsys, store_path, "import", str(source))
    assert code == 2
    assert message in err


def test_import_missing_file(capsys: pytest.CaptureFixture[str], store_path: Path) -> None:
    code, _, err = suppress(capsys, store_path, "import", "/nonexistent/list.csv")
    assert code == 2
    assert "cannot read /nonexistent/list.csv" in err


def test_list_missing_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    code, _, err = suppress(capsys, missing, "list")
    assert code == 2
    assert "not found" in err
    assert not missing.exists()
