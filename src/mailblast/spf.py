"""SPF evaluation (RFC 7208) for the DNS check: does a domain's policy authorize an IP address?

It implements check_host() for the mechanisms all, include, a, mx, ip4, ip6 and exists, the
redirect modifier, qualifiers and CIDR lengths. Past the limits of section 4.6.4 (10
DNS-querying terms, 2 lookups with an empty answer) the result is permerror. It counts the
terms of the whole record tree too, because a record that passes for one address can exceed
the limit for another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
VOID_LOOKUP_LIMIT = 2  # the same section's limit on lookups that find no records
LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists", "redirect")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Returns the strings of a name's records of one type ("TXT", "A", "AAAA", "MX"); an MX
# string is the exchange's name. Raises DnsLookupError when the lookup fails (not when the
# name has no such records, which is an empty list).
Lookup = Callable[[str, str], list[str]]


class DnsLookupError(Exception):
    """A DNS lookup failed (timeout, SERVFAIL): the SPF result is temperror."""


class SpfPermError(Exception):
    """The policy cannot be evaluated as published (syntax, lookup limit): permerror."""


@dataclass
class Evaluation:
    """The outcome of check_host(): ``result`` is pass, fail, softfail, neutral, none,
    permerror or temperror; ``reason`` explains permerror, temperror and none."""

    result: str
    reason: str = ""
    lookups: int = 0
    unchecked: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Term:
    qualifier: str
    name: str
    value: str  # the domain-spec or address after ":" or "=", without CIDR lengths
    cidr4: int | None
    cidr6: int | None


def spf_records(lookup: Lookup, domain: str) -> list[str]:
    """Return the TXT strings of ``domain`` that are SPF records ("v=spf1" then space or end)."""
    return [
        text
        for text in lookup(domain, "TXT")
        if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")
    ]


def parse_record(record: str) -> list[Term]:
    """Split an SPF record into its terms; raise SpfPermError on an unknown mechanism."""
    terms = []
    for word in record.split()[1:]:
        qualifier = word[0] if word[0] in QUALIFIERS else "+"
        body = word[1:] if word[0] in QUALIFIERS else word
        if "=" in body and ":" not in body.split("=", 1)[0]:
            name, value = body.split("=", 1)
            terms.append(Term("", name.lower(), value, None, None))
            continue
        terms.append(_parse_mechanism(qualifier, body, word))
    return terms


def _parse_mechanism(qualifier: str, body: str, word: str) -> Term:
    head, colon, value = body.partition(":")
    name = head.split("/", 1)[0].lower()
    if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
        raise SpfPermError(f"unknown mechanism {word!r}")
    if colon:
        # A domain name has no "/", so the CIDR lengths start at the first one.
        value, slash, lengths = value.partition("/")
        tail = slash + lengths
    else:
        tail = head[len(name) :]
    cidr4, cidr6 = _cidr_lengths(tail, name == "ip6")
    return Term(qualifier, name, value, cidr4, cidr6)


def _cidr_lengths(tail: str, ip6: bool) -> tuple[int | None, int | None]:
    """Parse "", "/24", "//64" or "/24//64"; for ip6 the single "/N" is the IPv6 length."""
    if not tail:
        return None, None
    if ip6:
        return None, _prefix(tail[1:])
    if tail.startswith("//"):
        return None, _prefix(tail[2:])
    four, _, six = tail[1:].partition("//")
    return _prefix(four), _prefix(six) if six else None


def _prefix(text: str) -> int:
    if not text.isdigit():
        raise SpfPermError(f"invalid CIDR length {text!r}")
    return int(text)


class SpfEvaluator:
    """Evaluates check_host() for one IP address, counting DNS-querying terms."""

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.lookups = 0
        self.void_lookups = 0
        self.unchecked: list[str] = []

    def check_host(self, ip: IpAddress, domain: str) -> Evaluation:
        try:
            result = self._check(ip, domain, top=True)
            return Evaluation(result, "", self.lookups, self.unchecked)
        except SpfPermError as error:
            return Evaluation("permerror", str(error), self.lookups, self.unchecked)
        except DnsLookupError as error:
            return Evaluation("temperror", str(error), self.lookups, self.unchecked)

    def _check(self, ip: IpAddress, domain: str, top: bool = False) -> str:
        records = spf_records(self.lookup, domain)
        if not records:
            if top:
                return "none"
            raise SpfPermError(f"{domain} has no SPF record")
        if len(records) > 1:
            raise SpfPermError(f"{domain} has {len(records)} SPF records; only one is allowed")
        terms = parse_record(records[0])
        redirect = None
        for term in terms:
            if term.name == "redirect":
                redirect = term.value
            elif term.qualifier and self._matches(ip, domain, term):
                return QUALIFIERS[term.qualifier]
        if redirect is not None:
            self._count(f"redirect={redirect}")
            return self._check(ip, redirect)
        return "neutral"

    def _term_lookup(self, name: str, rdtype: str) -> list[str]:
        """Look up a name for a mechanism, counting void lookups (RFC 7208 section 4.6.4)."""
        records = self.lookup(name, rdtype)
        if not records:
            self.void_lookups += 1
            if self.void_lookups > VOID_LOOKUP_LIMIT:
                raise SpfPermError(
                    f"more than {VOID_LOOKUP_LIMIT} lookups with an empty answer (at {name}"
                    f" {rdtype}), the void lookup limit of RFC 7208"
                )
        return records

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise SpfPermError(
                f"more than {LOOKUP_LIMIT} DNS lookups (at {term}), the limit of RFC 7208"
            )

    def _matches(self, ip: IpAddress, domain: str, term: Term) -> bool:
        target = term.value or domain
        if term.name in ("include", "a", "mx", "ptr", "exists"):
            self._count(f"{term.name}:{target}")
        if "%" in target:
            # NOTE: SPF macros are not expanded, so such a term is reported and never matches.
            self.unchecked.append(f"{term.name}:{target} (macros are not evaluated)")
            return False
        if term.name == "all":
            return True
        if term.name == "include":
            return self._check(ip, target) == "pass"
        if term.name in ("ip4", "ip6"):
            return _in_network(ip, term)
        if term.name == "a":
            return self._address_matches(ip, target, term)
        if term.name == "mx":
            return self._mx_matches(ip, target, term)
        if term.name == "exists":
            return bool(self._term_lookup(target, "A"))
        self.unchecked.append(f"ptr:{target} (deprecated by RFC 7208, not evaluated)")
        return False

    def _address_matches(self, ip: IpAddress, host: str, term: Term) -> bool:
        rdtype = "A" if ip.version == 4 else "AAAA"
        prefix = term.cidr4 if ip.version == 4 else term.cidr6
        return any(
            _network_contains(address, prefix, ip) for address in self._term_lookup(host, rdtype)
        )

    def _mx_matches(self, ip: IpAddress, domain: str, term: Term) -> bool:
        exchanges = self._term_lookup(domain, "MX")
        if len(exchanges) > LOOKUP_LIMIT:
            raise SpfPermError(f"{domain} has more than {LOOKUP_LIMIT} MX hosts (RFC 7208 4.6.4)")
        return any(self._address_matches(ip, host, term) for host in exchanges)


def _in_network(ip: IpAddress, term: Term) -> bool:
    prefix = term.cidr4 if term.name == "ip4" else term.cidr6
    return _network_contains(term.value, prefix, ip)


def _network_contains(address: str, prefix: int | None, ip: IpAddress) -> bool:
    """Return whether ``ip`` is in ``address/prefix``; no prefix means the address alone."""
    try:
        text = address if prefix is None else f"{address}/{prefix}"
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as error:
        raise SpfPermError(f"invalid network {address}/{prefix}: {error}") from error
    return network.version == ip.version and ip in network


def count_lookups(lookup: Lookup, domain: str, seen: frozenset[str] = frozenset()) -> int:
    """Count the DNS-querying terms of ``domain``'s record and every record it includes.

    Raises SpfPermError for a loop of includes; lookup failures propagate as DnsLookupError.
    """
    if domain in seen:
        raise SpfPermError(f"include or redirect loop through {domain}")
    records = spf_records(lookup, domain)
    if len(records) != 1:
        return 0
    total = 0
    for term in parse_record(records[0]):
        if term.name not in LOOKUP_TERMS:
            continue
        total += 1
        if term.name in ("include", "redirect") and "%" not in term.value:
            total += count_lookups(lookup, term.value, seen | {domain})
        if total > 2 * LOOKUP_LIMIT:
            break  # far past the limit already; a loop of includes would not end otherwise
    return total
