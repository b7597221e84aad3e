"""`mailblast bounces process`: read returned messages and update the store."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mailblast.bounces import (
    DEFAULT_SOFT_BOUNCE_LIMIT,
    BounceProcessor,
    BounceSettings,
    BounceSummary,
)
from mailblast.cli.status import add_store_option
from mailblast.config import DEFAULT_UNSUBSCRIBE_SECRET_ENV, check_unsubscribe_secret, read_secret
from mailblast.errors import MailblastError
from mailblast.mailboxes import check_paths, iter_messages
from mailblast.store import open_store

_SUMMARY_CLASSES = (
    ("hard", "hard bounces"),
    ("soft", "soft bounces"),
    ("delayed", "delay notices"),
    ("block", "sender or policy blocks"),
    ("complaint", "complaints"),
    ("unsubscribe", "unsubscribe requests"),
    ("auto-reply", "auto-replies (ignored)"),
    ("duplicate", "already processed"),
)
_MAX_BLOCKS_SHOWN = 20


def register(commands: Any) -> None:
    bounces = commands.add_parser(
        "bounces",
        help="process returned messages: bounces, complaints, unsubscribe requests",
        description="Commands for mail that comes back to the envelope sender.",
    )
    actions = bounces.add_subparsers(dest="bounces_command", metavar="ACTION", required=True)
    process = actions.add_parser(
        "process",
        help="record bounces and complaints from .eml files, maildirs and mbox files",
        description="Read returned messages, record each bounce, complaint and unsubscribe"
        " request in the store and suppress addresses that should not be mailed again."
        " Messages that cannot be classified or matched are copied to the review folder."
        " The source files are only read. Processing the same message again changes nothing.",
    )
    process.add_argument("paths", nargs="+", metavar="PATH", help=".eml file, maildir or mbox")
    add_store_option(process)
    process.add_argument(
        "--review",
        metavar="DIR",
        help="folder to copy messages that need a person's review into (default: count only)",
    )
    process.add_argument(
        "--soft-bounce-limit",
        type=_positive_int,
        default=DEFAULT_SOFT_BOUNCE_LIMIT,
        metavar="N",
        help=f"suppress an address after N soft bounces (default {DEFAULT_SOFT_BOUNCE_LIMIT})",
    )
    process.add_argument(
        "--secret-env",
        default=DEFAULT_UNSUBSCRIBE_SECRET_ENV,
        metavar="NAME",
        help="environment variable holding the unsubscribe token secret, to act on unsubscribe"
        f" requests by mail (default {DEFAULT_UNSUBSCRIBE_SECRET_ENV})",
    )
    process.add_argument(
        "--secret-file", metavar="PATH", help="file holding the secret, instead of --secret-env"
    )
    process.set_defaults(handler=run_process)


def run_process(arguments: argparse.Namespace) -> int:
    if not arguments.verbose:
        # flufl.bounce logs every detector it tries at INFO, several lines per message.
        logging.getLogger("flufl.bounce").setLevel(logging.WARNING)
    check_paths(arguments.paths)
    if "://" not in arguments.store and not Path(arguments.store).is_file():
        raise MailblastError(
            f"store not found: {arguments.store}; give the campaigns' store with --store"
        )
    settings = BounceSettings(
        soft_bounce_limit=arguments.soft_bounce_limit,
        review_dir=Path(arguments.review) if arguments.review else None,
        unsubscribe_secret=_read_secret(arguments),
    )
    store = open_store(arguments.store)
    try:
        processor = BounceProcessor(store, settings)
        for stored in iter_messages(arguments.paths):
            processor.process(stored)
    finally:
        store.close()
    print_bounce_summary(processor.summary)
    return 0


def print_bounce_summary(summary: BounceSummary) -> None:
    print(f"messages read: {summary.messages}")
    for key, label in _SUMMARY_CLASSES:
        print(f"{label}: {summary.counts.get(key, 0)}")
    print(f"addresses suppressed: {summary.suppressed}")
    print(f"for review: {summary.review}")
    if summary.blocks:
        print("sender or policy blocks (fix the sending side; recipients were not suppressed):")
        for line in summary.blocks[:_MAX_BLOCKS_SHOWN]:
            print(f"  {line}")
        if len(summary.blocks) > _MAX_BLOCKS_SHOWN:
            print(f"  ... and {len(summary.blocks) - _MAX_BLOCKS_SHOWN} more")
    sys.stdout.flush()


def _read_secret(arguments: argparse.Namespace) -> bytes | None:
    """Read the unsubscribe secret; None when its variable is unset and no file is given."""
    env = None if arguments.secret_file else arguments.secret_env
    if env and env not in os.environ:
        return None
    value = read_secret(env, arguments.secret_file, "bounces process", "secret")
    return None if value is None else check_unsubscribe_secret(value, "bounces process")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: use a whole number of 1 or more")
    return value
