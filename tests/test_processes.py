"""send --processes: several sender processes share one store and split each relay's limits."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.config import RelaySettings
from mailblast.processes import relay_shares
from mailblast.sink import ThreadedSink
from mailblast.store import open_store


def send(campaign_file: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailblast.cli.main", "send", str(campaign_file), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_two_processes_send_each_once(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sinks = [start_sink(keep_messages=True) for _ in range(2)]
    write_list(tmp_path / "attendees.csv", person_rows(600))
    relays = [relay_block(f"r{i}", sink.port, max_connections=3) for i, sink in enumerate(sinks)]
    campaign_file = write_campaign(tmp_path, relays)

    result = send(campaign_file, "--processes", "2")

    assert result.returncode == 0, result.stderr
    assert "sending from 2 processes" in result.stderr
    received = Counter(r for sink in sinks for m in sink.stats.received for r in m.recipients)
    assert len(received) == 600
    assert max(received.values()) == 1
    assert all(sink.stats.max_concurrent_connections <= 3 for sink in sinks)
    assert result.stderr.count("stopping: every message is final") == 2  # one per engine
    with sqlite3.connect(tmp_path / "mailblast.db") as store:
        states = dict(store.execute("SELECT state, count(*) FROM messages GROUP BY state"))
    assert states == {"sent": 600}


def test_processes_on_postgres_share_whole_limits(
    tmp_path: Path, postgres_url: str, start_sink: Callable[..., ThreadedSink]
) -> None:
    # The store holds each relay's limits for every run, so each process gets the relay whole
    # and the slots table keeps max_connections rows instead of one process's share.
    sink = start_sink(keep_messages=True)
    write_list(tmp_path / "attendees.csv", person_rows(300))
    campaign_file = write_campaign(tmp_path, [relay_block("only", sink.port, max_connections=3)])
    text = campaign_file.read_text(encoding="utf-8")
    campaign_file.write_text(text.replace('"mailblast.db"', f'"{postgres_url}"'), encoding="utf-8")

    result = send(campaign_file, "--processes", "2")

    assert result.returncode == 0, result.stderr
    received = Counter(r for m in sink.stats.received for r in m.recipients)
    assert len(received) == 300
    assert max(received.values()) == 1
    assert sink.stats.max_concurrent_connections <= 3
    with open_store(postgres_url) as store:
        slots = store._execute("SELECT count(*) FROM relay_slots").fetchone()[0]
        row = store.get_campaign("spring-gala")
        assert row is not None
        assert store.counts(row.id) == {"sent": 300}
    assert slots == 3


def test_processes_out_of_range(tmp_path: Path, start_sink: Callable[..., ThreadedSink]) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(3))
    campaign_file = write_campaign(tmp_path, [relay_block("only", sink.port)])

    result = send(campaign_file, "--processes", "0")

    assert result.returncode == 2
    assert "--processes 0 must be between 1 and 64" in result.stderr
    assert sink.stats.messages == 0


def test_processes_with_test_to_rejected(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(3))
    campaign_file = write_campaign(tmp_path, [relay_block("only", sink.port)])

    result = send(campaign_file, "--processes", "2", "--test-to", "proof@example.org")

    assert result.returncode == 2
    assert "--processes applies to a campaign send" in result.stderr
    assert sink.stats.messages == 0


@pytest.mark.parametrize(
    ("connections", "rate", "processes", "expected"),
    [
        (8, 80.0, 2, [(4, 40.0), (4, 40.0)]),
        (5, 10.0, 2, [(3, 6.0), (2, 4.0)]),
        (1, None, 3, [(1, None)]),
    ],
)
def test_relay_shares_add_up(
    connections: int, rate: float | None, processes: int, expected: list[tuple[int, float | None]]
) -> None:
    relay = RelaySettings(name="r", host="127.0.0.1", max_connections=connections, rate=rate)

    shares = relay_shares((relay,), processes)

    assert [(s[0].max_connections, s[0].rate) for s in shares] == expected
