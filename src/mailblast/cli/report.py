"""``mailblast report``: a campaign's report as one self-contained HTML file, and as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mailblast import blast
from mailblast.cli.status import add_store_option
from mailblast.errors import MailblastError


def register(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write a campaign's report as HTML (and JSON)",
        description="Write a report of a campaign from its store: totals, throughput per relay,"
        " replies over time, top deferral, bounce and failure reasons, top recipient domains,"
        " timing and the settings with secrets masked. The HTML file is self-contained: charts"
        " are inline SVG and nothing is fetched from a network. Works while it is sending.",
    )
    report.add_argument("name", help="campaign name")
    add_store_option(report)
    report.add_argument("--html", required=True, metavar="FILE", help="write the HTML report")
    report.add_argument("--json", metavar="FILE", help="also write the same figures as JSON")
    report.set_defaults(handler=run_report)


def run_report(arguments: argparse.Namespace) -> int:
    # Imported here so that other commands do not pay for matplotlib.
    from mailblast.report import build_report
    from mailblast.report_html import render_html

    with blast.opened(arguments.store) as store:
        figures = build_report(store, arguments.name)
    _write(arguments.html, render_html(figures))
    print(f"wrote {arguments.html}")
    if arguments.json:
        _write(arguments.json, json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {arguments.json}")
    return 0


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise MailblastError(f"cannot write {path}: {error.strerror}") from error
