"""SPF for the DNS check: pyspf evaluates check_host() (RFC 7208) against a chosen resolver.

pyspf applies the limits of RFC 7208 section 4.6.4 (10 DNS-querying terms, 2 void lookups)
and returns permerror past them. Only the lookup count over a whole record tree is ours.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver
import spf  # pyspf

from mailblast.nameserver import raise_if_unreachable

logger = logging.getLogger("mailblast.spfpolicy")

LOOKUP_LIMIT: int = spf.MAX_LOOKUP
LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Held while spf.DNSLookup is swapped, so two threads never evaluate through each other's
# resolver. Reentrant, so a nested swap on the same thread restores in order.
# NOTE: the swap is process-wide, so code calling pyspf directly (without this module) while a
# check runs in another thread also queries that check's resolver.
_DNS_LOOKUP_LOCK = threading.RLock()


@dataclass(frozen=True)
class Evaluation:
    """The outcome of check_host(): pass, fail, softfail, neutral, none, permerror or
    temperror, pyspf's explanation, and the DNS-querying terms it counted."""

    result: str
    explanation: str
    lookups: int


@contextmanager
def resolver_for_pyspf(resolver: dns.resolver.Resolver) -> Iterator[None]:
    """Send pyspf's DNS queries to ``resolver`` until the block ends.

    pyspf 2.0.14 takes no resolver, because every query goes through the module function
    spf.DNSLookup. That function uses dnspython's default resolver through
    dns.resolver.query(), deprecated since dnspython 2.0. So it is replaced for the block and
    restored after it, the way pyspf's own tests replace it with a zone of their own.
    """
    with _DNS_LOOKUP_LOCK:
        original = spf.DNSLookup

        def lookup(name: str, qtype: str, strict: object, timeout: float) -> list[Any]:
            return _lookup(resolver, name, qtype, timeout)

        spf.DNSLookup = lookup
        try:
            yield
        finally:
            spf.DNSLookup = original


def _lookup(
    resolver: dns.resolver.Resolver, name: str, qtype: str, timeout: float
) -> list[tuple[tuple[str, str], Any]]:
    """Query one name for pyspf and return ((name, type), value) pairs as spf.DNSLookup does.

    A name without such records gives an empty list. A query with no reply at all raises
    NameserverUnreachable, and one with an error reply raises spf.TempError.
    """
    lifetime = min(timeout, resolver.lifetime)
    try:
        answer = resolver.resolve(name, qtype, search=False, lifetime=lifetime)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as error:
        logger.debug("lookup of %s %s failed: %s", name, qtype, error)
        raise_if_unreachable(resolver, f"{name} {qtype}", error)
        raise spf.TempError(f"lookup of {name} {qtype} failed: {error}") from error
    return [((name, qtype), _pyspf_value(qtype, rdata)) for rdata in answer]


def _pyspf_value(qtype: str, rdata: Any) -> Any:
    """Convert one rdata to the value pyspf's own dnspython lookup returns for its type."""
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange)
    if qtype == "PTR":
        return rdata.target.to_text(True)
    return rdata.strings  # TXT and SPF: the record's strings, as bytes


def check_host(resolver: dns.resolver.Resolver, ip: IpAddress, domain: str) -> Evaluation:
    """Evaluate ``domain``'s SPF policy for mail from ``ip`` with envelope sender postmaster."""
    query = spf.query(i=str(ip), s=f"postmaster@{domain}", h=domain)
    with resolver_for_pyspf(resolver):
        result, _code, explanation = query.check()
    return Evaluation(result, explanation, query.lookups)


def spf_record(resolver: dns.resolver.Resolver, domain: str) -> str | None:
    """Return ``domain``'s SPF record, or None when it has none.

    Raises spf.PermError for more than one record or one that is not ASCII, and
    spf.TempError when a lookup fails.
    """
    query = spf.query(i=None, s="", h=domain)
    with resolver_for_pyspf(resolver):
        record: str | None = query.dns_spf(domain)
    return record


def allows_all(record: str) -> bool:
    """Return whether the record has an "all" term with the pass qualifier ("+" or none)."""
    return any(word.lower() in ("all", "+all") for word in record.split()[1:])


def count_lookups(
    resolver: dns.resolver.Resolver, domain: str, seen: frozenset[str] = frozenset()
) -> int:
    """Count the DNS-querying terms of ``domain``'s record and of every record it includes.

    This is ours because pyspf counts only the terms evaluated for one address, and a record
    that passes for one address can exceed the limit for another. Raises spf.PermError for a
    loop of includes and spf.TempError when a lookup fails.
    """
    if domain in seen:
        raise spf.PermError(f"include or redirect loop through {domain}")
    record = spf_record(resolver, domain)
    if record is None:
        return 0
    total = 0
    for name, target in _lookup_terms(record, domain):
        total += 1
        if name in ("include", "redirect") and "%" not in target:
            total += count_lookups(resolver, target, seen | {domain})
        if total > 2 * LOOKUP_LIMIT:
            break  # far past the limit already, so stop following a long chain
    return total


def _lookup_terms(record: str, domain: str) -> Iterator[tuple[str, str]]:
    """Yield the name and target domain of each DNS-querying term, parsed by pyspf."""
    for word in record.split()[1:]:
        modifier = spf.RE_MODIFIER.split(word)[1:]
        if len(modifier) == 2:
            name, target = modifier[0].lower(), modifier[1]
        else:
            name, target, _cidr, _cidr6 = spf.parse_mechanism(word.lstrip("+-~?"), domain)
        if name in LOOKUP_TERMS:
            yield name, target or domain
