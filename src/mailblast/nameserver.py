"""Tell an unreachable nameserver apart from a failed lookup of one name.

A lookup that times out, or whose every try failed without a reply (connection refused on TCP),
means the nameserver itself is not responding, so every further check would fail the same way.
A reply with an error code, such as SERVFAIL for one name, is a finding about that name.
"""

from __future__ import annotations

import dns.exception
import dns.resolver

from mailblast.errors import MailblastError


class NameserverUnreachable(MailblastError):
    """No nameserver of the resolver replied to a query."""

    def __init__(self, nameservers: str, lookup: str, reason: str) -> None:
        super().__init__(
            f"nameserver {nameservers} did not answer the lookup of {lookup}: {reason}"
        )
        self.nameservers = nameservers
        self.lookup = lookup
        self.reason = reason


def raise_if_unreachable(
    resolver: dns.resolver.Resolver, lookup: str, error: dns.exception.DNSException
) -> None:
    """Raise NameserverUnreachable when ``error`` came with no reply from any nameserver."""
    if not isinstance(error, (dns.exception.Timeout, dns.resolver.NoNameservers)):
        return
    # Each entry is (nameserver, tcp, port, exception or rcode, reply or None).
    tries = error.kwargs.get("errors") or []
    if any(entry[4] is not None for entry in tries):
        return
    if isinstance(error, dns.exception.Timeout):
        reason = f"timed out after {resolver.lifetime:g} s"
    else:
        reason = "; ".join(sorted({str(entry[3]) for entry in tries})) or "no reply"
    raise NameserverUnreachable(describe_nameservers(resolver), lookup, reason)


def describe_nameservers(resolver: dns.resolver.Resolver) -> str:
    """Return the resolver's nameservers as ADDRESS:PORT, comma-separated."""
    addresses = [
        f"[{address}]:{resolver.port}" if ":" in address else f"{address}:{resolver.port}"
        for address in map(str, resolver.nameservers)
    ]
    return ", ".join(addresses)
