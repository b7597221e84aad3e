"""``mailblast plan``: the relays a deadline needs, with the arithmetic shown."""

from __future__ import annotations

import argparse
from typing import Any

from mailblast import blast
from mailblast.cli.status import add_store_option
from mailblast.errors import MailblastError
from mailblast.plan import (
    RULE_HOURS,
    RULE_MESSAGES_PER_SERVER,
    Plan,
    RelayRate,
    campaign_relay_rates,
    per_relay_rate,
    validate_recipients,
)
from mailblast.units import format_duration, parse_duration, parse_rate

LOW_HEADROOM = 0.1


def register(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="compute how many relays a deadline needs",
        description="Compute how many relays of a given or measured rate send N messages within"
        " a deadline, and show the arithmetic. --from-campaign measures each relay's sustained"
        " rate (the median of its per-minute rates while it was sending) from the delivery log"
        " of a campaign in the store.",
    )
    plan.add_argument("--recipients", type=int, required=True, metavar="N", help="messages")
    plan.add_argument(
        "--within", required=True, metavar="DURATION", help="deadline, such as 30m, 4h or 1h30m"
    )
    source = plan.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--relay-rate", metavar="R", help="one relay's rate, such as 200/s or 12000/m"
    )
    source.add_argument(
        "--from-campaign", metavar="NAME", help="measure the relays' rates from this campaign"
    )
    add_store_option(plan)
    plan.set_defaults(handler=run_plan)


def run_plan(arguments: argparse.Namespace) -> int:
    recipients = validate_recipients(arguments.recipients)
    seconds = _deadline(arguments.within)
    if arguments.relay_rate is not None:
        relay_rate = _rate(arguments.relay_rate)
        source = f"given by --relay-rate {arguments.relay_rate}"
    else:
        with blast.opened(arguments.store) as store:
            row = blast.require_campaign(store, arguments.from_campaign)
            rates = campaign_relay_rates(store, row.id, row.name)
        print_measured(arguments.from_campaign, row.status, rates)
        relay_rate = per_relay_rate(rates)
        source = f"the median of the {len(rates)} measured relays"
    print_plan(Plan(recipients, seconds, relay_rate), source)
    return 0


def _deadline(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise MailblastError(f"--within: {error}") from None
    if seconds <= 0:
        raise MailblastError(f"invalid --within {text!r}: the deadline must be longer than 0s")
    return seconds


def _rate(text: str) -> float:
    try:
        return parse_rate(text)
    except ValueError as error:
        raise MailblastError(f"--relay-rate: {error}") from None


def print_measured(name: str, status: str, rates: list[RelayRate]) -> None:
    print(f"sustained rates in campaign {name} (status {status}):")
    for rate in rates:
        if rate.active_minutes:
            plural = "s" if rate.active_minutes != 1 else ""
            minutes = f"median of {rate.active_minutes} active minute{plural}"
        else:
            minutes = "sent in under a minute"
        print(f"  {rate.relay}: {rate.rate:,.1f} msg/s ({rate.accepted:,} accepted, {minutes})")
    if status != "done":
        print("  note: the campaign is not done, so these rates cover the part sent so far")


def print_plan(plan: Plan, source: str) -> None:
    rule_rates = [RULE_MESSAGES_PER_SERVER / (hours * 3600) for hours in RULE_HOURS]
    print(f"plan: {plan.recipients:,} messages within {format_duration(plan.seconds)}")
    print(
        f"  required rate  = {plan.recipients:,} / {plan.seconds:,.0f} s"
        f" = {plan.required_rate:,.1f} msg/s"
    )
    print(f"  per-relay rate = {plan.relay_rate:,.1f} msg/s ({source})")
    print(
        f"  relays         = {plan.required_rate:,.1f} / {plan.relay_rate:,.1f}"
        f" = {plan.required_rate / plan.relay_rate:,.2f}, rounded up to {plan.relays}"
    )
    print(
        f"  capacity       = {plan.relays} x {plan.relay_rate:,.1f} = {plan.capacity:,.1f} msg/s,"
        f" {plan.headroom:.0%} headroom; the send takes about"
        f" {format_duration(plan.finish_seconds)} at full rate"
    )
    print(
        f"  rule of thumb  = 1 server per {RULE_MESSAGES_PER_SERVER:,} messages"
        f" = {plan.rule_of_thumb_servers} servers for a {RULE_HOURS[0]}-{RULE_HOURS[1]} h send,"
        f" which assumes {min(rule_rates):.1f}-{max(rule_rates):.1f} msg/s per server"
        " (the old practice, for comparison only)"
    )
    if plan.headroom < LOW_HEADROOM:
        print(
            f"  note: under {LOW_HEADROOM:.0%} headroom, deferrals or throttling can push the"
            " send past the deadline; plan one more relay"
        )
