"""Delivery log export: JSON Lines and spreadsheet-safe CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would run as a formula with an apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(
    records: Iterable[Sequence[Any] | dict[str, Any]], handle: TextIO, columns: Sequence[str]
) -> int:
    """Write a header and one row per record (a dict by column, or a sequence); return the count."""
    writer = csv.writer(handle, lineterminator="\r\n")
    writer.writerow(columns)
    count = 0
    for record in records:
        values = [record.get(c) for c in columns] if isinstance(record, dict) else record
        writer.writerow([neutralise(value) for value in values])
        count += 1
    return count


def write_jsonl(records: Iterable[dict[str, Any]], handle: TextIO) -> int:
    count = 0
    for record in records:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
