"""The ``worker`` command: send a campaign from its store, beside workers on other machines."""

from __future__ import annotations

import argparse
from typing import Any

from mailblast import worker
from mailblast.cli.exit_codes import EXIT_INTERRUPTED
from mailblast.cli.progress import ProgressDisplay, print_summary


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "worker",
        help="send a campaign from its store, alongside other workers",
        description="Send a campaign that 'mailblast send' saved in a shared store. Settings,"
        " templates and secret references come from the store; passwords come from this"
        " machine's environment or files. Start one worker per machine; they share the"
        " relays' limits through the store.",
    )
    parser.add_argument(
        "--store",
        required=True,
        metavar="URL",
        help="the campaign's store: a postgresql://user@host/database URL (or a SQLite path)",
    )
    parser.add_argument(
        "--campaign",
        metavar="NAME",
        help="the campaign to send (default: the only campaign that is active or paused)",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="exit when nothing is due now instead of waiting for deferred retries",
    )
    parser.set_defaults(handler=run_worker)


def run_worker(arguments: argparse.Namespace) -> int:
    display = ProgressDisplay(arguments.campaign or "campaign")
    summary, stats = worker.work(
        arguments.store,
        arguments.campaign,
        wait=not arguments.no_wait,
        install_signal_handlers=True,
        on_start=display.attach,
    )
    display.close()
    print_summary(summary, stats)
    return EXIT_INTERRUPTED if stats.interrupted else 0
