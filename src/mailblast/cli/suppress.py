"""``mailblast suppress add|remove|list|import|export``: the store's suppression list."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from mailblast import blast
from mailblast.cli.exit_codes import EXIT_BROKEN_PIPE
from mailblast.cli.log import _output as open_output
from mailblast.cli.status import _confirm, add_store_option
from mailblast.errors import MailblastError
from mailblast.store import open_store
from mailblast.store.base import EVERY_CAMPAIGN, SUPPRESSION_REASONS
from mailblast.store.sql import SQLStore
from mailblast.suppressions import (
    CSV_COLUMNS,
    CsvImport,
    ImportReport,
    export_csv,
    format_time,
    iter_suppressions,
    make_entry,
    parse_reason,
)

EXIT_SOME_REJECTED = 1
REASONS = ", ".join(SUPPRESSION_REASONS)


def register(commands: Any) -> None:
    suppress = commands.add_parser(
        "suppress",
        help="add, remove, list, import or export suppressed addresses",
        description="Manage the store's suppression list. A suppressed address is skipped when"
        " a list is loaded and again just before each send. An entry applies to every campaign,"
        " or with --campaign to one campaign of the store.",
    )
    actions = suppress.add_subparsers(dest="suppress_command", metavar="ACTION", required=True)
    _register_add(actions)
    _register_remove(actions)
    _register_list(actions)
    _register_import(actions)
    _register_export(actions)


def _common(parser: argparse.ArgumentParser, scope_help: str, reason_help: str) -> None:
    add_store_option(parser)
    parser.add_argument("--campaign", metavar="NAME", help=scope_help)
    parser.add_argument("--reason", type=_reason_argument, metavar="REASON", help=reason_help)


def _reason_argument(text: str) -> str:
    try:
        return parse_reason(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _register_add(actions: Any) -> None:
    add = actions.add_parser(
        "add",
        help="suppress addresses",
        description="Suppress addresses. An address already listed in that scope keeps its"
        " first reason and time.",
    )
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    _common(
        add,
        "suppress for this campaign only (default: every campaign)",
        f"{REASONS} (default manual)",
    )
    add.set_defaults(handler=run_add)


def _register_remove(actions: Any) -> None:
    remove = actions.add_parser(
        "remove",
        help="remove addresses from the list",
        description="Remove addresses from one scope of the list, or with --reason and no"
        " address every entry of that reason. Removing more than one entry asks for"
        " confirmation unless --yes is given.",
    )
    remove.add_argument("addresses", nargs="*", metavar="ADDRESS")
    _common(
        remove,
        "remove from this campaign's entries (default: the entries for every campaign)",
        "remove only entries with this reason",
    )
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(handler=run_remove)


def _register_list(actions: Any) -> None:
    listing = actions.add_parser(
        "list",
        help="print the entries, tab-separated",
        description="Print the entries as tab-separated lines: "
        + ", ".join(CSV_COLUMNS)
        + ". Streams, so it suits lists of millions.",
    )
    _common(
        listing,
        "only entries for this campaign (default: all entries)",
        "only entries with this reason",
    )
    listing.add_argument("--limit", type=int, metavar="N", help="print at most N entries")
    listing.set_defaults(handler=run_list)


def _register_import(actions: Any) -> None:
    importing = actions.add_parser(
        "import",
        help="add the addresses of a CSV file",
        description="Add the rows of a CSV file with the header "
        + ",".join(CSV_COLUMNS)
        + " (only address is required; time is ISO 8601, UTC when it has no offset). Each"
        " invalid row is reported with its line number and the others are imported. Exit"
        f" status {EXIT_SOME_REJECTED} when a row was rejected.",
    )
    importing.add_argument("path", metavar="FILE")
    _common(
        importing,
        "scope of rows with an empty campaign cell (default: every campaign)",
        f"reason of rows with an empty reason cell (default manual; one of {REASONS})",
    )
    importing.set_defaults(handler=run_import)


def _register_export(actions: Any) -> None:
    export = actions.add_parser(
        "export",
        help="write the entries as CSV",
        description="Write the entries as CSV with the header "
        + ",".join(CSV_COLUMNS)
        + "; time is ISO 8601 in UTC and an empty campaign means every campaign. The output"
        " is what 'mailblast suppress import' reads.",
    )
    _common(
        export,
        "only entries for this campaign (default: all entries)",
        "only entries with this reason",
    )
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(handler=run_export)


def _scope(store: SQLStore, name: str | None) -> int:
    return EVERY_CAMPAIGN if name is None else blast.require_campaign(store, name).id


def _scope_name(name: str | None) -> str:
    return "every campaign" if name is None else f"campaign {name}"


@contextlib.contextmanager
def _created(location: str) -> Iterator[SQLStore]:
    """Open the store, creating it when missing, so a list can be prepared before a campaign."""
    store = open_store(location)
    try:
        yield store
    finally:
        store.close()


def run_add(arguments: argparse.Namespace) -> int:
    reason = arguments.reason or "manual"
    with _created(arguments.store) as store:
        scope = _scope(store, arguments.campaign)
        entries = []
        for address in arguments.addresses:
            try:
                entries.append(make_entry(address, reason, scope, arguments.campaign))
            except ValueError as error:
                raise MailblastError(f"invalid address {address!r}: {error}") from error
        for entry in entries:
            added = store.add_suppression(
                entry.key, entry.address, entry.reason, scope, entry.time, entry.origin
            )
            state = "suppressed" if added else "already suppressed; unchanged"
            print(f"{entry.address}: {state} ({_scope_name(arguments.campaign)})")
    return 0


def run_remove(arguments: argparse.Namespace) -> int:
    if not arguments.addresses and not arguments.reason:
        raise MailblastError(
            "no address given; give the addresses to remove, or --reason to remove every entry"
            " with that reason"
        )
    with blast.opened(arguments.store) as store:
        scope = _scope(store, arguments.campaign)
        if arguments.addresses:
            return _remove_addresses(store, scope, arguments)
        count = store.count_suppressions(scope, arguments.reason)
        where = f"{_scope_name(arguments.campaign)} with reason {arguments.reason}"
        if count > 1 and not _confirmed(arguments, f"remove {count} entries for {where}?"):
            return 1
        removed = store.remove_suppressions(scope, None, arguments.reason)
    print(f"removed {removed} {'entry' if removed == 1 else 'entries'} for {where}")
    return 0


def _remove_addresses(store: SQLStore, scope: int, arguments: argparse.Namespace) -> int:
    keys = []
    for address in arguments.addresses:
        try:
            keys.append((address, make_entry(address, "manual").key))
        except ValueError as error:
            raise MailblastError(f"invalid address {address!r}: {error}") from error
    where = _scope_name(arguments.campaign)
    if len(keys) > 1 and not _confirmed(arguments, f"remove {len(keys)} addresses for {where}?"):
        return 1
    for address, key in keys:
        removed = store.remove_suppressions(scope, [key], arguments.reason)
        print(f"{address}: {'removed' if removed else 'not listed'} ({where})")
    return 0


def _confirmed(arguments: argparse.Namespace, question: str) -> bool:
    if arguments.yes or _confirm(f"{question} [y/N] "):
        return True
    print("nothing removed")
    return False


def run_list(arguments: argparse.Namespace) -> int:
    with _stdout_closed_quietly(), blast.opened(arguments.store) as store:
        scope = None if arguments.campaign is None else _scope(store, arguments.campaign)
        print("\t".join(CSV_COLUMNS))
        for count, entry in enumerate(iter_suppressions(store, scope, arguments.reason)):
            if arguments.limit is not None and count >= arguments.limit:
                break
            cells = (entry.address, entry.reason, entry.campaign or "*")
            print("\t".join((*cells, format_time(entry.time), entry.origin or "")))
    return 0


def run_import(arguments: argparse.Namespace) -> int:
    def reject(line: int, message: str) -> None:
        print(f"{arguments.path} line {line}: rejected: {message}", file=sys.stderr)

    with _created(arguments.store) as store:
        scope = _scope(store, arguments.campaign)
        importer = CsvImport(
            store,
            lambda name: row.id if (row := store.get_campaign(name)) else None,
            reject,
            arguments.reason or "manual",
            scope,
        )
        report = _read_csv(importer, arguments.path)
    print(
        f"{arguments.path}: {report.rows} rows: {report.added} added,"
        f" {report.existing} already listed, {report.rejected} rejected"
    )
    return EXIT_SOME_REJECTED if report.rejected else 0


def _read_csv(importer: CsvImport, path: str) -> ImportReport:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return importer.run(handle, path)
    except OSError as error:
        raise MailblastError(f"cannot read {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise MailblastError(
            f"{path} is not UTF-8 text (byte {error.start} of a read block: {error.reason});"
            " convert it to UTF-8. Rows before the invalid byte were imported."
        ) from error
    except ValueError as error:
        raise MailblastError(str(error)) from error


def run_export(arguments: argparse.Namespace) -> int:
    with _stdout_closed_quietly(), blast.opened(arguments.store) as store:
        scope = None if arguments.campaign is None else _scope(store, arguments.campaign)
        with open_output(arguments.output) as handle:
            count = export_csv(store, handle, scope, arguments.reason)
    if arguments.output:
        print(f"wrote {count} entries to {arguments.output}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _stdout_closed_quietly() -> Iterator[None]:
    """Stop without a traceback when the reader (such as `head`) closes standard output."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
