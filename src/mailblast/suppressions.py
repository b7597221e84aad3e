"""The suppression list: entries made from addresses, streamed reads, CSV export and import.

An entry is keyed by the recipient list's de-duplication key (``normalise_address``), so case
and IDN spellings of one address match the same entry. Its scope is every campaign
(``EVERY_CAMPAIGN``) or one campaign of the store.

The CSV form has the columns ``address,reason,campaign,time,origin``: ``campaign`` is the scope
(empty for every campaign), ``time`` is ISO 8601 in UTC, and ``origin`` names the campaign that
caused the entry. An import needs only ``address``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from mailblast.deliverylog import FORMULA_PREFIXES, write_csv
from mailblast.recipients import normalise_address
from mailblast.store.base import EVERY_CAMPAIGN, SUPPRESSION_REASONS, Store, Suppression

CSV_COLUMNS = ("address", "reason", "campaign", "time", "origin")
PAGE_SIZE = 5000
IMPORT_CHUNK = 5000


def parse_reason(text: str) -> str:
    """Return the reason ``text`` names ("hard bounce" and "Hard_Bounce" too); raise ValueError."""
    reason = text.strip().lower().replace(" ", "-").replace("_", "-")
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"invalid reason {text!r}; use one of {', '.join(SUPPRESSION_REASONS)}")
    return reason


def make_entry(
    address: str,
    reason: str,
    campaign_id: int = EVERY_CAMPAIGN,
    origin: str | None = None,
    now: float | None = None,
) -> Suppression:
    """Build an entry from an address as written; raise ValueError when it is invalid."""
    normalised, key, _ = normalise_address(address)
    return Suppression(
        key=key,
        address=normalised,
        reason=parse_reason(reason),
        campaign_id=campaign_id,
        origin=origin,
        time=time.time() if now is None else now,
    )


def iter_suppressions(
    store: Store, campaign_id: int | None = None, reason: str | None = None
) -> Iterator[Suppression]:
    """Yield every entry in (key, campaign_id) order, reading one page at a time."""
    after: tuple[str, int] | None = None
    while True:
        page = store.list_suppressions(campaign_id, reason, after, PAGE_SIZE)
        yield from page
        if len(page) < PAGE_SIZE:
            return
        after = (page[-1].key, page[-1].campaign_id)


def format_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def parse_time(text: str) -> float:
    """Parse an ISO 8601 time; one without an offset is taken as UTC. Raise ValueError."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        message = f"invalid time {text!r}; write ISO 8601 such as 2026-01-31T12:00:00Z"
        raise ValueError(message) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def export_csv(
    store: Store, handle: TextIO, campaign_id: int | None = None, reason: str | None = None
) -> int:
    """Write the entries as CSV with CSV_COLUMNS; return how many were written."""
    rows = (
        (e.address, e.reason, e.campaign or "", format_time(e.time), e.origin or "")
        for e in iter_suppressions(store, campaign_id, reason)
    )
    return write_csv(rows, handle, CSV_COLUMNS)


@dataclass
class ImportReport:
    """Counts of one import."""

    rows: int = 0
    added: int = 0
    existing: int = 0  # rows whose address was already listed in that scope
    rejected: int = 0


class CsvImport:
    """Reads a suppression CSV in chunks and adds its valid rows; each bad row is reported.

    ``campaign_ids`` maps a campaign name of the ``campaign`` column to its id, or None when
    the campaign is not in the store. ``on_reject(line, message)`` is called for each bad row.
    """

    def __init__(
        self,
        store: Store,
        campaign_ids: Callable[[str], int | None],
        on_reject: Callable[[int, str], None],
        default_reason: str = "manual",
        default_campaign: int = EVERY_CAMPAIGN,
    ) -> None:
        self.store = store
        self.campaign_ids = campaign_ids
        self.on_reject = on_reject
        self.default_reason = default_reason
        self.default_campaign = default_campaign
        self.report = ImportReport()

    def run(self, handle: TextIO, path: str) -> ImportReport:
        """Import every row of an open CSV file; raise ValueError when the header is unusable."""
        reader = csv.DictReader(handle)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if "address" not in columns:
            raise ValueError(
                f"{path} line 1: the header has no 'address' column; the columns are"
                f" {','.join(CSV_COLUMNS)} and only address is required"
            )
        reader.fieldnames = columns
        chunk: list[Suppression] = []
        for row in self._rows(reader):
            entry = self._entry(row, reader.line_num)
            if entry is not None:
                chunk.append(entry)
            if len(chunk) >= IMPORT_CHUNK:
                self._add(chunk)
                chunk = []
        self._add(chunk)
        return self.report

    def _rows(self, reader: csv.DictReader[str]) -> Iterator[dict[str, str | None]]:
        """Yield each row, rejecting a row the csv module cannot parse and reading on."""
        rows = iter(reader)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as error:
                self.report.rows += 1
                self.report.rejected += 1
                # DictReader copies line_num only after a row parses, so read the inner reader's.
                self.on_reject(reader.reader.line_num, f"unreadable CSV: {error}")
                continue
            self.report.rows += 1
            yield row

    def _entry(self, row: dict[str, str | None], line: int) -> Suppression | None:
        try:
            return self._parse(row)
        except ValueError as error:
            self.report.rejected += 1
            self.on_reject(line, str(error))
            return None

    def _parse(self, row: dict[str, str | None]) -> Suppression:
        address = _cell(row, "address")
        if not address:
            raise ValueError("the address is empty")
        campaign_name = _cell(row, "campaign")
        campaign_id = self.default_campaign
        if campaign_name:
            found = self.campaign_ids(campaign_name)
            if found is None:
                raise ValueError(
                    f"campaign {campaign_name!r} is not in the store; leave the cell empty"
                    " to suppress the address for every campaign"
                )
            campaign_id = found
        moment = _cell(row, "time")
        try:
            return make_entry(
                address,
                _cell(row, "reason") or self.default_reason,
                campaign_id,
                _cell(row, "origin") or None,
                parse_time(moment) if moment else None,
            )
        except ValueError as error:
            shown = address if len(address) <= 80 else address[:80] + "…"
            raise ValueError(f"{shown!r}: {error}") from error

    def _add(self, chunk: list[Suppression]) -> None:
        added = self.store.add_suppressions(chunk) if chunk else 0
        self.report.added += added
        self.report.existing += len(chunk) - added


def _cell(row: dict[str, str | None], column: str) -> str:
    """Return a cell stripped, undoing the apostrophe that an export put before a formula."""
    value = (row.get(column) or "").strip()
    if value.startswith("'") and value[1:].startswith(FORMULA_PREFIXES):
        return value[1:]
    return value
