"""Time the dashboard's store queries on a synthetic store with a million messages.

Builds a SQLite store with one campaign of ``--messages`` messages: 70 % sent, 20 % queued,
5 % deferred and due over the next hour, the rest bounced, failed or sending. Each sent,
deferred, bounced and failed message has one delivery record, spread over the last 2,000
seconds across three relays. It then times, in the same process and on the same file:

- ``dashboard_snapshot``: what one poll of the dashboard's JSON feed reads;
- the reference, ``blast.summarise``: what one ``mailblast status`` reads.

Usage, from the repository root::

    .venv/bin/python bench/dashboard_queries.py [--messages 1000000] [--runs 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailblast import blast
from mailblast.store.sqlite import SQLiteStore
from mailblast.web.snapshot import dashboard_snapshot

RELAYS = ("relay-0", "relay-1", "relay-2")
SPAN_SECONDS = 2000.0
# (state, share of messages, delivery record type or None)
MIX = (
    ("sent", 0.70, "sent"),
    ("queued", 0.20, None),
    ("deferred", 0.05, "deferred"),
    ("bounced", 0.03, "bounced"),
    ("failed", 0.01, "failed"),
    ("sending", 0.01, None),
)


def message_rows(campaign: int, count: int, now: float) -> Iterator[tuple[Any, ...]]:
    random_source = random.Random(7)
    states = [state for state, share, _ in MIX for _ in range(round(share * 100))]
    for index in range(count):
        state = states[index % len(states)]
        due = now + random_source.uniform(0, 3600) if state == "deferred" else 0.0
        yield (campaign, index + 2, f"guest{index}@example.com", f"k{index}", "{}", state, due)


def log_rows(campaign: int, count: int, now: float) -> Iterator[tuple[Any, ...]]:
    random_source = random.Random(11)
    kinds = [kind for _, share, kind in MIX for _ in range(round(share * 100))]
    for index in range(count):
        kind = kinds[index % len(kinds)]
        if kind is None:
            continue
        when = now - random_source.uniform(0, SPAN_SECONDS)
        relay = RELAYS[index % len(RELAYS)]
        yield (when, campaign, index + 1, kind, relay, "rcpt", 250, f"{kind} reply {index}")


def build_store(path: Path, count: int, now: float) -> float:
    """Create the store; return the seconds it took."""
    started = time.perf_counter()
    store = SQLiteStore(path)
    settings = {"relays": [{"name": name} for name in RELAYS]}
    row = store.upsert_campaign("spring-gala", settings, now - SPAN_SECONDS)
    store.mark_started(row.id, now - SPAN_SECONDS)
    with store.db:
        store.db.executemany(
            "INSERT INTO messages (campaign_id, line, address, key, fields, state, due_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            message_rows(row.id, count, now),
        )
        store.db.executemany(
            "INSERT INTO delivery_log (time, campaign_id, message, type, relay, command, code,"
            " text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            log_rows(row.id, count, now),
        )
    store.close()
    return time.perf_counter() - started


def timed(function: Callable[[], object], runs: int) -> list[float]:
    function()  # the first call warms the page cache; it is not counted
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def summary(label: str, times: list[float]) -> str:
    median, low, high = (
        1000 * value for value in (statistics.median(times), min(times), max(times))
    )
    return f"{label}: median {median:.1f} ms, min {low:.1f} – max {high:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    path = workdir / "dashboard.db"
    path.unlink(missing_ok=True)

    seconds = build_store(path, arguments.messages, time.time())
    print(f"built {arguments.messages:,} messages in {seconds:.1f} s")
    store = SQLiteStore(path)
    snapshot = timed(lambda: dashboard_snapshot(store, time.time(), True), arguments.runs)
    status = timed(lambda: blast.summarise(store, "spring-gala"), arguments.runs)
    store.close()

    print(summary("dashboard_snapshot (one poll)", snapshot))
    print(summary("blast.summarise (mailblast status)", status))
    ratios = [a / b for a, b in zip(snapshot, status, strict=True)]
    print(f"ratio poll / status: median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
