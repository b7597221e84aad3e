"""Stream a recipient list (CSV or JSON Lines) into accepted recipients and rejected rows.

The reader never keeps the whole list in memory. It decodes incrementally, parses one record at
a time and keeps only the physical lines of the record being parsed. It keeps no set of seen
addresses either, because de-duplication is the store's job (a UNIQUE constraint on
:attr:`Recipient.key`).

A file whose name ends in ``.jsonl`` or ``.ndjson`` is JSON Lines; any other file is CSV.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import unicodedata
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from mailblast.config import RecipientSettings
from mailblast.errors import LoadError

DEFAULT_ENCODING = "utf-8-sig"  # UTF-8 with or without a byte order mark
JSONL_SUFFIXES = (".jsonl", ".ndjson")
DELIMITERS = (",", ";", "\t", "|")

# csv.reader fails on any field over csv.field_size_limit(), 128 KiB by default. The reader
# raises that process-wide limit to at least this value (it never lowers it), and _LineSource
# rejects longer records before passing them to the csv module.
CSV_FIELD_SIZE_LIMIT = 64 * 1024 * 1024
MIN_RECORD_LIMIT = 16 * 1024 * 1024
PREVIEW_LENGTH = 200

# Zero-width characters that copy and paste leaves around addresses. str.strip() keeps them
# because Unicode does not class them as whitespace.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
# C0 and C1 control characters and DEL, except TAB, LF and CR.
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
ENCODING_FIX = 'set encoding = "cp1252" (or the file\'s encoding) under [recipients]'

# Plain ASCII addresses that email-validator accepts unchanged except for the case of the
# domain. Anything this pattern does not match goes through email-validator.
FAST_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z"
)
# email-validator 2.4 rejects these top-level names (its SPECIAL_USE_DOMAIN_NAMES).
SPECIAL_USE_TLDS = frozenset({"arpa", "invalid", "local", "localhost", "onion", "test"})
MAX_ADDRESS_LENGTH = 254  # email-validator's EMAIL_MAX_LENGTH, in UTF-8 bytes


@dataclass(frozen=True, slots=True)
class Recipient:
    """A row whose address is valid, with the address normalised for sending."""

    line: int  # physical line where the record starts (the header is line 1)
    address: str  # local part as written, "@", A-label domain (U-label if smtputf8)
    key: str  # de-duplication key: casefolded NFC local part, "@", lower-case A-label domain
    smtputf8: bool  # the local part is not ASCII, so the relay must offer SMTPUTF8
    fields: dict[str, str]  # every column, trimmed, with `address` in the email column


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row that cannot be sent to, with the reason and how to fix it."""

    line: int
    reason: str
    value: str  # the raw email cell, or the raw record text, cut to PREVIEW_LENGTH characters


@dataclass(frozen=True, slots=True)
class _Header:
    columns: list[str]
    email_index: int
    delimiter: str


class _RecordTooLong(Exception):
    """The record being read has grown past the record limit."""


def read_recipients(settings: RecipientSettings) -> Iterator[Recipient | Rejected]:
    """Yield each row of the list as a Recipient or a Rejected, in file order.

    Blank lines and CSV rows whose cells are all blank are skipped. Raises LoadError when the
    list cannot be read at all: missing file, undecodable bytes, empty file, or a CSV header
    without the email column or with duplicate or unnamed columns. The file is opened on the
    first next(), so that is where these errors appear.

    NOTE: the decoder works a chunk (8 KiB) ahead of the parser, so a decoding error is raised
    before the rows just ahead of the bad byte have been yielded.
    """
    with _TextFile.open(settings) as text:
        if text.is_jsonl:
            yield from _read_jsonl(text, settings)
        else:
            yield from _read_csv(text, settings)


def list_columns(settings: RecipientSettings) -> list[str]:
    """Return the CSV header columns, or the keys of the first JSON object in a JSONL list.

    Raises LoadError as read_recipients does, and when a JSONL list contains no JSON object.
    """
    with _TextFile.open(settings) as text:
        source = _LineSource(text, _record_limit(settings))
        if not text.is_jsonl:
            return _read_header(source, settings, text.path).columns
        for _, line in _jsonl_lines(source):
            if line is None:
                continue
            try:
                parsed = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(parsed, dict):
                return list(parsed)
    raise LoadError(f"{settings.path} contains no JSON object; write one JSON object per line")


def normalise_address(value: str) -> tuple[str, str, bool]:
    """Validate one address (syntax only, no DNS) and return (address, key, smtputf8).

    Raises ValueError with email-validator's explanation when the address is invalid.
    """
    candidate = _trim_address(value)
    if not candidate:
        raise ValueError("the address is empty")

    fast = _normalise_plain_ascii(candidate)
    if fast is not None:
        return fast
    return _normalise_validated(candidate)


def _normalise_validated(candidate: str) -> tuple[str, str, bool]:
    try:
        validated = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from error

    # validate_email rejects quoted local parts and display names by default, so a valid
    # address contains exactly one "@".
    local_part = candidate.partition("@")[0]
    domain = validated.domain if validated.smtputf8 else validated.ascii_domain
    key = _dedup_key(validated.local_part, validated.ascii_domain)
    return f"{local_part}@{domain}", key, validated.smtputf8


def _normalise_plain_ascii(candidate: str) -> tuple[str, str, bool] | None:
    """Normalise an ASCII dot-atom address without email-validator, or return None.

    Matches only addresses that email-validator also accepts with the same result, which a
    property test checks. None sends the address through email-validator.
    """
    if len(candidate) > MAX_ADDRESS_LENGTH or not FAST_ADDRESS.match(candidate):
        return None

    local_part, _, domain = candidate.partition("@")
    domain = domain.lower()
    # email-validator decodes "xn--" (Punycode) labels and rejects other labels with "--" in
    # the third and fourth place, so any "--" goes the slow way.
    if "--" in domain or domain.rpartition(".")[2] in SPECIAL_USE_TLDS:
        return None

    return f"{local_part}@{domain}", _dedup_key(local_part, domain), False


def _dedup_key(local_part: str, ascii_domain: str) -> str:
    # NFC again after casefold(), because casefolding can produce decomposed characters.
    folded = unicodedata.normalize("NFC", local_part.casefold())
    return f"{folded}@{ascii_domain.lower()}"


def _trim_address(value: str) -> str:
    """Strip whitespace, NBSP and zero-width characters from both ends, in any mix."""
    while True:
        trimmed = value.strip().strip(ZERO_WIDTH)
        if trimmed == value:
            return trimmed
        value = trimmed


def _record_limit(settings: RecipientSettings) -> int:
    # A record past this many characters is rejected whole. Legitimate rows are far shorter,
    # so reaching it almost always means an unterminated quote swallowing the rest of the file.
    # NOTE: reading resumes at the record's second line, so a genuine quoted field this long
    # that spans lines has its inner lines parsed as rows.
    return max(MIN_RECORD_LIMIT, 4 * settings.max_field_length)


def _preview(text: str) -> str:
    return text[:PREVIEW_LENGTH]


# --- decoding -----------------------------------------------------------------------------


class _TextFile:
    """A list file decoded incrementally. A decoding error becomes a LoadError with its line."""

    def __init__(self, path: str, binary: io.BufferedReader, encoding: str, is_jsonl: bool) -> None:
        self.path = path
        self.is_jsonl = is_jsonl
        self._binary = binary
        self._encoding = encoding
        # The csv module needs line endings untranslated (newline=""), which also splits lines
        # at a lone CR. JSON Lines separates records by LF only.
        newline = "\n" if is_jsonl else ""
        self._terminators = ("\n",) if is_jsonl else ("\n", "\r")
        self._text = io.TextIOWrapper(binary, encoding=encoding, errors="strict", newline=newline)

    @classmethod
    def open(cls, settings: RecipientSettings) -> _TextFile:
        encoding = settings.encoding or DEFAULT_ENCODING
        try:
            codecs.lookup(encoding)
        except LookupError as error:
            raise LoadError(
                f"unknown encoding {encoding!r} for {settings.path}; set encoding under"
                " [recipients] to a Python codec name such as 'utf-8' or 'cp1252'"
            ) from error

        try:
            binary = open(settings.path, "rb")  # noqa: SIM115 (closed in __exit__)
        except FileNotFoundError as error:
            raise LoadError(
                f"recipient list {settings.path} not found; check path under [recipients]"
            ) from error
        except OSError as error:
            raise LoadError(
                f"cannot read recipient list {settings.path}: {error.strerror}"
            ) from error

        is_jsonl = Path(settings.path).suffix.lower() in JSONL_SUFFIXES
        try:
            return cls(settings.path, binary, encoding, is_jsonl)
        except LookupError as error:  # a codec that is not a text encoding, such as "rot13"
            binary.close()
            raise LoadError(
                f"{encoding!r} is not a text encoding; set encoding under [recipients] to one"
                " such as 'utf-8' or 'cp1252'"
            ) from error

    def __enter__(self) -> _TextFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._text.close()

    def read_line(self, limit: int) -> str:
        """Return the next physical line ("" at end of file), cut after limit + 1 characters.

        A cut line is longer than the limit, so the caller rejects it. The rest of that line
        is skipped so that the next call returns the following line.
        """
        line = self._readline(limit + 1)
        if len(line) > limit and not line.endswith(self._terminators):
            while True:
                rest = self._readline(limit + 1)
                if not rest or rest.endswith(self._terminators):
                    break
        return line

    def _readline(self, size: int) -> str:
        try:
            return self._text.readline(size)
        except UnicodeDecodeError as error:
            raise self._decode_error(error) from error

    def _decode_error(self, error: UnicodeDecodeError) -> LoadError:
        # TextIOWrapper decodes a chunk ahead of the lines handed out. The failing input always
        # ends at the binary stream's current position, which locates the bad byte in the file.
        offset = self._binary.tell() - (len(error.object) - error.start)
        line = _count_line_breaks(self.path, offset) + 1
        name = "UTF-8" if self._encoding == DEFAULT_ENCODING else self._encoding
        byte = error.object[error.start]
        return LoadError(
            f"cannot decode {self.path} as {name}: byte 0x{byte:02X} at line {line}"
            f" (byte offset {offset}) is invalid ({error.reason}); {ENCODING_FIX}"
        )


def _count_line_breaks(path: str, end: int) -> int:
    """Count CR LF, lone CR and lone LF in the first `end` bytes of an ASCII-compatible file."""
    breaks = 0
    previous_was_cr = False
    with open(path, "rb") as binary:
        remaining = end
        while remaining > 0:
            chunk = binary.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            breaks += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if previous_was_cr and chunk.startswith(b"\n"):
                breaks -= 1
            previous_was_cr = chunk.endswith(b"\r")
    return breaks


class _LineSource:
    """Numbered physical lines, keeping the current record's lines so they can be re-read.

    csv.reader pulls lines from this iterator on demand. So before each record is read,
    line_number + 1 is the line that record starts on (csv.reader.line_num gives its last).
    """

    def __init__(self, text: _TextFile, record_limit: int) -> None:
        self._text = text
        self.record_limit = record_limit
        self._replay: deque[str] = deque()
        self._record_chars = 0
        self.record: list[str] = []
        self.line_number = 0
        self.exhausted = False  # the last read reached the end of the file

    def __iter__(self) -> _LineSource:
        return self

    def __next__(self) -> str:
        line = self._replay.popleft() if self._replay else self._text.read_line(self.record_limit)
        if not line:
            self.exhausted = True
            raise StopIteration

        self.line_number += 1
        self.record.append(line)
        self._record_chars += len(line)
        if self._record_chars > self.record_limit:
            raise _RecordTooLong
        return line

    def begin_record(self) -> int:
        """Forget the previous record's lines and return the line the next record starts on."""
        self.record = []
        self._record_chars = 0
        return self.line_number + 1

    def record_text(self) -> str:
        return "".join(self.record).rstrip("\r\n")

    def replay_after(self, start: int) -> None:
        """Hand out the current record's lines again, from the line after `start`."""
        self._replay.extendleft(reversed(self.record[1:]))
        self.line_number = start
        self.exhausted = False

    def push_back(self, line: str) -> None:
        self._replay.appendleft(line)
        self.line_number -= 1


# --- CSV ------------------------------------------------------------------------------------


def _read_csv(text: _TextFile, settings: RecipientSettings) -> Iterator[Recipient | Rejected]:
    source = _LineSource(text, _record_limit(settings))
    header = _read_header(source, settings, text.path)
    reader = csv.reader(source, delimiter=header.delimiter)

    while True:
        start = source.begin_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except _RecordTooLong:
            yield _too_long(start, source)
            source.replay_after(start)
            continue
        except csv.Error as error:
            reason = f"cannot parse the record at line {start}: {error}; fix its quoting"
            yield Rejected(start, reason, _preview(source.record_text()))
            continue

        # csv.reader reads past the last line only while inside a quoted field.
        if source.exhausted:
            yield _unterminated(start, source)
            source.replay_after(start)
            continue

        row = _csv_row(start, header, cells, source, settings)
        if row is not None:
            yield row


def _too_long(start: int, source: _LineSource) -> Rejected:
    reason = (
        f"the record starting at line {start} is longer than {source.record_limit} characters,"
        " which usually means an unterminated quote; close the quote or shorten the record"
    )
    return Rejected(start, reason, _preview(source.record_text()))


def _unterminated(start: int, source: _LineSource) -> Rejected:
    reason = f"unterminated quote in the record starting at line {start}; close the quote"
    return Rejected(start, reason, _preview(source.record_text()))


def _csv_row(
    start: int,
    header: _Header,
    cells: list[str],
    source: _LineSource,
    settings: RecipientSettings,
) -> Recipient | Rejected | None:
    """Check one CSV record, or return None for a blank row, which is skipped."""
    width = len(header.columns)
    if len(cells) != width:
        if _is_blank(cells):
            return None
        reason = (
            f"row has {len(cells)} cells but the header has {width} columns; quote any field"
            f" that contains {header.delimiter!r} and give every row {width} cells"
        )
        return Rejected(start, reason, _preview(source.record_text()))

    email = cells[header.email_index]
    if (not email or email.isspace()) and _is_blank(cells):
        return None
    return _check_row(
        start, header.columns, cells, header.email_index, source.record_text(), settings
    )


def _is_blank(cells: Sequence[str]) -> bool:
    return all(not cell.strip() for cell in cells)


def _read_header(source: _LineSource, settings: RecipientSettings, path: str) -> _Header:
    """Read the header record, choosing the delimiter from its first line unless one is set."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_SIZE_LIMIT))
    first = _first_nonblank_line(source, path)
    delimiter = settings.delimiter or _detect_delimiter(first)
    source.push_back(first)

    start = source.begin_record()
    try:
        cells = next(csv.reader(source, delimiter=delimiter))
    except TypeError as error:
        raise LoadError(
            f"invalid delimiter {delimiter!r} for {path}: {error}; set delimiter under"
            " [recipients] to one character such as ';'"
        ) from error
    except _RecordTooLong as error:
        raise LoadError(
            f"the header of {path} at line {start} is longer than {source.record_limit}"
            " characters; check that the file is a CSV list"
        ) from error
    if source.exhausted:
        raise LoadError(f"unterminated quote in the header of {path} at line {start}; close it")

    columns = [cell.strip().strip(ZERO_WIDTH) for cell in cells]
    _check_columns(columns, path, start)
    email_index = _email_index(columns, settings.email_column, path, start, delimiter)
    return _Header(columns, email_index, delimiter)


def _first_nonblank_line(source: _LineSource, path: str) -> str:
    while True:
        source.begin_record()
        try:
            line = next(source)
        except StopIteration:
            raise LoadError(
                f"recipient list {path} is empty; it needs a header line such as 'email,name'"
            ) from None
        except _RecordTooLong as error:
            raise LoadError(
                f"line {source.line_number} of {path} is longer than {source.record_limit}"
                " characters; check that the file is a CSV list"
            ) from error
        if line.strip().strip(ZERO_WIDTH):
            return line


def _detect_delimiter(line: str) -> str:
    """Return the candidate delimiter found most often outside quotes, "," when none is."""
    counts = dict.fromkeys(DELIMITERS, 0)
    inside_quotes = False
    for character in line:
        if character == '"':
            inside_quotes = not inside_quotes
        elif not inside_quotes and character in counts:
            counts[character] += 1

    best = max(DELIMITERS, key=counts.__getitem__)  # the earlier candidate wins a tie
    return best if counts[best] else ","


def _check_columns(columns: list[str], path: str, line: int) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(columns, start=1):
        if not name:
            raise LoadError(
                f"column {position} in the header of {path} (line {line}) has no name;"
                " name it or remove the column"
            )
        control = CONTROL_CHARACTER.search(name)
        if control:
            raise LoadError(
                f"column {position} in the header of {path} (line {line}) contains control"
                f" character U+{ord(control.group()):04X}; remove it"
            )
        if name in seen:
            raise LoadError(
                f"duplicate column {name!r} in the header of {path} (line {line}, columns"
                f" {seen[name]} and {position}); rename one of them"
            )
        seen[name] = position


def _email_index(columns: list[str], column: str, path: str, line: int, delimiter: str) -> int:
    if column in columns:
        return columns.index(column)
    raise LoadError(
        f"email column {column!r} not found in the header of {path} (line {line}, read with"
        f" delimiter {delimiter!r}): {columns}; set email_column under [recipients] to the"
        " column that holds the addresses"
    )


# --- JSON Lines -----------------------------------------------------------------------------


def _read_jsonl(text: _TextFile, settings: RecipientSettings) -> Iterator[Recipient | Rejected]:
    source = _LineSource(text, _record_limit(settings))
    empty = True
    for line_number, line in _jsonl_lines(source):
        empty = False
        if line is None:
            reason = (
                f"line {line_number} is longer than {source.record_limit} characters;"
                " write one JSON object per line"
            )
            yield Rejected(line_number, reason, _preview(source.record_text()))
            continue
        yield _jsonl_row(line_number, line, settings)

    if empty:
        raise LoadError(f"recipient list {text.path} is empty; write one JSON object per line")


def _jsonl_lines(source: _LineSource) -> Iterator[tuple[int, str | None]]:
    """Yield (line number, text) for each non-blank line, with None as text for a line too long."""
    while True:
        source.begin_record()
        try:
            line = next(source)
        except StopIteration:
            return
        except _RecordTooLong:
            yield source.line_number, None
            continue
        if line.strip():
            yield source.line_number, line


def _jsonl_row(line_number: int, line: str, settings: RecipientSettings) -> Recipient | Rejected:
    text = line.rstrip("\r\n")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        reason = (
            f"invalid JSON at column {error.colno}: {error.msg}; write one JSON object per line"
        )
        return Rejected(line_number, reason, _preview(text))
    except RecursionError:
        reason = "invalid JSON: nested too deeply; write one flat JSON object per line"
        return Rejected(line_number, reason, _preview(text))

    if not isinstance(parsed, dict):
        kind = _json_kind(parsed)
        reason = f"line holds a JSON {kind}, not an object; write one JSON object per line"
        return Rejected(line_number, reason, _preview(text))
    if settings.email_column not in parsed:
        reason = (
            f"missing key {settings.email_column!r} in the JSON object; add it or set"
            " email_column under [recipients]"
        )
        return Rejected(line_number, reason, _preview(text))

    columns = list(parsed)
    cells = [_json_text(value) for value in parsed.values()]
    email_index = columns.index(settings.email_column)
    return _check_row(line_number, columns, cells, email_index, text, settings)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool) or value is None:
        return "literal"
    return "number"


def _json_text(value: Any) -> str:
    """Convert a JSON value to a field: strings as they are, null as "", others as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


# --- row checks shared by both formats ------------------------------------------------------


def _check_row(
    line: int,
    columns: Sequence[str],
    cells: Sequence[str],
    email_index: int,
    record_text: str,
    settings: RecipientSettings,
) -> Recipient | Rejected:
    """Check field lengths, control characters and the address of one row."""
    problem = _field_problem(columns, cells, settings.max_field_length)
    if problem is not None:
        return Rejected(line, problem, _preview(record_text))

    column = settings.email_column
    fields = {name: cell.strip() for name, cell in zip(columns, cells, strict=True)}
    raw_email = cells[email_index]
    candidate = _trim_address(raw_email)
    if not candidate:
        reason = f"empty address in column {column}; fill it in or delete the row"
        return Rejected(line, reason, _preview(raw_email))

    try:
        address, key, smtputf8 = normalise_address(candidate)
    except ValueError as error:
        reason = f"invalid address {_preview(candidate)!r} in column {column}: {error}"
        return Rejected(line, reason, _preview(raw_email))

    fields[column] = address
    return Recipient(line, address, key, smtputf8, fields)


def _field_problem(columns: Sequence[str], cells: Sequence[str], max_length: int) -> str | None:
    """Describe the first over-long field or control character in a row, or return None."""
    if max(map(len, cells), default=0) > max_length:
        name, cell = next(
            (n, c) for n, c in zip(columns, cells, strict=True) if len(c) > max_length
        )
        return (
            f"column {name} is {len(cell)} characters long, over the limit of {max_length};"
            " shorten it or raise max_field_length under [recipients]"
        )

    # TAB is allowed in fields, so joining with it cannot create a false match.
    if CONTROL_CHARACTER.search("\t".join(cells)) is None:
        return None
    for name, cell in zip(columns, cells, strict=True):
        control = CONTROL_CHARACTER.search(cell)
        if control:
            code = f"U+{ord(control.group()):04X}"
            return f"control character {code} in column {name}; remove it from the list"
    return None
