"""Campaigns for the dashboard tests: one already sent, one sending slowly, both through sinks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.sink import ThreadedSink
from mailblast.store import open_store
from mailblast.store.base import LogRecord

CONTROL_TOKEN = "correct-horse-battery-staple"
# A reply text with markup: the dashboard must show it as text, and the image must never load.
MARKUP_REPLY = '<img src="http://example.net/pixel.png" id="injected"> 4.7.1 <b>greylisted</b>'
# Deferred messages fall due ten minutes after their attempt, so they stay visible as deferred.
SENDING = 'retry_initial = "10m"\nretry_max = "1h"\n'


def list_rows(count: int) -> list[list[str]]:
    """Return ``count`` rows of which a few are deferred (tempfail-) and a few bounce."""
    rows = person_rows(count)
    for index in range(0, count, 10):
        rows[index][0] = f"tempfail-{index}@example.org"
    for index in range(5, count, 20):
        rows[index][0] = f"bounce-{index}@example.net"
    return rows


def run_cli(*arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailblast.cli.main", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def store_status(store: Path, name: str = "spring-gala") -> dict[str, object]:
    """Return `mailblast status NAME --json` for the store."""
    result = run_cli("status", name, "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def campaign_status(store: Path, name: str = "spring-gala") -> str:
    """Return the campaign's status as the store has it, without starting a process."""
    opened = open_store(str(store), read_only=True)
    try:
        row = opened.get_campaign(name)
        assert row is not None
        return row.status
    finally:
        opened.close()


def sent_campaign(directory: Path, sink: ThreadedSink, count: int = 60) -> Path:
    """Send a campaign once with --no-wait, leaving its deferred messages queued; return the
    store's path. One extra deferral record carries MARKUP_REPLY."""
    write_list(directory / "attendees.csv", list_rows(count))
    relays = [relay_block("primary", sink.port), relay_block("backup", sink.port)]
    campaign = write_campaign(directory, relays, sending=SENDING)
    result = run_cli("send", str(campaign), "--no-wait")
    assert result.returncode == 0, result.stdout + result.stderr
    store = directory / "mailblast.db"
    add_markup_record(store)
    return store


def build_sent_store(directory: Path) -> Path:
    """Run :func:`sent_campaign` against a sink of its own; return the store's path."""
    with ThreadedSink("127.0.0.1", 0) as sink:
        return sent_campaign(directory, sink)


def copy_store(store: Path, directory: Path) -> Path:
    """Copy a closed store (its WAL already checkpointed) so a test may change the copy."""
    copy = directory / store.name
    shutil.copyfile(store, copy)
    return copy


def add_markup_record(store_path: Path) -> None:
    store = open_store(str(store_path))
    try:
        row = store.get_campaign("spring-gala")
        assert row is not None
        record = LogRecord(
            type="deferred",
            time=time.time(),
            recipient="guest1@example.com",
            relay="primary",
            command="rcpt",
            code=451,
            status="4.7.1",
            text=MARKUP_REPLY,
        )
        store.commit_group(row.id, [], [], [record])
    finally:
        store.close()


def slow_campaign(directory: Path, sinks: list[ThreadedSink], count: int = 3000) -> Path:
    """Write a campaign whose relays accept 40 messages per second in all; return its file."""
    write_list(directory / "attendees.csv", list_rows(count))
    relays = [
        relay_block(f"relay-{index}", sink.port, max_connections=1, rate="20/s")
        for index, sink in enumerate(sinks)
    ]
    return write_campaign(directory, relays, sending=SENDING)
