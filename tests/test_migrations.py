"""Schema migrations and store locations: upgrades, old stores, URLs and passwords."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from mailblast.cli.main import main
from mailblast.errors import StoreError
from mailblast.store import SQLStore, migrations, open_store
from mailblast.store.sqlite import SQLiteStore

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Return a factory of empty store locations for a backend."""
    count = iter(range(1000))

    def create(backend: str) -> str:
        if backend == "sqlite":
            return str(tmp_path / f"store{next(count)}.db")
        factory: Callable[[], str] = request.getfixturevalue("new_postgres_url")
        return factory()

    return create


@pytest.mark.parametrize("backend", BACKENDS)
def test_stepwise_upgrade_equals_fresh(backend: str, new_location: Callable[[str], str]) -> None:
    latest = migrations.latest(backend)
    with open_store(new_location(backend), upgrade=False) as stepwise:
        for version in range(1, latest + 1):
            assert stepwise.upgrade(target=version) == [version]
            assert stepwise.schema_version() == version
        stepped = stepwise.catalog()
    with open_store(new_location(backend)) as fresh:
        assert fresh.schema_version() == latest
        assert fresh.catalog() == stepped
    assert {"messages", "relay_slots", "relay_budget", "runs"} <= set(stepped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_keeps_rows(backend: str, new_location: Callable[[str], str]) -> None:
    location = new_location(backend)
    with open_store(location, upgrade=False) as old:
        old.upgrade(target=1)
        old._write("test", old._execute, "INSERT INTO runs VALUES ('r1', 1, 'h', 2, 3.5, 4.5)")
    with open_store(location, upgrade=False) as store:
        assert store.upgrade() == list(range(2, migrations.latest(backend) + 1))
        assert store.runs(1) == [
            {"id": "r1", "host": "h", "pid": 2, "started_at": 3.5, "heartbeat_at": 4.5, "sent": 0}
        ]


def test_store_of_first_release_upgrades_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(migrations.scripts("sqlite")[0][1])
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.commit()
    db.close()
    with SQLiteStore(path) as store:
        assert store.schema_version() == migrations.latest("sqlite")


def test_shared_database_needs_explicit_upgrade(postgres_url: str) -> None:
    with open_store(postgres_url, upgrade=False) as old:
        old.upgrade(target=1)
    with pytest.raises(StoreError, match=r"older than this mailblast.*mailblast db upgrade"):
        open_store(postgres_url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_db_upgrade_command(
    backend: str, new_location: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    location = new_location(backend)
    assert main(["db", "upgrade", "--store", location]) == 0
    first = capsys.readouterr().out
    assert main(["db", "upgrade", "--store", location]) == 0
    second = capsys.readouterr().out
    latest = migrations.latest(backend)
    assert "schema upgraded from version 0 (applied 1, 2, 3)" in first
    assert f"schema is current (version {latest})" in second


def test_password_in_url_rejected() -> None:
    with pytest.raises(StoreError) as raised:
        open_store("postgresql://blast:s3cret@db.example.net/mail")
    assert "contains a password" in str(raised.value)
    assert "PGPASSWORD" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_unknown_scheme_rejected() -> None:
    with pytest.raises(StoreError, match="mysql://… is not supported"):
        open_store("mysql://blast@db.example.net/mail")


def test_password_variable_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILBLAST_TEST_UNSET", raising=False)
    with pytest.raises(StoreError, match=r"MAILBLAST_TEST_UNSET .* is not set"):
        open_store("postgresql://blast@db.example.net/mail", password_env="MAILBLAST_TEST_UNSET")


def test_password_variable_used(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Trust authentication accepts any password, so this checks the variable is read and passed.
    monkeypatch.setenv("MAILBLAST_TEST_DB_PASSWORD", "unused-by-trust")
    store: SQLStore = open_store(postgres_url, password_env="MAILBLAST_TEST_DB_PASSWORD")
    with store:
        assert store.db.info.password == "unused-by-trust"
