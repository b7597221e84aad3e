"""``mailblast relays probe``: measure each relay's rate with a short burst of real messages."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from mailblast.cli.exit_codes import EXIT_PROBLEMS_FOUND
from mailblast.config import load_campaign
from mailblast.probe import ProbeResult, probe

DEFAULT_MESSAGES = 100


def register(commands: Any) -> None:
    relays = commands.add_parser("relays", help="measure the campaign's relays")
    actions = relays.add_subparsers(dest="relays_command", metavar="ACTION", required=True)
    command = actions.add_parser(
        "probe",
        help="send a short burst through each relay and report its rate",
        description="Send --messages copies of the campaign's first message through each relay"
        " to ADDRESS, over up to max_connections sessions, and print each relay's accepted"
        " messages per second, session set-up time and errors. Every message is really"
        " delivered to ADDRESS, so name a sink mailbox you own. Exit status 1 when a relay"
        " did not accept every message.",
    )
    command.add_argument("campaign", metavar="CAMPAIGN.toml", help="campaign file")
    command.add_argument(
        "--to", required=True, metavar="ADDRESS", help="sink address that receives the burst"
    )
    command.add_argument(
        "--messages",
        type=int,
        default=DEFAULT_MESSAGES,
        metavar="N",
        help=f"messages per relay (default {DEFAULT_MESSAGES})",
    )
    command.add_argument("--json", action="store_true", help="print the results as JSON")
    command.set_defaults(handler=run_probe)


def run_probe(arguments: argparse.Namespace) -> int:
    campaign = load_campaign(arguments.campaign)
    results = probe(campaign, arguments.to, arguments.messages)
    if arguments.json:
        print(json.dumps([result.as_dict() for result in results], indent=2))
    else:
        print_results(results)
    complete = all(result.accepted == result.requested for result in results)
    return 0 if complete else EXIT_PROBLEMS_FOUND


def print_results(results: list[ProbeResult]) -> None:
    table = Table(title="relay probe", show_lines=True)
    table.add_column("relay", overflow="fold")
    for column in ("accepted", "sessions", "connect ms", "msg/s"):
        table.add_column(column, justify="right")
    table.add_column("errors", overflow="fold")
    for result in results:
        connect = result.connect_time
        table.add_row(
            result.relay,
            f"{result.accepted}/{result.requested}",
            str(result.sessions),
            f"{connect * 1000:.1f}" if connect is not None else "-",
            f"{result.rate:,.1f}",
            "\n".join(result.errors) or "-",
        )
    Console().print(table)
