"""Stream a recipient list into the store: validate, de-duplicate, drop suppressed, queue.

Rows are committed in chunks together with the last list line they reach, so a load that is
killed resumes after that line. De-duplication is the store's unique key on the normalised
address, so memory does not grow with the list. Rejected, duplicate and suppressed rows become
delivery records; the reject file is written from them when the load ends.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailblast.config import Campaign
from mailblast.deliverylog import write_csv
from mailblast.recipients import Recipient, Rejected, read_recipients
from mailblast.store.base import CampaignRow, LoadRow, LogRecord
from mailblast.store.sql import SQLStore

logger = logging.getLogger("mailblast.load")

CHUNK_ROWS = 5000
REJECT_COLUMNS = ("line", "type", "address", "reason")


@dataclass
class LoadReport:
    """Counts of one load (this run's rows only when a killed load resumed)."""

    rows: int = 0
    queued: int = 0
    rejected: int = 0
    duplicates: int = 0
    suppressed: int = 0
    seconds: float = 0.0
    reject_file: str | None = None


def reject_file_path(campaign: Campaign) -> str:
    if campaign.recipients.reject_file:
        return campaign.recipients.reject_file
    list_path = Path(campaign.recipients.path)
    return str(list_path.with_name(list_path.stem + ".rejects.csv"))


def load_list(
    store: SQLStore,
    campaign: Campaign,
    row: CampaignRow,
    progress: Callable[[LoadReport], None] | None = None,
) -> LoadReport:
    """Queue every acceptable row of the campaign's list that an earlier load did not reach."""
    started = time.monotonic()
    report = LoadReport()
    rows: list[LoadRow] = []
    rejected: list[LogRecord] = []
    last_line = row.load_line

    for item in read_recipients(campaign.recipients):
        if item.line <= row.load_line:
            continue
        report.rows += 1
        last_line = item.line
        if isinstance(item, Rejected):
            rejected.append(_rejected_record(item))
        else:
            rows.append(_load_row(item))
        if len(rows) + len(rejected) >= CHUNK_ROWS:
            _commit(store, row, rows, rejected, last_line, report)
            rows, rejected = [], []
            if progress:
                progress(report)

    _commit(store, row, rows, rejected, last_line, report)
    store.finish_load(row.id, time.time())
    report.reject_file = _write_reject_file(store, campaign, row)
    report.seconds = time.monotonic() - started

    logger.info(
        "campaign %s: loaded %d rows: %d queued, %d rejected, %d duplicates, %d suppressed",
        campaign.name,
        report.rows,
        report.queued,
        report.rejected,
        report.duplicates,
        report.suppressed,
    )
    return report


def _load_row(item: Recipient) -> LoadRow:
    return LoadRow(
        line=item.line,
        address=item.address,
        key=item.key,
        smtputf8=item.smtputf8,
        fields=json.dumps(item.fields, ensure_ascii=False, separators=(",", ":")),
    )


def _rejected_record(item: Rejected) -> LogRecord:
    return LogRecord(
        type="rejected", time=time.time(), recipient=item.value, text=item.reason, line=item.line
    )


def _commit(
    store: SQLStore,
    row: CampaignRow,
    rows: list[LoadRow],
    rejected: list[LogRecord],
    last_line: int,
    report: LoadReport,
) -> None:
    result = store.load_chunk(row.id, rows, rejected, last_line, row.rows_read + report.rows)
    report.queued += result.queued
    report.rejected += len(rejected)
    report.duplicates += len(result.duplicates)
    report.suppressed += len(result.suppressed)


def _write_reject_file(store: SQLStore, campaign: Campaign, row: CampaignRow) -> str | None:
    """Write every row the load did not queue, with line and reason; None when there are none."""
    path = reject_file_path(campaign)
    records = (
        (record["line"], record["type"], record["recipient"] or "", record["text"])
        for record in store.iter_log(row.id)
        if record["type"] in ("rejected", "suppressed")
    )
    with open(path, "w", encoding="utf-8", newline="") as handle:
        written = write_csv(records, handle, REJECT_COLUMNS)
    if not written:
        Path(path).unlink()
        return None
    return path
