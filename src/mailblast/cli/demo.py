"""``mailblast demo``: send a generated 20,000-recipient campaign through three local sinks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mailblast import blast
from mailblast.cli.progress import ProgressDisplay, print_load, print_summary
from mailblast.config import load_campaign
from mailblast.demo import start_sinks, write_demo


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a real blast through three local test relays",
        description="Start three test relays on 127.0.0.1, write a campaign with a generated"
        " list, send it through all three and print the summary.",
    )
    demo.add_argument(
        "--directory",
        default="mailblast-demo",
        metavar="DIR",
        help="where to write the campaign, list, templates and store (default ./mailblast-demo)",
    )
    demo.add_argument(
        "--recipients", type=int, default=20000, metavar="N", help="list size (default 20000)"
    )
    demo.set_defaults(handler=run_demo)


def run_demo(arguments: argparse.Namespace) -> int:
    sinks = start_sinks(3)
    try:
        directory = Path(arguments.directory)
        path = write_demo(directory, [sink.port for sink in sinks], arguments.recipients)
        print(
            f"demo campaign written to {path}; relays on 127.0.0.1 ports {[s.port for s in sinks]}"
        )
        campaign = load_campaign(path)
        display = ProgressDisplay(campaign.name)
        started = time.monotonic()
        summary, stats, report = blast.send(
            campaign, install_signal_handlers=True, on_start=display.attach
        )
        display.close()
        if report is not None:
            print_load(report)
        print_summary(summary, stats)
        print(f"demo finished in {time.monotonic() - started:.1f}s")
        print(f"inspect it: mailblast status {campaign.name} --store {campaign.store}")
    finally:
        for number, sink in enumerate(sinks, start=1):
            print(f"sink{number} received: {sink.stop()}")
    return 0
