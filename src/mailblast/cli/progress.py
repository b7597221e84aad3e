"""Live progress while sending, and the summary printed at the end.

On a terminal a rich progress bar shows the sent, bounced and failed messages, the deferred
attempts, the rate and the ETA. Otherwise (a log file, CI) a plain line is logged every
``LOG_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailblast.load import LoadReport
from mailblast.store.base import FINAL_STATES
from mailblast.units import format_duration

if TYPE_CHECKING:
    from mailblast.blast import Summary
    from mailblast.engine import Engine, RunStats

logger = logging.getLogger("mailblast.engine")

# One console for the progress bar and for log lines, so that logs print above the bar.
STDERR = Console(stderr=True)
REFRESH_INTERVAL = 0.5
LOG_INTERVAL = 10.0
FLEET_COUNTS_INTERVAL = 2.0  # how often a run on a shared store reads the campaign's counts
DONE_STATES = FINAL_STATES | {"unknown"}


class ProgressDisplay:
    """Follows a running engine and shows its progress until the run stops."""

    def __init__(self, name: str, interactive: bool | None = None) -> None:
        self.name = name
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.task: asyncio.Task[None] | None = None
        self.progress: Progress | None = None

    def attach(self, engine: Engine) -> None:
        self.task = asyncio.get_running_loop().create_task(self._follow(engine))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    async def _follow(self, engine: Engine) -> None:
        self.name = engine.campaign.name  # a worker started without --campaign learns it here
        counts = await engine._db(engine.store.counts, engine.row.id)
        total = sum(counts.values())
        done_before = _done(counts)
        # On a shared store other runs send the same campaign: show the campaign's counts.
        fleet = engine.store.shared
        started = time.monotonic()
        last_log = last_counts = started
        bar_task = None
        if self.interactive and total:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=STDERR,
            )
            self.progress.start()
            bar_task = self.progress.add_task(self.name, total=total, detail="")
        while not engine.stopping.is_set():
            await asyncio.sleep(REFRESH_INTERVAL)
            now = time.monotonic()
            if fleet and now - last_counts >= FLEET_COUNTS_INTERVAL:
                counts = await engine._db(engine.store.counts, engine.row.id)
                last_counts = now
            if fleet:
                done = _done(counts)
                line = _fleet_line(engine.stats, counts, total, done_before, now - started)
            else:
                done = done_before + sum(engine.stats.outcomes[s] for s in DONE_STATES)
                line = _status_line(engine.stats, total, done_before, now - started)
            if self.progress is not None and bar_task is not None:
                self.progress.update(bar_task, completed=done, detail=line)
            elif now - last_log >= LOG_INTERVAL:
                logger.info("campaign %s: %s", self.name, line)
                last_log = now


def _done(counts: dict[str, int]) -> int:
    return sum(n for state, n in counts.items() if state in DONE_STATES)


def _fleet_line(
    stats: RunStats, counts: dict[str, int], total: int, done_before: int, elapsed: float
) -> str:
    """Describe the campaign's progress over all its runs from the store's counts."""
    done = _done(counts)
    rate = (done - done_before) / elapsed if elapsed > 0 else 0.0
    remaining = max(0, total - done)
    eta = format_duration(remaining / rate) if rate > 0 and remaining else "-"
    parts = [f"{done}/{total} final (all runs)"]
    parts += [f"{state} {counts.get(state, 0)}" for state in ("sent", "deferred", "bounced")]
    parts += [f"failed {counts.get('failed', 0)}", f"{rate:.0f} msg/s", f"ETA {eta}"]
    parts.append(f"this run sent {stats.outcomes['sent']}")
    return ", ".join(parts)


def _status_line(stats: RunStats, total: int, done_before: int, elapsed: float) -> str:
    outcomes = stats.outcomes
    done = done_before + sum(outcomes[s] for s in DONE_STATES)
    rate = outcomes["sent"] / elapsed if elapsed > 0 else 0.0
    remaining = max(0, total - done)
    eta = format_duration(remaining / rate) if rate > 0 and remaining else "-"
    parts = [
        f"{done}/{total} final",
        f"sent {outcomes['sent']}",
        # Attempts deferred in this run: a message retried twice counts twice.
        f"deferrals {outcomes['deferred']}",
        f"bounced {outcomes['bounced']}",
        f"failed {outcomes['failed']}",
        f"{rate:.0f} msg/s",
        f"ETA {eta}",
    ]
    if outcomes["suppressed"]:
        parts.insert(5, f"suppressed {outcomes['suppressed']}")
    if stats.next_due and remaining:
        wait = stats.next_due - time.time()
        if wait > 0:
            parts.append(f"next retry in {format_duration(wait)}")
    return ", ".join(parts)


def print_load(report: LoadReport) -> None:
    print(
        f"loaded {report.rows} rows in {report.seconds:.1f}s: {report.queued} queued,"
        f" {report.rejected} rejected, {report.duplicates} duplicates,"
        f" {report.suppressed} suppressed"
    )
    if report.reject_file:
        print(f"rejected rows with line numbers and reasons: {report.reject_file}")


def print_summary(summary: Summary, stats: RunStats | None = None) -> None:
    """Print counts by state, per relay messages and rate, and elapsed time."""
    console = Console(highlight=False)
    reason = f" ({summary.status_reason})" if summary.status_reason else ""
    console.print(f"campaign {summary.name}: {summary.status}{reason}")
    console.print(_states_table(summary))

    load = summary.load
    console.print(
        f"list: {load['rows']} rows read, {load['rejected']} rejected,"
        f" {load['duplicates']} duplicates, {load['suppressed']} suppressed"
    )
    if summary.relays:
        console.print(_relays_table(summary))
    if summary.elapsed is not None:
        console.print(f"elapsed: {format_duration(summary.elapsed)}")

    for note in _notes(summary, stats):
        console.print(note)


def _states_table(summary: Summary) -> Table:
    table = Table(title="messages by state", show_edge=False)
    table.add_column("state")
    table.add_column("messages", justify="right")
    for state, count in summary.counts.items():
        if count:
            table.add_row(state, str(count))
    table.add_row("total", str(summary.total))
    return table


def _relays_table(summary: Summary) -> Table:
    table = Table(title="relays", show_edge=False)
    # "deferrals" counts attempts that were deferred, so one message may count several times.
    for column in ("relay", "sent", "deferrals", "bounced", "failed", "msg/s"):
        table.add_column(column, justify="left" if column == "relay" else "right")
    for name, totals in sorted(summary.relays.items()):
        counts = (str(totals.get(kind, 0)) for kind in ("sent", "deferred", "bounced", "failed"))
        table.add_row(name, *counts, f"{totals.get('rate', 0.0):.0f}")
    return table


def _notes(summary: Summary, stats: RunStats | None) -> list[str]:
    notes = []
    if summary.counts.get("deferred") and summary.next_due:
        wait = max(0.0, summary.next_due - time.time())
        notes.append(
            f"{summary.counts['deferred']} deferred; next retry due in {format_duration(wait)}"
        )
    if summary.counts.get("unknown"):
        notes.append(
            f"{summary.counts['unknown']} unknown: the relay may have accepted them; resend with"
            f" 'mailblast retry {summary.name} --unknown' only if duplicates are acceptable"
        )
    if stats is not None and stats.stop_reason:
        notes.append(f"this run stopped: {stats.stop_reason}")
    return notes
