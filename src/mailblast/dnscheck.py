"""Check a sending domain's DNS: SPF, DKIM, DMARC, MX and the relays' reverse DNS.

Each check returns findings that are ok, warning or error, and every finding that is not ok
carries a one-line fix. Lookups go through dnspython, to the system's resolver or to the
nameserver the operator names.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dns.exception
import dns.resolver
import dns.reversename
import spf  # pyspf

from mailblast.alignment import organizational_domain
from mailblast.dkimkey import LocalDkimKey, keys_equal, published_key
from mailblast.errors import MailblastError
from mailblast.nameserver import raise_if_unreachable
from mailblast.spfpolicy import (
    LOOKUP_LIMIT,
    IpAddress,
    allows_all,
    check_host,
    count_lookups,
    spf_record,
)

logger = logging.getLogger("mailblast.dnscheck")

# Seconds for one lookup, across its tries. A recursive resolver with a cold cache can take a
# few seconds on a slow authoritative server, so this stays at the common 5 s (dnspython's and
# glibc's default). A silent nameserver costs it once, because the check stops at the first
# lookup that gets no reply at all.
LOOKUP_TIMEOUT = 5.0
TRY_TIMEOUT = 2.0  # seconds to wait for a reply to one UDP query before sending it again
NAMESERVER_FIX = "make sure the nameserver answers for this name, then run the check again"


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One result of the check: what was checked, for which name or address, and the fix."""

    check: str  # SPF, DKIM, DMARC, MX or PTR
    subject: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


def make_resolver(nameserver: str | None, timeout: float | None = None) -> dns.resolver.Resolver:
    """Return the system's resolver, or one that queries only ``nameserver`` (IP or IP:PORT).

    ``timeout`` is the seconds for one lookup, LOOKUP_TIMEOUT by default.
    """
    timeout = LOOKUP_TIMEOUT if timeout is None else timeout
    if nameserver is None:
        resolver = dns.resolver.Resolver()
    else:
        host, port = parse_nameserver(nameserver)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = min(TRY_TIMEOUT, timeout)
    return resolver


def parse_nameserver(text: str) -> tuple[str, int]:
    """Split "192.0.2.53", "192.0.2.53:5353", "::1" or "[::1]:5353" into address and port."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or "53")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise MailblastError(
            f"invalid nameserver {text!r}: use an IP address with an optional port,"
            " such as 127.0.0.1:5353 or [::1]:5353"
        )
    return host, number


class DnsLookupError(Exception):
    """A nameserver replied to a lookup with an error such as SERVFAIL, so that check fails.

    A lookup with no reply at all raises NameserverUnreachable instead.
    """


class Lookups:
    """DNS queries returning record strings; a name without such records gives an empty list."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def __call__(self, name: str, rdtype: str) -> list[str]:
        answer = self.query(name, rdtype)
        if rdtype == "TXT":
            # A TXT record split into several strings is one value (RFC 7208 section 3.3).
            return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
        if rdtype == "MX":
            return [rdata.exchange.to_text(omit_final_dot=True) for rdata in answer]
        return [rdata.to_text().rstrip(".") for rdata in answer]

    def query(self, name: str, rdtype: str) -> list[Any]:
        try:
            return list(self.resolver.resolve(name, rdtype, search=False))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as error:
            logger.debug("lookup of %s %s failed: %s", name, rdtype, error)
            raise_if_unreachable(self.resolver, f"{name} {rdtype}", error)
            raise DnsLookupError(f"lookup of {name} {rdtype} failed: {error}") from error


def check_domain(
    domain: str,
    lookups: Lookups,
    selector: str | None = None,
    dkim_key: LocalDkimKey | None = None,
    relay_ips: Sequence[str] = (),
) -> list[Finding]:
    """Run every check for ``domain`` and return the findings in a stable order."""
    addresses = [_relay_address(text) for text in relay_ips]
    findings = check_spf(domain, lookups, addresses)
    findings += check_dkim(domain, lookups, selector, dkim_key)
    findings += check_dmarc(domain, lookups)
    findings += check_mx(domain, lookups)
    findings += check_ptr(lookups, addresses)
    return findings


def _relay_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as error:
        raise MailblastError(
            f"invalid relay IP {text!r}: give the address relays send from, such as 192.0.2.25"
        ) from error


def check_spf(domain: str, lookups: Lookups, addresses: Sequence[IpAddress]) -> list[Finding]:
    resolver = lookups.resolver
    try:
        record = spf_record(resolver, domain)
    except spf.TempError as error:
        return [Finding("SPF", domain, Status.ERROR, str(error), NAMESERVER_FIX)]
    except spf.PermError as error:
        # pyspf raises this for more than one SPF record and for one that is not ASCII.
        detail = f"{error}; receivers treat this as permerror"
        fix = "keep exactly one TXT record starting with v=spf1, written in ASCII"
        return [Finding("SPF", domain, Status.ERROR, detail, fix)]
    if record is None:
        example = " ".join(_spf_term(address) for address in addresses) or "ip4:ADDRESS"
        fix = f'publish {domain} TXT "v=spf1 {example} -all"'
        return [Finding("SPF", domain, Status.ERROR, "no SPF record", fix)]
    findings = [_spf_lookup_count(domain, resolver, record)]
    if allows_all(record):
        detail = f"{record}: +all authorizes every host on the internet to send as {domain}"
        fix = "end the record with -all (or ~all while testing)"
        findings.append(Finding("SPF", domain, Status.WARNING, detail, fix))
    return findings + [_spf_covers(domain, resolver, address) for address in addresses]


def _spf_term(address: IpAddress) -> str:
    return f"ip{address.version}:{address}"


def _spf_lookup_count(domain: str, resolver: dns.resolver.Resolver, record: str) -> Finding:
    try:
        count = count_lookups(resolver, domain)
    except (spf.PermError, spf.TempError) as error:
        return Finding("SPF", domain, Status.ERROR, f"{record}: {error}", "fix the SPF record")
    if count > LOOKUP_LIMIT:
        detail = (
            f"{record}: needs {count} DNS lookups, more than the limit of {LOOKUP_LIMIT}"
            " (RFC 7208 section 4.6.4), so receivers can return permerror"
        )
        fix = "replace include:, a and mx terms with the ip4:/ip6: ranges they stand for"
        return Finding("SPF", domain, Status.ERROR, detail, fix)
    return Finding("SPF", domain, Status.OK, f"{record} ({count} of {LOOKUP_LIMIT} lookups)")


def _spf_covers(domain: str, resolver: dns.resolver.Resolver, address: IpAddress) -> Finding:
    evaluation = check_host(resolver, address, domain)
    subject = f"{domain} for {address}"
    detail = f"result {evaluation.result}"
    if evaluation.result in ("permerror", "temperror"):
        detail += f": {evaluation.explanation}"
        return Finding("SPF", subject, Status.ERROR, detail, "fix the SPF record so it evaluates")
    if evaluation.result == "pass":
        return Finding("SPF", subject, Status.OK, detail)
    fix = f"add {_spf_term(address)} to the SPF record of {domain} before its all term"
    return Finding("SPF", subject, Status.ERROR, f"{address} is not authorized: {detail}", fix)


def check_dkim(
    domain: str, lookups: Lookups, selector: str | None, local: LocalDkimKey | None
) -> list[Finding]:
    if selector is None:
        detail = "not checked: no selector given"
        fix = "pass --selector S (and --dkim-key FILE to compare the key)"
        return [Finding("DKIM", domain, Status.WARNING, detail, fix)]
    name = f"{selector}._domainkey.{domain}"
    try:
        records = lookups(name, "TXT")
    except DnsLookupError as error:
        return [Finding("DKIM", name, Status.ERROR, str(error), NAMESERVER_FIX)]
    publish = f'publish {name} TXT "{local.record()}"' if local else f"publish {name} TXT"
    if not records:
        return [Finding("DKIM", name, Status.ERROR, "no DKIM key record", publish)]
    if len(records) > 1:
        detail = f"{len(records)} TXT records; verifiers may pick either"
        return [Finding("DKIM", name, Status.ERROR, detail, "keep exactly one key record")]
    return [_dkim_record_finding(name, records[0], local, publish)]


def _dkim_record_finding(
    name: str, record: str, local: LocalDkimKey | None, publish: str
) -> Finding:
    try:
        published = published_key(record)
    except ValueError as error:
        return Finding("DKIM", name, Status.ERROR, f"invalid key record: {error}", publish)
    if local is None:
        detail = f"{published.describe()} published; not compared: no --dkim-key given"
        return Finding("DKIM", name, Status.OK, detail)
    if not keys_equal(published, local):
        detail = f"published {published.describe()} is not the public key of {local.path}"
        return Finding("DKIM", name, Status.ERROR, detail, publish)
    weak = published.weakness()
    if weak:
        return Finding("DKIM", name, Status.WARNING, weak, "generate a 2048-bit RSA key")
    return Finding("DKIM", name, Status.OK, f"{published.describe()} matches {local.path}")


def check_dmarc(domain: str, lookups: Lookups) -> list[Finding]:
    # RFC 7489 section 6.6.3: the domain's own record, else its organizational domain's, which
    # the public suffix list gives (example.co.uk for mail.example.co.uk).
    name = domain.rstrip(".").lower()
    for owner in dict.fromkeys((name, organizational_domain(name))):
        record_name = f"_dmarc.{owner}"
        try:
            texts = lookups(record_name, "TXT")
        except DnsLookupError as error:
            return [Finding("DMARC", record_name, Status.ERROR, str(error), NAMESERVER_FIX)]
        records = [r for r in texts if r.lower().startswith("v=dmarc1")]
        if records:
            return [_dmarc_finding(record_name, records)]
    fix = f'publish _dmarc.{domain} TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@{domain}"'
    return [Finding("DMARC", f"_dmarc.{domain}", Status.ERROR, "no DMARC record", fix)]


def _dmarc_finding(name: str, records: list[str]) -> Finding:
    if len(records) > 1:
        detail = f"{len(records)} DMARC records; receivers ignore them all (RFC 7489 6.6.3)"
        return Finding("DMARC", name, Status.ERROR, detail, "keep exactly one DMARC record")
    tags = dict(
        (part.split("=", 1)[0].strip().lower(), part.split("=", 1)[1].strip())
        for part in records[0].split(";")
        if "=" in part
    )
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        detail = f"{records[0]}: policy p={policy or '(missing)'} is not none/quarantine/reject"
        return Finding("DMARC", name, Status.ERROR, detail, "set p=quarantine or p=reject")
    if policy == "none":
        detail = f"{records[0]}: p=none only monitors; spoofed mail is still delivered"
        fix = "once the reports show all your mail aligned, set p=quarantine or p=reject"
        return Finding("DMARC", name, Status.WARNING, detail, fix)
    return Finding("DMARC", name, Status.OK, f"{records[0]} (policy {policy})")


def check_mx(domain: str, lookups: Lookups) -> list[Finding]:
    try:
        answer = lookups.query(domain, "MX")
    except DnsLookupError as error:
        return [Finding("MX", domain, Status.ERROR, str(error), NAMESERVER_FIX)]
    hosts = sorted((rdata.preference, rdata.exchange.to_text()) for rdata in answer)
    if not hosts:
        fix = f"publish {domain} MX records so replies and bounces to {domain} are delivered"
        return [Finding("MX", domain, Status.ERROR, "no MX record", fix)]
    if hosts == [(0, ".")]:
        detail = "null MX (RFC 7505): the domain accepts no mail, so bounces and replies are lost"
        fix = f"publish {domain} MX records naming hosts that accept mail"
        return [Finding("MX", domain, Status.ERROR, detail, fix)]
    listed = ", ".join(f"{preference} {host}" for preference, host in hosts)
    return [Finding("MX", domain, Status.OK, listed)]


def check_ptr(
    lookups: Lookups, addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> list[Finding]:
    return [_ptr_finding(lookups, address) for address in addresses]


def _ptr_finding(
    lookups: Lookups, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Finding:
    subject = str(address)
    reverse = dns.reversename.from_address(subject).to_text()
    ask = f"ask the owner of {address} (the hosting provider) to set a PTR record naming"
    try:
        names = lookups(reverse, "PTR")
        if not names:
            fix = f"{ask} the relay's host, and an A/AAAA record for that name"
            return Finding("PTR", subject, Status.ERROR, f"no PTR record at {reverse}", fix)
        rdtype = "A" if address.version == 4 else "AAAA"
        confirmed = [name for name in names if subject in _addresses(lookups, name, rdtype)]
    except DnsLookupError as error:
        return Finding("PTR", subject, Status.ERROR, str(error), NAMESERVER_FIX)
    if not confirmed:
        detail = f"PTR names {', '.join(names)}, which does not resolve back to {address}"
        fix = f"publish {names[0]} {rdtype} {address}, or {ask} a name that does"
        return Finding("PTR", subject, Status.ERROR, detail, fix)
    return Finding("PTR", subject, Status.OK, f"{confirmed[0]} (forward-confirmed)")


def _addresses(lookups: Lookups, name: str, rdtype: str) -> set[str]:
    return {str(ipaddress.ip_address(text)) for text in lookups(name, rdtype)}


def count_status(findings: Sequence[Finding], status: Status) -> int:
    return sum(1 for finding in findings if finding.status is status)
