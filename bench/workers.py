"""Measure workers on a PostgreSQL store: one against two processes, and claims per second.

Each run loads a generated campaign into a fresh schema of a PostgreSQL database, then starts
``mailblast worker`` processes against Postfix ``smtp-sink`` relays on 127.0.0.1 until the
campaign is done: once with one worker, once with two (in alternating order). Send throughput is
the sent count divided by the time from the first to the last ``sent`` record in the store.

Then it measures the database alone: claim transactions per second (``claim`` of
``--batch-size`` messages, the engine's default batch) and recorded outcomes per second (group
commits of 100 outcomes), each with 1 and 4 concurrent connections on a fresh schema.

Usage, from the repository root::

    .venv/bin/python bench/workers.py [--recipients 20000] [--relays 2]
        [--connections-per-relay 8] [--runs 3] [--database URL] [--workdir DIR]

The database URL must use trust or PGPASSWORD authentication; the default is the test database
``postgresql://postgres@127.0.0.1:5432/test``. Figures go to ``WORKDIR/workers.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from throughput import (
    CAMPAIGN_NAME,
    Sink,
    ensure_postfix_tools,
    machine,
    write_campaign,
    write_list,
    write_templates,
)

from mailblast import blast
from mailblast.config import load_campaign
from mailblast.store import open_store
from mailblast.store.base import LoadRow, LogRecord, Outcome
from mailblast.store.postgres import PostgresStore

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
CLAIM_MESSAGES = 100_000
OUTCOME_GROUP = 100
DATABASE_SECONDS = 10.0


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000, help="list size (rows)")
    parser.add_argument("--relays", type=int, default=2, help="smtp-sink processes (relays)")
    parser.add_argument(
        "--connections-per-relay", type=int, default=8, help="max_connections of each relay"
    )
    parser.add_argument("--messages-per-connection", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500, help="messages per claim")
    parser.add_argument("--runs", type=int, default=3, help="measured runs")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="PostgreSQL URL")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    return parser.parse_args(argv)


@contextmanager
def fresh_schema(database: str) -> Iterator[str]:
    """Yield a store URL on a new schema of the database; drop the schema afterwards."""
    schema = f"mailblast_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in database else "?"
        try:
            yield f"{database}{separator}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def load(directory: Path, workdir: Path, sinks: list[Sink], url: str, args: Any) -> None:
    campaign_file = write_campaign(directory, workdir, [s.port for s in sinks], args)
    text = campaign_file.read_text(encoding="utf-8")
    store_line = f'store = "{directory / "store.db"}"'
    campaign_file.write_text(text.replace(store_line, f'store = "{url}"'), encoding="utf-8")
    campaign = load_campaign(campaign_file)
    store, row, _ = blast.prepare(campaign)
    with store:
        blast.load_if_needed(store, campaign, row)


def send_with_workers(url: str, workers: int, directory: Path) -> float:
    """Run ``workers`` worker processes until the campaign is done; return msg/s sent."""
    command = [str(Path(sys.executable).parent / "mailblast"), "worker", "--store", url]
    processes = []
    for number in range(workers):
        log = open(directory / f"worker{workers}-{number}.log", "wb")  # noqa: SIM115
        processes.append((subprocess.Popen(command, stdout=log, stderr=log), log))
    for process, log in processes:
        status = process.wait()
        log.close()
        if status != 0:
            raise SystemExit(f"error: a worker exited with status {status}; see {directory}")
    with open_store(url) as store:
        count, first, last = store.db.execute(
            "SELECT count(*), min(time), max(time) FROM delivery_log WHERE type = 'sent'"
        ).fetchone()
    return float(count / (last - first))


def measure_send(
    args: argparse.Namespace, workdir: Path, sinks: list[Sink]
) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for run in range(args.runs):
        order = (1, 2) if run % 2 == 0 else (2, 1)
        for workers in order:
            directory = workdir / f"run-{run}-{workers}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            with fresh_schema(args.database) as url:
                load(directory, workdir, sinks, url, args)
                rate = send_with_workers(url, workers, directory)
            rates[workers].append(rate)
            print(f"run {run + 1}: {workers} worker(s): {rate:,.0f} msg/s", flush=True)
    return rates


# The database alone


def queue_messages(url: str, count: int) -> int:
    with open_store(url) as store:
        campaign = store.upsert_campaign(CAMPAIGN_NAME, {}, time.time()).id
        for start in range(0, count, 5000):
            rows = [
                LoadRow(i + 2, f"r{i}@example.com", f"r{i}@example.com", False, "{}")
                for i in range(start, min(count, start + 5000))
            ]
            store.load_chunk(campaign, rows, [], start + len(rows) + 1, start + len(rows))
        return campaign


def in_threads(url: str, clients: int, work: Callable[[PostgresStore, int], int]) -> float:
    """Run ``work`` on ``clients`` connections at once; return its operations per second."""
    stores = [PostgresStore(url) for _ in range(clients)]
    done = [0] * clients

    def run(number: int) -> None:
        done[number] = work(stores[number], number)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for store in stores:
        store.close()
    return sum(done) / elapsed


def claims_per_second(database: str, clients: int, batch: int) -> float:
    with fresh_schema(database) as url:
        campaign = queue_messages(url, CLAIM_MESSAGES)

        def claim(store: PostgresStore, number: int) -> int:
            claims = 0
            deadline = time.monotonic() + DATABASE_SECONDS
            while time.monotonic() < deadline:
                if not store.claim(campaign, f"run-{number}", time.time(), time.time() + 60, batch):
                    break
                claims += 1
            return claims

        return in_threads(url, clients, claim)


def outcomes_per_second(database: str, clients: int) -> float:
    with fresh_schema(database) as url:
        campaign = queue_messages(url, CLAIM_MESSAGES)

        def record(store: PostgresStore, number: int) -> int:
            owner = f"run-{number}"
            recorded = 0
            deadline = time.monotonic() + DATABASE_SECONDS
            while time.monotonic() < deadline:
                claimed = store.claim(campaign, owner, time.time(), time.time() + 60, OUTCOME_GROUP)
                if not claimed:
                    break
                ids = [m.id for m in claimed]
                store.commit_group(campaign, ids, [], owner=owner)  # in-flight marks
                now = time.time()
                outcomes = [
                    Outcome(i, "sent", 1, now, now, LogRecord("sent", now, i, relay="sink1"))
                    for i in ids
                ]
                store.commit_group(campaign, [], outcomes, owner=owner)
                recorded += len(ids)
            return recorded

        return in_threads(url, clients, record)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f} – {max(values):,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    ensure_postfix_tools()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mailblast-workers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_list(workdir / "recipients.csv", args.recipients)
    write_templates(workdir)
    sinks = [Sink(max_sessions=4 * args.connections_per_relay) for _ in range(args.relays)]
    try:
        rates = measure_send(args, workdir, sinks)
    finally:
        for sink in sinks:
            sink.stop()
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    database = {
        f"claims/s, batch {args.batch_size}, {n} connection(s)": [
            claims_per_second(args.database, n, args.batch_size) for _ in range(args.runs)
        ]
        for n in (1, 4)
    }
    database.update(
        {
            f"outcomes/s, groups of {OUTCOME_GROUP}, {n} connection(s)": [
                outcomes_per_second(args.database, n) for _ in range(args.runs)
            ]
            for n in (1, 4)
        }
    )
    figures = {"machine": machine(), "arguments": {**vars(args), "workdir": str(workdir)}}
    figures.update({"one_worker": rates[1], "two_workers": rates[2], "ratio": ratios, **database})
    (workdir / "workers.json").write_text(json.dumps(figures, indent=2, default=str))
    print(f"one worker: {summary(rates[1])} msg/s")
    print(f"two workers: {summary(rates[2])} msg/s")
    print(f"two / one: {statistics.median(ratios):.2f} ({min(ratios):.2f} – {max(ratios):.2f})")
    for label, values in database.items():
        print(f"{label}: {summary(values)}")
    print(f"figures: {workdir / 'workers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
