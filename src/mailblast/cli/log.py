"""``mailblast log export``: every delivery record of a campaign as JSON Lines or CSV."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from mailblast import blast
from mailblast.cli.exit_codes import EXIT_BROKEN_PIPE
from mailblast.cli.status import add_store_option
from mailblast.deliverylog import write_csv, write_jsonl
from mailblast.errors import MailblastError
from mailblast.store.base import LOG_COLUMNS


def register(commands: Any) -> None:
    log = commands.add_parser(
        "log", help="delivery log commands", description="Delivery log commands."
    )
    actions = log.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="write every delivery record",
        description="Write every delivery record of a campaign: one per attempt and one per row"
        " rejected or suppressed at load. CSV cells that a spreadsheet would run as a formula"
        " get a leading apostrophe.",
    )
    export.add_argument("name", help="campaign name")
    add_store_option(export)
    export.add_argument(
        "--format", choices=("jsonl", "csv"), default="jsonl", help="output format (default jsonl)"
    )
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(handler=run_export)


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as error:
        raise MailblastError(f"cannot write {path}: {error.strerror}") from error
    with handle:
        yield handle


def run_export(arguments: argparse.Namespace) -> int:
    try:
        return _export(arguments)
    except BrokenPipeError:
        # The reader (such as `head`) closed the pipe: stop quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _export(arguments: argparse.Namespace) -> int:
    with blast.opened(arguments.store) as store:
        row = blast.require_campaign(store, arguments.name)
        with _output(arguments.output) as handle:
            records = store.iter_log(row.id)
            if arguments.format == "csv":
                count = write_csv(records, handle, LOG_COLUMNS)
            else:
                count = write_jsonl(records, handle)
    if arguments.output:
        print(f"wrote {count} delivery records to {arguments.output}", file=sys.stderr)
    return 0
