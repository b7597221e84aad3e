"""Wall time of one campaign sent by ``mailblast send`` alone, and by ``send`` with two workers.

Each run loads a small campaign into a fresh schema of a PostgreSQL database and sends it to one
in-process sink on 127.0.0.1 (``mailblast.sink.ThreadedSink``). The figure is the time from
starting the processes until the last one exits, and the messages sent in each second, which
show the seconds in which no process sent anything.

    .venv/bin/python bench/worker_idle.py --messages 6000 --batch-size 50 --runs 3
    .venv/bin/python bench/worker_idle.py --messages 400 --batch-size 50 --rate 15/s --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import psycopg
from workers import DEFAULT_DATABASE, fresh_schema

from mailblast.errors import MailblastError
from mailblast.sink import ThreadedSink
from mailblast.store import open_store


def write_files(directory: Path, port: int, args: argparse.Namespace) -> Path:
    """Write the list, the template and the campaign; return the campaign file."""
    with open(directory / "list.csv", "w", encoding="utf-8") as handle:
        handle.write("email,first_name\n")
        handle.writelines(f"guest{i}@example.com,Guest{i}\n" for i in range(args.messages))
    (directory / "message.txt").write_text("Hello {{ first_name }},\n\nSee you there.\n")
    rate = f'rate = "{args.rate}"\n' if args.rate else ""
    campaign = directory / "campaign.toml"
    campaign.write_text(
        f"""[campaign]
name = "idle-bench"
from = "Events Team <events@example.com>"
envelope_sender = "bounces@example.com"
subject = "Hello"
text = "message.txt"
store = "unused.db"

[recipients]
path = "list.csv"

[sending]
batch_size = {args.batch_size}

[[relay]]
name = "sink"
host = "127.0.0.1"
port = {port}
tls = "none"
max_connections = {args.connections}
{rate}""",
        encoding="utf-8",
    )
    return campaign


def start(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_campaign(url: str) -> None:
    """Return once ``send`` has saved the campaign, so that a worker finds it."""
    while True:
        try:
            with open_store(url) as store:
                if store.list_campaigns():
                    return
        except (psycopg.Error, MailblastError):
            pass  # 'send' is still creating the store's tables
        time.sleep(0.05)


def run_once(url: str, workers: int, args: argparse.Namespace) -> tuple[float, list[int]]:
    """Send the campaign with ``send`` and ``workers`` workers; return seconds, sent a second."""
    sink = ThreadedSink("127.0.0.1", 0)
    sink.start()
    try:
        with tempfile.TemporaryDirectory() as name:
            directory = Path(name)
            campaign = write_files(directory, sink.port, args)
            program = str(Path(sys.executable).parent / "mailblast")
            started = time.time()
            processes = [start([program, "send", str(campaign), "--store", url])]
            wait_for_campaign(url)
            processes += [start([program, "worker", "--store", url]) for _ in range(workers)]
            if any(p.wait() != 0 for p in processes):
                raise SystemExit("error: a process failed")
            seconds = time.time() - started
    finally:
        sink.stop()
    with open_store(url) as store:
        times = store.db.execute("SELECT time FROM delivery_log WHERE type = 'sent'").fetchall()
    if len(times) != args.messages:
        raise SystemExit(f"error: {len(times)} of {args.messages} messages sent")
    per_second = Counter(int(t - started) for (t,) in times)
    return seconds, [per_second[s] for s in range(int(seconds) + 1)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--connections", type=int, default=4, help="max_connections")
    parser.add_argument("--rate", default=None, help="the relay's rate, for example 15/s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    args = parser.parse_args(argv)
    results: dict[int, list[float]] = {0: [], 2: []}
    for run in range(args.runs):
        for workers in (0, 2):
            with fresh_schema(args.database) as url:
                seconds, per_second = run_once(url, workers, args)
            results[workers].append(seconds)
            idle = sum(1 for n in per_second[1:-1] if n == 0)
            print(
                f"run {run + 1}, send + {workers} workers: {seconds:.1f}s,"
                f" idle seconds {idle}, per second {per_second}",
                flush=True,
            )
    for workers, values in results.items():
        print(
            f"send + {workers} workers: median {statistics.median(values):.1f}s,"
            f" min {min(values):.1f}s, max {max(values):.1f}s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
