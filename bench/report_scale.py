"""Measure `mailblast report` on large delivery logs: time and peak memory against the log's size.

For each size the script fills a fresh SQLite store through the store's own methods with N
messages over 50 domains and four relays, spread over ten minutes. Each message has one final
record (sent, bounced or failed), and one in ten has a deferral before it. The script then runs
these commands, each as a child process:

- ``mailblast report NAME --html ... --json ...``, the command measured;
- ``mailblast log export NAME --format jsonl``, a reference that reads every record once;
- ``mailblast status NAME --json``, a reference that only counts messages by state.

Usage, from the repository root::

    .venv/bin/python bench/report_scale.py [--sizes 100000 1000000] [--runs 3] [--workdir DIR]

Wall time and peak RSS come from ``os.wait4`` on each child. Every figure goes to
``WORKDIR/report_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mailblast.store.base import LoadRow, LogRecord, Outcome
from mailblast.store.sqlite import SQLiteStore

NAME = "scale"
RELAYS = ("north", "south", "east", "west")
DOMAINS = 50
SPAN_SECONDS = 600.0
CHUNK = 10_000
START = 1_800_000_000.0


def fill(path: Path, size: int) -> int:
    """Write a campaign of ``size`` messages and their delivery records; return the record count."""
    store = SQLiteStore(path)
    row = store.upsert_campaign(NAME, {"name": NAME, "relays": list(RELAYS)}, START)
    records = 0
    for first in range(0, size, CHUNK):
        count = min(CHUNK, size - first)
        rows = [
            LoadRow(i, f"r{i}@d{i % DOMAINS}.example.com", f"r{i}@d{i % DOMAINS}.example.com",
                    False, "{}")
            for i in range(first, first + count)
        ]  # fmt: skip
        store.load_chunk(row.id, rows, [], first + count, first + count)
        claimed = store.claim(row.id, "bench", START, START + 3600, count)
        outcomes, extra = [], []
        for message in claimed:
            now = START + SPAN_SECONDS * message.line / size
            relay = RELAYS[message.line % len(RELAYS)]
            if message.line % 10 == 0:
                extra.append(attempt(message.id, "deferred", relay, now - 1, 451, "4.7.1"))
            outcomes.append(final_outcome(message.id, message.line, relay, now))
        store.commit_group(row.id, [], outcomes, extra)
        records += len(outcomes) + len(extra)
    store.finish_load(row.id, START)
    store.close()
    return records


def attempt(message: int, kind: str, relay: str, now: float, code: int, status: str) -> LogRecord:
    command = "end-of-data" if kind in ("sent", "failed") else "rcpt"
    return LogRecord(
        type=kind, time=now, message=message, recipient=f"m{message}@example.com", relay=relay,
        attempt=1, command=command, code=code, status=status, text=f"{status} reply {code}",
        duration=0.01 + (message % 100) / 1000,
    )  # fmt: skip


def final_outcome(message: int, line: int, relay: str, now: float) -> Outcome:
    kind, code, status = "sent", 250, "2.0.0"
    if line % 50 == 1:
        kind, code, status = "bounced", 550, "5.1.1"
    elif line % 200 == 3:
        kind, code, status = "failed", 554, "5.6.0"
    record = attempt(message, kind, relay, now, code, status)
    return Outcome(message, kind, 1, now, now, record)


def measure(command: list[str], output: Path | None = None) -> dict[str, float]:
    """Run a child process; return its wall time in seconds and peak RSS in MB."""
    started = time.monotonic()
    with open(output or os.devnull, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert process.stderr is not None
        raise SystemExit(f"{command} failed: {process.stderr.read().decode()}")
    return {"seconds": seconds, "rss_mb": usage.ru_maxrss / 1024}


def run_size(workdir: Path, size: int, runs: int) -> dict[str, Any]:
    store = workdir / f"scale-{size}.db"
    store.unlink(missing_ok=True)
    filled = time.monotonic()
    records = fill(store, size)
    print(f"{size} messages, {records} records written in {time.monotonic() - filled:.1f} s")
    cli = [sys.executable, "-m", "mailblast.cli.main"]
    results: dict[str, list[dict[str, float]]] = {"report": [], "export": [], "status": []}
    for _ in range(runs):
        results["report"].append(
            measure([*cli, "report", NAME, "--store", str(store), "--html",
                     str(workdir / "r.html"), "--json", str(workdir / "r.json")])
        )  # fmt: skip
        results["export"].append(measure([*cli, "log", "export", NAME, "--store", str(store)]))
        results["status"].append(measure([*cli, "status", NAME, "--store", str(store), "--json"]))
    return {"size": size, "records": records, "runs": results}


def summarise(entry: dict[str, Any]) -> None:
    runs = entry["runs"]
    print(f"\n{entry['size']:,} messages, {entry['records']:,} delivery records")
    for name, values in runs.items():
        seconds = [v["seconds"] for v in values]
        rss = [v["rss_mb"] for v in values]
        print(
            f"  {name:7} median {statistics.median(seconds):6.2f} s"
            f" (min {min(seconds):.2f}, max {max(seconds):.2f}),"
            f" peak RSS median {statistics.median(rss):.0f} MB"
            f" (min {min(rss):.0f}, max {max(rss):.0f})"
        )
    ratios = [
        report["seconds"] / export["seconds"]
        for report, export in zip(runs["report"], runs["export"], strict=True)
    ]
    print(
        f"  report / export time: median {statistics.median(ratios):.2f}"
        f" (min {min(ratios):.2f}, max {max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="report-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    entries = [run_size(workdir, size, arguments.runs) for size in arguments.sizes]
    (workdir / "report_scale.json").write_text(json.dumps(entries, indent=2))
    for entry in entries:
        summarise(entry)
    print(f"\nfigures in {workdir / 'report_scale.json'}")


if __name__ == "__main__":
    main()
