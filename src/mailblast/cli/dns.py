"""``mailblast dns check``: SPF, DKIM, DMARC, MX and reverse DNS of a sending domain."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from mailblast.cli.exit_codes import EXIT_PROBLEMS_FOUND
from mailblast.dkimkey import load_local_key
from mailblast.dnscheck import Finding, Lookups, Status, check_domain, count_status, make_resolver
from mailblast.errors import MailblastError
from mailblast.nameserver import NameserverUnreachable

STATUS_STYLES = {Status.OK: "green", Status.WARNING: "yellow", Status.ERROR: "bold red"}


def register(commands: Any) -> None:
    dns = commands.add_parser("dns", help="check a sending domain's DNS records")
    actions = dns.add_subparsers(dest="dns_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="check SPF, DKIM, DMARC, MX and the relays' PTR records",
        description="Check the DNS records receivers look at for mail from DOMAIN. Each finding"
        " is ok, warning or error, with the fix. Exit status 1 when there is an error.",
    )
    check.add_argument("domain", help="the sending domain (the From and envelope sender domain)")
    check.add_argument("--selector", metavar="S", help="DKIM selector whose key record to check")
    check.add_argument(
        "--dkim-key",
        metavar="FILE",
        help="PEM private key (RSA or Ed25519) the published key must match; needs --selector",
    )
    check.add_argument(
        "--relay-ip",
        action="append",
        default=[],
        metavar="IP",
        help="address a relay sends from: SPF must cover it and its PTR must resolve back;"
        " repeat for each relay",
    )
    check.add_argument(
        "--nameserver",
        metavar="IP[:PORT]",
        help="ask this DNS server instead of the system's resolver",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(handler=run_check)


def run_check(arguments: argparse.Namespace) -> int:
    if arguments.dkim_key and not arguments.selector:
        raise MailblastError("--dkim-key needs --selector: name the selector the key is under")
    local_key = load_local_key(arguments.dkim_key) if arguments.dkim_key else None
    lookups = Lookups(make_resolver(arguments.nameserver))
    domain = arguments.domain.rstrip(".")
    try:
        findings = check_domain(domain, lookups, arguments.selector, local_key, arguments.relay_ip)
    except NameserverUnreachable as error:
        # The message already has the lookup and the reason, so no "caused by" line repeats it.
        raise MailblastError(f"{error}; {unreachable_fix(arguments.nameserver)}") from None
    if arguments.json:
        print(findings_json(domain, findings))
    else:
        print_findings(domain, findings)
    return EXIT_PROBLEMS_FOUND if count_status(findings, Status.ERROR) else 0


def unreachable_fix(nameserver: str | None) -> str:
    if nameserver is None:
        return "check the nameservers in /etc/resolv.conf, or name one with --nameserver IP[:PORT]"
    return (
        f"check that {nameserver} is the address and port of a DNS server that answers,"
        " or omit --nameserver to use the system's resolver"
    )


def findings_json(domain: str, findings: list[Finding]) -> str:
    document = {
        "domain": domain,
        "errors": count_status(findings, Status.ERROR),
        "warnings": count_status(findings, Status.WARNING),
        "findings": [finding.as_dict() for finding in findings],
    }
    return json.dumps(document, indent=2)


def print_findings(domain: str, findings: list[Finding]) -> None:
    table = Table(title=f"DNS check of {domain}", show_lines=True)
    for column in ("check", "name", "status", "finding", "fix"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        status = f"[{STATUS_STYLES[finding.status]}]{finding.status}[/]"
        table.add_row(finding.check, finding.subject, status, finding.detail, finding.fix)
    console = Console()
    console.print(table)
    errors = count_status(findings, Status.ERROR)
    warnings = count_status(findings, Status.WARNING)
    console.print(f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}", markup=False)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
