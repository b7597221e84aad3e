"""The ``mailblast`` command: argument parsing, logging set-up and error reporting.

Each command group lives in its own module and registers its sub-commands here. Errors derived
from MailblastError print as ``error: ...`` with exit status 2; the traceback appears only with
``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.logging import RichHandler

from mailblast import __version__
from mailblast.cli import (
    bounces,
    db,
    demo,
    dkim,
    dns,
    log,
    plan,
    relays,
    report,
    send,
    serve,
    sink,
    status,
    suppress,
    worker,
)
from mailblast.cli.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED
from mailblast.cli.progress import STDERR
from mailblast.errors import ConfigError, MailblastError, TemplateError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailblast",
        description="Send one personalized e-mail blast through a pool of SMTP relays, durably.",
    )
    parser.add_argument("--version", action="version", version=f"mailblast {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug detail and show tracebacks"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (
        send,
        worker,
        status,
        log,
        report,
        suppress,
        bounces,
        dkim,
        dns,
        plan,
        relays,
        serve,
        db,
    )
    for module in (*modules, sink, demo):
        module.register(commands)
    return parser


def configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        # Through rich's console, log lines print above the live progress bar.
        handler = RichHandler(console=STDERR, show_path=False, markup=False)
        logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler])
    else:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if not verbose:
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    configure_logging(arguments.verbose)
    try:
        result: int = arguments.handler(arguments)
        return result
    except (ConfigError, TemplateError) as error:
        count = len(error.problems)
        print(f"error: {count} problem{'s' if count != 1 else ''} found:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        if arguments.verbose:
            raise
        return EXIT_ERROR
    except MailblastError as error:
        print(f"error: {error}", file=sys.stderr)
        for line in cause_lines(error):
            print(f"  caused by: {line}", file=sys.stderr)
        if arguments.verbose:
            raise
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cause_lines(error: BaseException) -> list[str]:
    """Describe the chain of causes of an error, leaving out those its message already states."""
    shown = str(error)
    lines = []
    cause = error.__cause__
    while cause is not None:
        text = str(cause)
        if text and text not in shown:
            lines.append(f"{type(cause).__name__}: {text}")
            shown += "\n" + text
        cause = cause.__cause__
    return lines


if __name__ == "__main__":
    sys.exit(main())
