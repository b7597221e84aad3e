"""Unsubscribe tokens and links (RFC 8058 one-click, RFC 2369 List-Unsubscribe).

A token names the campaign and the recipient address and carries an HMAC-SHA256 of both under
the operator's secret, so `mailblast serve` verifies it without a database lookup. Without the
secret, tokens for other addresses can be neither forged nor enumerated. Its form is::

    base64url(campaign "\\n" address) "." base64url(first 16 bytes of the HMAC)

both without padding. The address travels in the URL because the unsubscribe handler must
suppress it without looking it up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

from mailblast.config import UnsubscribeSettings

# Changing the domain string invalidates every token issued before, so it carries a version.
_DOMAIN = b"mailblast-unsubscribe-v1\n"
_MAC_BYTES = 16  # 128 bits: forging one token takes about 2**127 guesses
MAX_TOKEN_LENGTH = 2048
ONE_CLICK = "List-Unsubscribe=One-Click"  # the List-Unsubscribe-Post value (RFC 8058 section 3.1)


class InvalidToken(ValueError):
    """A token that is malformed or whose HMAC does not match: reject it and change nothing."""


@dataclass(frozen=True, slots=True)
class TokenSubject:
    """The campaign and recipient address named by a valid token."""

    campaign: str
    address: str


def make_token(secret: bytes, campaign: str, address: str) -> str:
    """Return the unsubscribe token for one recipient of one campaign."""
    payload = f"{campaign}\n{address}".encode()
    return _b64encode(payload) + "." + _b64encode(_mac(secret, payload))


def verify_token(secret: bytes, token: str) -> TokenSubject:
    """Return the campaign and address a token names; raise InvalidToken when it is not valid."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise InvalidToken("malformed token")
    encoded_payload, encoded_mac = token.split(".")
    try:
        payload = _b64decode(encoded_payload)
        mac = _b64decode(encoded_mac)
    except (binascii.Error, ValueError) as error:
        raise InvalidToken("malformed token") from error
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        raise InvalidToken("token signature does not match")

    campaign, separator, address = payload.decode("utf-8", errors="replace").partition("\n")
    if not separator or not campaign or "@" not in address:
        raise InvalidToken("malformed token")
    return TokenSubject(campaign=campaign, address=address)


class UnsubscribeLinks:
    """The unsubscribe URL and List-Unsubscribe header values of one campaign's recipients."""

    def __init__(self, settings: UnsubscribeSettings, campaign: str, secret: bytes) -> None:
        self.settings = settings
        self.campaign = campaign
        self._secret = secret
        self._separator = "&" if "?" in settings.url else "?"

    def for_recipient(self, address: str) -> RecipientLinks:
        """Return one recipient's URL and List-Unsubscribe value, from a single token."""
        token = make_token(self._secret, self.campaign, address)
        url = f"{self.settings.url}{self._separator}token={token}"
        # The mailto: carries the token in its subject, so a reply to it can be verified the
        # same way as a click. Both are URIs in angle brackets, as RFC 2369 section 2 requires.
        header = f"<{url}>"
        if self.settings.mailto:
            subject = quote(f"unsubscribe {token}", safe="")
            header += f", <mailto:{self.settings.mailto}?subject={subject}>"
        return RecipientLinks(url, header)

    def url(self, address: str) -> str:
        """Return the https URL for one recipient; the value of the template variable too."""
        return self.for_recipient(address).url

    def header_value(self, address: str) -> str:
        """Return the List-Unsubscribe value: the https URL, then the mailto: when configured."""
        return self.for_recipient(address).header


@dataclass(frozen=True, slots=True)
class RecipientLinks:
    """One recipient's unsubscribe URL and List-Unsubscribe header value."""

    url: str
    header: str


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty or non-ASCII base64")
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    # The last character may carry unused low bits; only the canonical spelling is accepted, so
    # each token has exactly one valid form.
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data
