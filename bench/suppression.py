"""Measure what the suppression check costs the claim, and how fast the list moves in and out.

One store gets ``--messages`` queued messages and ``--suppressions`` suppression entries, of
which ``--matching`` match queued addresses. Each run then measures:

- claiming every message in batches of 500 with the store's claim, which flags suppressed
  addresses, against the same claim without that lookup (the reference), both on the same
  store, reset between the two, in alternating order;
- one ``suppressed_claims`` poll with 1,000 messages claimed (the engine runs it once a second);
- ``suppressions.export_csv`` of every entry to a file, and ``CsvImport`` of that file into a
  fresh store.

Usage, from the repository root::

    .venv/bin/python bench/suppression.py [--messages 200000] [--suppressions 1000000]
        [--matching 2000] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mailblast.store.base import ClaimedMessage, LoadRow, Suppression
from mailblast.store.sqlite import SQLiteStore
from mailblast.suppressions import CsvImport, export_csv

BATCH = 500
CHUNK = 5000
# The claim statement alone, without the lookup of suppressed keys that follows it.
REFERENCE_CLAIM = (
    "UPDATE messages SET state = 'sending', lease_owner = ?, lease_until = ?"
    " WHERE id IN (SELECT id FROM messages WHERE campaign_id = ?"
    " AND state IN ('queued', 'deferred') AND due_at <= ?"
    " ORDER BY due_at, id LIMIT ?)"
    " RETURNING id, line, address, key, smtputf8, fields, attempts, first_attempt_at"
)


def build(path: Path, messages: int, suppressions: int, matching: int) -> int:
    store = SQLiteStore(path)
    campaign = store.upsert_campaign("bench", {"name": "bench"}, 1.0).id
    for start in range(0, messages, CHUNK):
        rows = [
            LoadRow(i + 2, f"guest{i}@example.com", f"guest{i}@example.com", False, "{}")
            for i in range(start, min(start + CHUNK, messages))
        ]
        store.load_chunk(campaign, rows, [], start + len(rows) + 1, start + len(rows))
    entries = [entry(f"guest{i * (messages // matching)}@example.com") for i in range(matching)]
    entries += [entry(f"other{i}@example.org") for i in range(suppressions - matching)]
    for start in range(0, len(entries), CHUNK):
        store.add_suppressions(entries[start : start + CHUNK])
    store.close()
    return campaign


def entry(address: str) -> Suppression:
    return Suppression(address, address, "manual", 0, "bench", 1.0)


def reset(store: SQLiteStore) -> None:
    with store.db:
        store.db.execute("UPDATE messages SET state = 'queued', lease_owner = NULL")


def claim_all(store: SQLiteStore, campaign: int, reference: bool) -> tuple[float, int]:
    started = time.perf_counter()
    flagged = 0
    while True:
        if reference:
            with store.db:
                rows = store.db.execute(REFERENCE_CLAIM, ("b", 9e9, campaign, 9e9, BATCH))
                claimed = sorted((ClaimedMessage(*row) for row in rows), key=lambda m: m.id)
        else:
            claimed = store.claim(campaign, "b", 9e9, 9e9, BATCH)
            flagged += sum(message.suppressed for message in claimed)
        if not claimed:
            return time.perf_counter() - started, flagged


def poll_seconds(store: SQLiteStore, campaign: int) -> float:
    reset(store)
    store.claim(campaign, "poller", 9e9, 9e9, 1000)
    started = time.perf_counter()
    store.suppressed_claims(campaign, "poller")
    return time.perf_counter() - started


def move_list(store: SQLiteStore, workdir: Path) -> tuple[float, float, int]:
    csv_path = workdir / "export.csv"
    started = time.perf_counter()
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        count = export_csv(store, handle)
    exported = time.perf_counter() - started

    target = SQLiteStore(workdir / "import.db")
    started = time.perf_counter()
    with csv_path.open(encoding="utf-8", newline="") as handle:
        CsvImport(target, lambda name: None, lambda line, text: None).run(handle, str(csv_path))
    imported = time.perf_counter() - started
    target.close()
    (workdir / "import.db").unlink()
    return exported, imported, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--suppressions", type=int, default=1_000_000)
    parser.add_argument("--matching", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    arguments = parser.parse_args()
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="suppression-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "bench.db"
    path.unlink(missing_ok=True)
    campaign = build(path, arguments.messages, arguments.suppressions, arguments.matching)
    store = SQLiteStore(path)

    results: dict[str, list[float]] = {"claim": [], "reference": [], "poll": []}
    results.update({"export": [], "import": []})
    for run in range(arguments.runs):
        for reference in (run % 2 == 1, run % 2 == 0):
            reset(store)
            seconds, flagged = claim_all(store, campaign, reference)
            results["reference" if reference else "claim"].append(seconds)
            if not reference:
                assert flagged == arguments.matching, flagged
        results["poll"].append(poll_seconds(store, campaign))
        exported, imported, count = move_list(store, workdir)
        results["export"].append(exported)
        results["import"].append(imported)
    store.close()

    print(f"{arguments.messages} messages, {count} suppressions, {arguments.runs} runs")
    for name, values in results.items():
        print(
            f"{name:10} median {statistics.median(values):.3f} s"
            f"  min {min(values):.3f}  max {max(values):.3f}"
        )
    ratio = statistics.median(results["claim"]) / statistics.median(results["reference"])
    print(f"claim / reference: {ratio:.2f}")


if __name__ == "__main__":
    main()
