"""Commands that work from the store alone: status, pause, resume, cancel, retry."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mailblast import blast
from mailblast.cli.progress import print_summary
from mailblast.control import apply_action, check_action

DEFAULT_STORE = "mailblast.db"


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        metavar="PATH|URL",
        help="the campaign's store: a SQLite file path or a postgresql://user@host/database URL"
        f" (default {DEFAULT_STORE})",
    )


def register(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="show a campaign's counts, relays and runs",
        description="Print the summary of a campaign from its store; works while it is sending.",
    )
    status.add_argument("name", help="campaign name")
    add_store_option(status)
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.set_defaults(handler=run_status)

    for command, text in (
        ("pause", "stop starting new messages; in-flight messages finish"),
        ("resume", "lift a pause"),
        ("cancel", "mark every message not yet sent as cancelled"),
    ):
        parser = commands.add_parser(
            command, help=text, description=text[0].upper() + text[1:] + "."
        )
        parser.add_argument("name", help="campaign name")
        add_store_option(parser)
        if command == "cancel":
            parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        parser.set_defaults(handler=run_control, action=command)

    retry = commands.add_parser(
        "retry",
        help="queue unknown messages again",
        description="Queue messages whose outcome is unknown (the connection was lost after the"
        " end of DATA) for another attempt with the same Message-ID. The relay may have accepted"
        " them already, so a recipient may get the message twice.",
    )
    retry.add_argument("name", help="campaign name")
    add_store_option(retry)
    retry.add_argument(
        "--unknown", action="store_true", required=True, help="requeue unknown messages"
    )
    retry.set_defaults(handler=run_retry)


def run_status(arguments: argparse.Namespace) -> int:
    with blast.opened(arguments.store) as store:
        summary = blast.summarise(store, arguments.name)
    if arguments.json:
        print(blast.counts_json(summary))
    else:
        print_summary(summary)
        for run in summary.runs:
            print(describe_run(run, time.time()))
    return 0


def describe_run(run: dict[str, Any], now: float) -> str:
    """Return one line on a sending run (a worker): where it runs, its rate, its heartbeat."""
    age = now - run["heartbeat_at"]
    span = run["heartbeat_at"] - run["started_at"]
    rate = run["sent"] / span if span > 0 else 0.0
    where = f"on {run['host']} (pid {run['pid']})"
    return (
        f"worker {run['id']} {where}: {run['sent']} sent, {rate:.0f} msg/s,"
        f" last heartbeat {age:.0f}s ago"
    )


def run_control(arguments: argparse.Namespace) -> int:
    with blast.opened(arguments.store) as store:
        row = blast.require_campaign(store, arguments.name)
        check_action(row, arguments.action)
        question = f"cancel campaign {arguments.name}? [y/N] "
        if arguments.action == "cancel" and not arguments.yes and not _confirm(question):
            print("not cancelled")
            return 1
        apply_action(store, row, arguments.action, time.time())
    print(f"campaign {arguments.name}: {arguments.action} requested")
    return 0


def _confirm(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_retry(arguments: argparse.Namespace) -> int:
    with blast.opened(arguments.store) as store:
        row = blast.require_campaign(store, arguments.name)
        count = store.retry_unknown(row.id, time.time())
        if count and row.status == "done":
            store.set_status(row.id, "active", None, time.time())
    print(f"campaign {arguments.name}: {count} unknown messages queued again")
    if count:
        print("run 'mailblast send CAMPAIGN.toml' to send them")
    return 0
