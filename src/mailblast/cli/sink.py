"""``mailblast sink``: a local test relay that accepts, counts and fails messages on demand."""

from __future__ import annotations

import argparse
from typing import Any

from mailblast.errors import MailblastError
from mailblast.sink import SINK_RULES_HELP, main_sink


def register(commands: Any) -> None:
    sink = commands.add_parser(
        "sink",
        help="run a local test relay",
        description="Run a local SMTP test relay that accepts and counts messages, optionally"
        " stores them, and fails on demand. Stop it with Ctrl-C.",
        epilog=SINK_RULES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sink.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    sink.add_argument(
        "--port", type=tcp_port, required=True, help="TCP port to listen on; 0 picks a free one"
    )
    sink.add_argument(
        "--maildir", metavar="DIR", help="store each accepted message in this Maildir"
    )
    sink.add_argument(
        "--tempfail-every",
        type=int,
        metavar="N",
        help="answer 421 and close after every N messages on one connection",
    )
    sink.add_argument(
        "--no-pipelining", action="store_true", help="do not advertise PIPELINING in the EHLO reply"
    )
    sink.add_argument("--no-smtputf8", action="store_true", help="do not offer SMTPUTF8")
    sink.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between counting lines",
    )
    sink.set_defaults(handler=run_sink)


def tcp_port(text: str) -> int:
    """Parse a TCP port for argparse, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: use a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: use 0 to 65535")
    return port


def run_sink(arguments: argparse.Namespace) -> int:
    try:
        _serve(arguments)
    except OSError as error:
        raise MailblastError(
            f"cannot listen on {arguments.host}:{arguments.port}: {error.strerror or error};"
            " choose another --port (0 picks a free one)"
        ) from error
    return 0


def _serve(arguments: argparse.Namespace) -> None:
    main_sink(
        arguments.host,
        arguments.port,
        arguments.maildir,
        interval=arguments.interval,
        tempfail_every=arguments.tempfail_every,
        pipelining=not arguments.no_pipelining,
        smtputf8=not arguments.no_smtputf8,
    )
