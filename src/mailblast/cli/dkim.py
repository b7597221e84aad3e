"""The ``mailblast dkim`` command group: generate a signing key and its DNS record."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mailblast.config import normalize_dns_name
from mailblast.errors import MailblastError
from mailblast.signingkey import (
    ALGORITHMS,
    dns_record,
    generate_key,
    private_key_pem,
    write_secret_file,
    zone_line,
)


def register(commands: Any) -> None:
    group = commands.add_parser(
        "dkim", help="DKIM signing keys", description="Manage DKIM signing keys."
    )
    actions = group.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    keygen = actions.add_parser(
        "keygen",
        help="generate a key and print its DNS record",
        description="Write a new private key (PKCS #8 PEM, mode 0600) for the campaign's"
        " [dkim] private_key_file, and print the TXT record to publish at"
        " SELECTOR._domainkey.DOMAIN.",
    )
    keygen.add_argument("--domain", required=True, help="signing domain, the d= tag")
    keygen.add_argument("--selector", required=True, help="selector, the s= tag")
    keygen.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="rsa",
        help="rsa (2048 bits, accepted everywhere; default) or ed25519 (RFC 8463)",
    )
    keygen.add_argument("--output", required=True, metavar="FILE", help="private key file")
    keygen.add_argument("--force", action="store_true", help="replace an existing FILE")
    keygen.set_defaults(handler=run_keygen)


def run_keygen(arguments: argparse.Namespace) -> int:
    domain = normalize_dns_name(arguments.domain, min_labels=2)
    if domain is None:
        raise MailblastError(f"--domain {arguments.domain!r} is not a domain name")
    selector = normalize_dns_name(arguments.selector, min_labels=1)
    if selector is None:
        raise MailblastError(
            f"--selector {arguments.selector!r} is not valid; use DNS labels such as s1"
        )

    key = generate_key(arguments.algorithm)
    output = Path(arguments.output)
    write_secret_file(output, private_key_pem(key), arguments.force)
    print(
        f"wrote the {arguments.algorithm} private key to {output} (mode 0600); publish this"
        f" TXT record at {selector}._domainkey.{domain}:",
        file=sys.stderr,
    )
    print(zone_line(domain, selector, dns_record(key)))
    return 0
