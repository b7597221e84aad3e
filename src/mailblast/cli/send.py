"""Commands that work from a campaign file: check, send, preview."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailblast import blast, processes
from mailblast.cli.exit_codes import EXIT_INTERRUPTED
from mailblast.cli.progress import ProgressDisplay, print_load, print_summary
from mailblast.config import load_campaign
from mailblast.errors import ConfigError, MailblastError, TemplateError
from mailblast.recipients import Rejected, read_recipients

if TYPE_CHECKING:
    from mailblast.engine import Engine
    from mailblast.metrics import SendMetrics


def register(commands: Any) -> None:
    check = commands.add_parser(
        "check",
        help="validate a campaign offline",
        description="Validate a campaign file, its templates and its list without sending."
        " Exit status 0 only when a send could start.",
    )
    check.add_argument("campaign", help="campaign TOML file")
    check.set_defaults(handler=run_check)

    send = commands.add_parser(
        "send",
        help="load the list (first time) and send",
        description="Load the list on the first run, then send every due message. Running it"
        " again continues where it stopped; messages already sent are never sent again.",
    )
    send.add_argument("campaign", help="campaign TOML file")
    send.add_argument(
        "--no-wait",
        action="store_true",
        help="exit when nothing is due now instead of waiting for deferred retries",
    )
    send.add_argument(
        "--test-to",
        metavar="ADDRESS",
        help="send the first rows' messages to ADDRESS instead, outside the campaign's records",
    )
    send.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="with --test-to: how many rows to send as proofs (default 3)",
    )
    send.add_argument(
        "--store",
        metavar="PATH|URL",
        help="use this store instead of the campaign's store key: a SQLite file path or a"
        " postgresql://user@host/database URL",
    )
    send.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="send from N processes that share the store and split each relay's"
        " max_connections and rate among them (default 1)",
    )
    send.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics of this run at http://HOST:PORT/metrics while sending"
        " (for example 127.0.0.1:9101)",
    )
    send.set_defaults(handler=run_send)

    preview = commands.add_parser(
        "preview",
        help="show the exact bytes one recipient would get",
        description="Render one recipient's message exactly as it would be sent.",
    )
    preview.add_argument("campaign", help="campaign TOML file")
    preview.add_argument(
        "--row", type=int, default=1, metavar="N", help="the N-th accepted row (default 1)"
    )
    preview.add_argument("--output", metavar="FILE.eml", help="write the message to a file")
    preview.add_argument(
        "--8bitmime",
        dest="eight_bit",
        action="store_true",
        help="the message as a relay that offers 8BITMIME gets it: non-ASCII parts in 8bit"
        " instead of quoted-printable, unless DKIM signs it",
    )
    preview.set_defaults(handler=run_preview)


def run_check(arguments: argparse.Namespace) -> int:
    campaign = load_campaign(arguments.campaign)
    problems: list[str] = []
    try:
        blast.compile_templates(campaign)
    except TemplateError as error:
        problems.extend(error.problems)
    for relay in campaign.relays:
        try:
            relay.password()
        except ConfigError as error:
            problems.extend(error.problems)
    for read_secrets in (blast.unsubscribe_links, blast.dkim_signer):
        try:
            read_secrets(campaign)
        except ConfigError as error:
            problems.extend(error.problems)
    accepted = rejected = 0
    for item in read_recipients(campaign.recipients):
        if isinstance(item, Rejected):
            rejected += 1
            if rejected <= 20:
                print(f"{campaign.recipients.path}:{item.line}: rejected: {item.reason}")
        else:
            accepted += 1
    if rejected > 20:
        print(f"... and {rejected - 20} more rejected rows")
    print(f"list: {accepted} acceptable rows, {rejected} rejected (duplicates are found at load)")
    print(f"relays: {', '.join(relay.name for relay in campaign.relays)}")
    if accepted == 0:
        problems.append(f"{campaign.recipients.path}: no acceptable recipient")
    for warning in blast.deliverability_warnings(campaign):
        print(f"warning: {warning}")
    if problems:
        raise TemplateError(problems)
    print(f"campaign {campaign.name}: ok")
    return 0


def run_send(arguments: argparse.Namespace) -> int:
    if arguments.limit is not None and not arguments.test_to:
        raise MailblastError(
            "--limit applies only to proofs sent with --test-to ADDRESS; a campaign send has"
            " no limit (use 'mailblast pause' to stop one)"
        )
    if arguments.processes != 1 and arguments.test_to:
        raise MailblastError("--processes applies to a campaign send, not to proofs (--test-to)")
    if arguments.processes != 1 and arguments.metrics:
        raise MailblastError(
            "--metrics serves the figures of one process; with --processes, run"
            " `mailblast serve` and scrape its /metrics, which reads the shared store"
        )
    campaign = load_campaign(arguments.campaign)
    if arguments.store:
        campaign = dataclasses.replace(campaign, store=arguments.store)
    if arguments.test_to:
        limit = 3 if arguments.limit is None else arguments.limit
        if limit < 1:
            raise MailblastError(f"--limit {limit} must be at least 1")
        results = blast.send_proofs(campaign, arguments.test_to, limit)
        for line, _ in results:
            print(line)
        rejected = sum(1 for _, accepted in results if not accepted)
        if rejected:
            raise MailblastError(f"{rejected} of {len(results)} proofs were not accepted")
        return 0
    if arguments.processes != 1:
        summary, stats, report = processes.send_in_processes(
            campaign, arguments.processes, wait=not arguments.no_wait
        )
        if report is not None:
            print_load(report)
        print_summary(summary, stats)
        return EXIT_INTERRUPTED if stats.interrupted else 0
    display = ProgressDisplay(campaign.name)
    on_start: Callable[[Engine], None] = display.attach
    metrics = None
    if arguments.metrics:
        on_start, metrics = _serve_metrics(arguments.metrics, campaign.name, display.attach)
    try:
        summary, stats, report = blast.send(
            campaign,
            wait=not arguments.no_wait,
            install_signal_handlers=True,
            on_start=on_start,
        )
    finally:
        if metrics is not None:
            metrics.stop()
    display.close()
    if report is not None:
        print_load(report)
    print_summary(summary, stats)
    return EXIT_INTERRUPTED if stats.interrupted else 0


def _serve_metrics(
    address: str, campaign: str, attach_display: Callable[[Engine], None]
) -> tuple[Callable[[Engine], None], SendMetrics]:
    """Start the metrics listener; return the engine hook that feeds it, and the metrics."""
    from mailblast.metrics import SendMetrics, parse_address

    host, port = parse_address(address)
    metrics = SendMetrics(campaign)
    metrics.serve(host, port)

    def attach(engine: Engine) -> None:
        attach_display(engine)
        metrics.attach(engine)

    return attach, metrics


def run_preview(arguments: argparse.Namespace) -> int:
    campaign = load_campaign(arguments.campaign)
    if arguments.row < 1:
        raise MailblastError(f"--row {arguments.row} must be at least 1")
    data = blast.preview(campaign, arguments.row, eight_bit=arguments.eight_bit)
    if arguments.output:
        Path(arguments.output).write_bytes(data)
        print(f"wrote {len(data)} bytes to {arguments.output}")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
