"""Shared fixtures: sinks on loopback and campaign files written into tmp_path."""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from browser import browser  # noqa: F401  (the headless Chromium fixture)
from mailblast.sink import ThreadedSink
from mailblast.store import SQLStore, open_store

# The test database: trust authentication on loopback, as .ci/run sets it up.
POSTGRES_URL = os.environ.get(
    "MAILBLAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)

SUBJECT = "{{ first_name }}, you're invited to {{ event }}"
TEXT = "Dear {{ first_name }} {{ last_name }},\nSee you at {{ event }} (row {{ row }}).\n"
HTML = (
    "<p>Dear {{ first_name }} {{ last_name }},</p><p>See you at {{ event }} (row {{ row }}).</p>\n"
)
COLUMNS = ("email", "first_name", "last_name", "event", "row")


@pytest.fixture
def start_sink() -> Iterator[Callable[..., ThreadedSink]]:
    """Start sinks on 127.0.0.1 port 0; all are stopped when the test ends."""
    started: list[ThreadedSink] = []

    def start(**options: Any) -> ThreadedSink:
        sink = ThreadedSink("127.0.0.1", 0, **options)
        sink.start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


@pytest.fixture
def new_postgres_url() -> Iterator[Callable[[], str]]:
    """Return a factory of store URLs, each on a fresh schema of the test database.

    The schemas are dropped when the test ends.
    """
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is unreachable: {error}; start it (.ci/run does when"
            " pg_isready fails) or point MAILBLAST_TEST_POSTGRES at a database with trust auth"
        )
    schemas: list[str] = []
    separator = "&" if "?" in POSTGRES_URL else "?"

    def create() -> str:
        schema = f"mailblast_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"

    try:
        yield create
    finally:
        for schema in schemas:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture
def postgres_url(new_postgres_url: Callable[[], str]) -> str:
    """Return a store URL on a fresh schema of the test database."""
    return new_postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return a new store's location for each backend: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_location: str) -> Iterator[SQLStore]:
    opened = open_store(store_location)
    yield opened
    opened.close()


def relay_block(name: str, port: int, **keys: Any) -> str:
    settings = {"name": name, "host": "127.0.0.1", "port": port, "tls": "none", **keys}
    lines = ["[[relay]]"] + [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def write_list(path: Path, rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


def person_rows(count: int, domain: str = "example.com") -> list[list[str]]:
    return [[f"guest{i}@{domain}", f"First{i}", f"Last{i}", "Gala", str(i)] for i in range(count)]


def write_campaign(
    directory: Path,
    relays: Sequence[str],
    *,
    name: str = "spring-gala",
    sending: str = 'retry_initial = "200ms"\nretry_max = "1s"\n',
    extra_campaign: str = "",
    html: bool = True,
) -> Path:
    (directory / "invite.txt").write_text(TEXT, encoding="utf-8")
    (directory / "invite.html").write_text(HTML, encoding="utf-8")
    html_line = 'html = "invite.html"\n' if html else ""
    text = (
        "[campaign]\n"
        f'name = "{name}"\n'
        'from = "Events Team <events@example.com>"\n'
        'envelope_sender = "bounces@example.com"\n'
        f'subject = "{SUBJECT}"\n'
        'text = "invite.txt"\n'
        f"{html_line}"
        'store = "mailblast.db"\n'
        f"{extra_campaign}\n"
        "[recipients]\n"
        'path = "attendees.csv"\n\n'
        f"[sending]\n{sending}\n" + "\n".join(relays)
    )
    path = directory / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path
