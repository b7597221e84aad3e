"""DKIM signatures (RFC 6376) with rsa-sha256 and ed25519-sha256 (RFC 8463), relaxed/relaxed.

The signer canonicalizes the message once, hashes the canonical body and the signed header
fields once, and signs with OpenSSL through ``cryptography``. With two keys (one RSA, one
Ed25519) only the DKIM-Signature header itself is hashed per key. The signature covers the
bytes it is given, so it must be computed after every header is final and the bytes must go to
the relay unchanged.

The DKIM-Signature header is folded within 78 characters at points where RFC 6376 allows
folding whitespace (between tags, around the colons of ``h=`` and inside base64 values), so a
relay has no reason to re-wrap it. Relaxed canonicalization keeps it valid if one does.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

CRLF = b"\r\n"
MAX_LINE = 78
HEADER_NAME = "DKIM-Signature"
# The header fields signed when present, in this order. RFC 8058 section 4 requires the two
# List-Unsubscribe fields to be signed for one-click unsubscribe.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"

_FIELD_START = re.compile(rb"\r\n(?![ \t])")  # a line break that does not start a fold
_TRAILING_WSP = re.compile(rb"[ \t]+\r\n")
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")  # any whitespace run other than one space
_BASE64_PIECE = 4

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key and the DKIM identity it signs for: ``d=`` domain and ``s=`` selector."""

    domain: str  # A-label form
    selector: str
    private_key: PrivateKey = field(repr=False)

    @property
    def algorithm(self) -> str:
        """Return the ``a=`` tag value for this key's type."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return ED25519_SHA256
        return RSA_SHA256

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonical header data.

        RSA signs it as a PKCS #1 v1.5 SHA-256 signature. Ed25519 signs the 32 digest octets
        themselves with PureEdDSA, as RFC 8463 section 3 specifies.
        """
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(digest)
        return self.private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


class DkimSigner:
    """Sign messages with one or two keys; one signature per key, in the order given."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("a DKIM signer needs at least one key")
        self.keys = tuple(keys)

    def signature_headers(self, message: bytes, timestamp: int) -> bytes:
        """Return the folded DKIM-Signature header lines to put above ``message``.

        ``message`` is the complete message with CRLF line ends. ``timestamp`` is the ``t=``
        tag, in seconds since the epoch.
        """
        head, _, body = message.partition(b"\r\n\r\n")
        body_hash = base64.b64encode(hashlib.sha256(canonicalize_body(body)).digest())
        names, signed = canonical_headers(head, SIGNED_HEADERS)
        prefix_hash = hashlib.sha256(signed)

        lines = []
        for key in self.keys:
            tags = _tags(key, timestamp, names, body_hash.decode("ascii"))
            unsigned = _fold([*tags, "b="])
            digest = prefix_hash.copy()
            digest.update(canonicalize_header(unsigned.encode("ascii")).removesuffix(CRLF))
            signature = base64.b64encode(key.sign_digest(digest.digest())).decode("ascii")
            lines.append(_fold([*tags, "b=" + signature]).encode("ascii"))
        return b"".join(lines)

    def sign(self, message: bytes, timestamp: int) -> bytes:
        """Return ``message`` with its DKIM-Signature headers on top."""
        return self.signature_headers(message, timestamp) + message


def canonicalize_body(body: bytes) -> bytes:
    """Apply the relaxed body canonicalization of RFC 6376 section 3.4.4.

    Whitespace at line ends is removed, other runs become one space, and empty lines at the end
    are dropped. A body that is empty after this stays empty; any other ends in one CRLF.
    """
    body = _TRAILING_WSP.sub(CRLF, body)
    body = _WSP_RUN.sub(b" ", body)
    end = len(body)
    while body.endswith(CRLF, 0, end):
        end -= 2
    if end == 0:
        return b""
    return body[:end] + CRLF


def canonicalize_header(field: bytes) -> bytes:
    """Apply the relaxed header canonicalization of RFC 6376 section 3.4.2 to one field.

    ``field`` is the raw field, folded or not, with or without its final CRLF.
    """
    name, _, value = field.partition(b":")
    value = value.replace(CRLF, b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" \t\r\n")
    return name.rstrip(b" \t").lower() + b":" + value + CRLF


def canonical_headers(head: bytes, names_to_sign: Sequence[str]) -> tuple[list[str], bytes]:
    """Return the ``h=`` names and the canonical fields they select from a header block.

    Each name to sign that is present is listed once, then From once more so that a From field
    added below the signature makes it fail (RFC 6376 section 8.15). Fields are taken from the
    bottom up when a name repeats, as section 5.4.2 specifies. A listed name without a field
    left selects nothing.
    """
    fields: dict[bytes, list[bytes]] = {}
    for raw in _FIELD_START.split(head):
        name = raw.partition(b":")[0].rstrip(b" \t").lower()
        fields.setdefault(name, []).append(raw)

    names = [name for name in names_to_sign if name.lower().encode("ascii") in fields]
    names.append("From")
    selected = []
    for name in names:
        instances = fields.get(name.lower().encode("ascii"))
        if instances:
            selected.append(canonicalize_header(instances.pop()))
    return names, b"".join(selected)


def _tags(key: SigningKey, timestamp: int, names: list[str], body_hash: str) -> list[str]:
    return [
        "v=1",
        f"a={key.algorithm}",
        "c=relaxed/relaxed",
        f"d={key.domain}",
        f"s={key.selector}",
        f"t={timestamp}",
        "h=" + ":".join(names),
        f"bh={body_hash}",
    ]


def _fold(tags: list[str]) -> str:
    """Write the DKIM-Signature header with its tags, folded within 78 characters.

    Each tag is cut into pieces at the points where RFC 6376 allows folding whitespace. A
    tag's first piece follows a space or a fold, the others follow the previous piece directly
    or a fold.
    """
    lines = [HEADER_NAME + ":"]
    last = len(tags) - 1
    for index, tag in enumerate(tags):
        end = "" if index == last else ";"
        for number, piece in enumerate(_pieces(tag + end)):
            joint = " " if number == 0 else ""
            if len(lines[-1]) + len(joint) + len(piece) <= MAX_LINE:
                lines[-1] += joint + piece
            else:
                lines.append(" " + piece)
    return "\r\n".join(lines) + "\r\n"


def _pieces(tag: str) -> Iterator[str]:
    name, _, value = tag.partition("=")
    if name == "h":
        pieces = [header + ":" for header in value.split(":")]
        pieces[-1] = pieces[-1][:-1]
        pieces[0] = "h=" + pieces[0]
        yield from pieces
    elif name in ("b", "bh"):
        # The name stays with the first characters of the value, so no line ends in "b=".
        # Relaxed canonicalization makes the signed header the same wherever the fold falls.
        yield name + "=" + value[:_BASE64_PIECE]
        for start in range(_BASE64_PIECE, len(value), _BASE64_PIECE):
            yield value[start : start + _BASE64_PIECE]
    else:
        yield tag
