"""Kill a sending process with SIGKILL at random moments, resume it, and check what arrived.

Used by the kill test (20,000 messages, 10 kills) and by ``bench/kill_resume.py`` (larger runs).
The sinks run in this process and count every message they accept. ``mailblast send`` runs in a
child process, so SIGKILL leaves it no chance to clean up.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.sink import ThreadedSink

CONNECTIONS_PER_RELAY = 4
RELAYS = 3


@dataclass
class KillReport:
    """What the scenario observed."""

    recipients: int
    kills: int = 0
    in_flight_after_kill: list[int] = field(default_factory=list)
    # Kills after which the store held more sent messages than when the killed run started.
    kills_during_sending: int = 0
    unknown: set[str] = field(default_factory=set)
    received: Counter[str] = field(default_factory=Counter)
    final_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def missing(self) -> int:
        return self.recipients - len(self.received)

    @property
    def duplicated_outside_unknown(self) -> list[str]:
        return [r for r, n in self.received.items() if n > 1 and r not in self.unknown]

    @property
    def open_connections(self) -> int:
        return CONNECTIONS_PER_RELAY * RELAYS


def send_command(campaign: Path) -> list[str]:
    return [sys.executable, "-m", "mailblast.cli.main", "send", str(campaign), "--no-wait"]


def in_flight_rows(store: Path) -> int:
    """Messages a killed run left claimed and marked in flight: the next run makes them unknown."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT count(*) FROM messages WHERE state = 'sending' AND in_flight = 1"
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def sent_rows(store: Path) -> int:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT count(*) FROM messages WHERE state = 'sent'").fetchone()
        return int(row[0])
    finally:
        db.close()


def kill_sender(
    campaign: Path, store: Path, log: BinaryIO, delay: float, report: KillReport
) -> None:
    """Start ``mailblast send`` and SIGKILL it after ``delay`` seconds if it still runs."""
    sent_before = sent_rows(store) if store.exists() else 0
    process = subprocess.Popen(send_command(campaign), stdout=log, stderr=log)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
        report.kills += 1
    process.wait()

    if not store.exists():
        return
    report.in_flight_after_kill.append(in_flight_rows(store))
    if killed and sent_rows(store) > sent_before:
        report.kills_during_sending += 1


def unknown_recipients(store: Path) -> set[str]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT recipient FROM delivery_log WHERE type = 'unknown'").fetchall()
        return {row[0] for row in rows}
    finally:
        db.close()


def run_kill_scenario(
    directory: Path,
    recipients: int,
    kills: int,
    *,
    seed: int = 1,
    min_delay: float = 1.0,
    max_delay: float = 2.5,
    load_delay: float = 0.0,
) -> KillReport:
    """Send ``recipients`` messages, killing the sender ``kills`` times, then finish and retry.

    Each kill comes a random ``min_delay`` to ``max_delay`` seconds after its run starts. The first
    run also loads the list, so its kill comes ``load_delay`` seconds later still.
    """
    rng = random.Random(seed)
    report = KillReport(recipients=recipients)
    started = time.monotonic()
    sinks = [ThreadedSink("127.0.0.1", 0, keep_messages=True) for _ in range(RELAYS)]
    for sink in sinks:
        sink.start()
    try:
        relays = [
            relay_block(
                f"sink{i}",
                sink.port,
                max_connections=CONNECTIONS_PER_RELAY,
                max_messages_per_connection=500,
            )
            for i, sink in enumerate(sinks)
        ]
        write_list(directory / "attendees.csv", person_rows(recipients))
        campaign = write_campaign(directory, relays, sending='lease = "10m"\n')
        store = directory / "mailblast.db"
        log = open(directory / "send.log", "ab")  # noqa: SIM115
        with log:
            for number in range(kills):
                delay = rng.uniform(min_delay, max_delay) + (load_delay if number == 0 else 0.0)
                kill_sender(campaign, store, log, delay, report)
            subprocess.run(send_command(campaign), stdout=log, stderr=log, check=True)
            report.unknown = unknown_recipients(store)
            retry = [sys.executable, "-m", "mailblast.cli.main", "retry", "spring-gala"]
            retry += ["--store", str(store), "--unknown"]
            subprocess.run(retry, stdout=log, stderr=log, check=True)
            subprocess.run(send_command(campaign), stdout=log, stderr=log, check=True)
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        report.final_counts = dict(
            db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()
        )
        db.close()
    finally:
        for sink in sinks:
            sink.stop()
    for sink in sinks:
        for message in sink.stats.received:
            report.received.update(message.recipients)
    report.seconds = time.monotonic() - started
    return report
