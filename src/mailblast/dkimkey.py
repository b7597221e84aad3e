"""DKIM public keys: the local key's public half and the key published in a DNS TXT record.

The ``p=`` tag contains base64 of the SubjectPublicKeyInfo for RSA (RFC 6376 section 3.6.1) and
of the raw 32-byte public key for Ed25519 (RFC 8463 section 4). Keys are compared by value, so
an RSA key published as a bare PKCS#1 RSAPublicKey matches as well.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailblast.errors import MailblastError
from mailblast.signingkey import public_key_material

MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: verifiers must not accept smaller keys
GOOD_RSA_BITS = 2048


@dataclass(frozen=True)
class PublishedKey:
    """A public key as published: ``kind`` is "rsa" or "ed25519", ``data`` the decoded p= value."""

    kind: str
    data: bytes
    rsa_numbers: rsa.RSAPublicNumbers | None = None

    def describe(self) -> str:
        if self.rsa_numbers is not None:
            return f"RSA {self.rsa_numbers.n.bit_length()}-bit key"
        return "Ed25519 key"

    def weakness(self) -> str:
        """Return why the key is too weak for today's verifiers, or "" when it is not."""
        if self.rsa_numbers is None or self.rsa_numbers.n.bit_length() >= GOOD_RSA_BITS:
            return ""
        return f"{self.describe()}: shorter than the {GOOD_RSA_BITS} bits receivers expect"


@dataclass(frozen=True)
class LocalDkimKey:
    """The public half of a local private key file (the private key is not kept)."""

    path: str
    key: PublishedKey

    def record(self) -> str:
        """Return the TXT record value that publishes this key."""
        return f"v=DKIM1; k={self.key.kind}; p={base64.b64encode(self.key.data).decode()}"


def load_local_key(path: str | Path) -> LocalDkimKey:
    """Read a PEM private key (RSA or Ed25519) and keep its public half.

    Errors name the file but never include its contents.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise MailblastError(
            f"cannot read DKIM key file {path}: {error.strerror}; check --dkim-key"
        ) from error
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise MailblastError(
            f"DKIM key file {path} is not an unencrypted PEM private key;"
            " give the RSA or Ed25519 key the messages are signed with"
        ) from error
    public = private.public_key()
    try:
        kind, material = public_key_material(public)
    except TypeError:
        raise MailblastError(
            f"DKIM key file {path} contains a {type(private).__name__},"
            " but DKIM uses RSA or Ed25519 keys"
        ) from None
    numbers = public.public_numbers() if isinstance(public, rsa.RSAPublicKey) else None
    return LocalDkimKey(str(path), PublishedKey(kind, material, numbers))


def parse_tags(record: str) -> dict[str, str]:
    """Split a DKIM tag list ("v=DKIM1; k=rsa; p=...") into a dict; whitespace is dropped."""
    tags = {}
    for part in record.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"tag {part.strip()!r} has no '='")
        name, value = part.split("=", 1)
        tags[name.strip()] = "".join(value.split())
    return tags


def published_key(record: str) -> PublishedKey:
    """Parse a DKIM key record; raise ValueError saying what is wrong with it."""
    tags = parse_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        raise ValueError(f"v={tags['v']} is not DKIM1")
    kind = tags.get("k", "rsa").lower()
    if "p" not in tags:
        raise ValueError("the p= tag is missing")
    if not tags["p"]:
        raise ValueError("p= is empty, which means the key is revoked (RFC 6376 section 3.6.1)")
    try:
        data = base64.b64decode(tags["p"], validate=True)
    except binascii.Error as error:
        raise ValueError(f"p= is not valid base64: {error}") from error
    if kind == "ed25519":
        if len(data) != 32:
            raise ValueError(f"an Ed25519 p= must be 32 bytes, not {len(data)}")
        return PublishedKey("ed25519", data)
    if kind != "rsa":
        raise ValueError(f"k={kind} is not rsa or ed25519")
    try:
        public = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError("p= is not a DER RSA public key") from error
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("k=rsa but p= contains another kind of key")
    if public.key_size < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {public.key_size} bits; verifiers reject under 1024")
    return PublishedKey("rsa", data, public.public_numbers())


def keys_equal(published: PublishedKey, local: LocalDkimKey) -> bool:
    if published.kind != local.key.kind:
        return False
    if published.rsa_numbers is not None:
        return published.rsa_numbers == local.key.rsa_numbers
    return published.data == local.key.data
