"""DMARC identifier alignment (RFC 7489 section 3.1) in relaxed mode.

Two domains align when they share an organizational domain: the public suffix plus one label,
such as example.co.uk for mail.example.co.uk. The public suffix list comes from the
``publicsuffixlist`` package, which ships a copy of it, so nothing is fetched at run time.
"""

from __future__ import annotations

import functools

import idna
from publicsuffixlist import PublicSuffixList


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()  # parses the bundled list once, about 0.1 s


def organizational_domain(domain: str) -> str:
    """Return a domain's organizational domain in lower-case A-label form.

    A public suffix, a name the list does not cover, or a name that IDNA cannot encode is its
    own organizational domain.
    """
    name = domain.lower().rstrip(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            return name
    return _suffix_list().privatesuffix(name) or name


def aligned(domain: str, from_domain: str) -> bool:
    """Return whether ``domain`` aligns with the From domain in relaxed mode."""
    return organizational_domain(domain) == organizational_domain(from_domain)
