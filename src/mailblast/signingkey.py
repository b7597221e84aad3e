"""DKIM signing keys: read and check a campaign's key files, generate keys, make DNS records.

A key file is PEM, PKCS #8 ("BEGIN PRIVATE KEY"), unencrypted, and contains an RSA key of at
least 2048 bits or an Ed25519 key. Errors name the key file and the campaign key path, never
any part of the key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailblast.config import DkimSettings
from mailblast.dkim import DkimSigner, PrivateKey, SigningKey
from mailblast.errors import ConfigError, MailblastError

MIN_RSA_BITS = 2048
RSA_BITS = 2048
ALGORITHMS = ("rsa", "ed25519")
SECRET_FILE_MODE = 0o600
MAX_TXT_STRING = 255  # RFC 1035 section 3.3.14: a character-string is at most 255 octets
_UNENCRYPTED_HINT = (
    "store it unencrypted, for example with `openssl pkey -in KEY -out NEW.pem`,"
    " and protect the file with mode 0600"
)


def load_signer(settings: Sequence[DkimSettings]) -> DkimSigner | None:
    """Read the campaign's DKIM keys; None when it has none. Raises ConfigError on a bad key."""
    if not settings:
        return None
    return DkimSigner(load_signing_keys(settings))


def load_signing_keys(settings: Sequence[DkimSettings]) -> list[SigningKey]:
    """Read and check every key file; raise ConfigError listing every problem found."""
    problems: list[str] = []
    keys: list[SigningKey] = []
    for index, entry in enumerate(settings):
        path = "dkim" if len(settings) == 1 else f"dkim[{index}]"
        try:
            private_key = read_private_key(entry.private_key_file, f"{path}.private_key_file")
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        keys.append(SigningKey(entry.domain, entry.selector, private_key))

    algorithms = [key.algorithm for key in keys]
    if len(set(algorithms)) < len(algorithms):
        problems.append(
            f"dkim: two keys of type {algorithms[0]}; give at most one RSA and one Ed25519 key"
        )
    if problems:
        raise ConfigError(problems)
    return keys


def read_private_key(file: str, path: str) -> PrivateKey:
    """Read one PEM private key file; ``path`` is the campaign key path for the error."""
    place = f"{path}: {file}"
    try:
        data = Path(file).read_bytes()
    except OSError as error:
        raise ConfigError([f"{place}: cannot read the key file: {error.strerror}"]) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when the key needs a password that was not given.
        raise ConfigError([f"{place}: the private key is encrypted; {_UNENCRYPTED_HINT}"]) from None
    except ValueError:
        raise ConfigError(
            [
                f"{place}: not a PEM private key; expected a PKCS #8 key ('BEGIN PRIVATE KEY')"
                " such as `mailblast dkim keygen` writes"
            ]
        ) from None
    return _check_key_type(key, place)


def _check_key_type(key: object, place: str) -> PrivateKey:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(
            [f"{place}: a {type(key).__name__} is not a DKIM key type; use RSA or Ed25519"]
        )
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(
            [
                f"{place}: the RSA key has {key.key_size} bits; use at least {MIN_RSA_BITS}"
                " (`mailblast dkim keygen` makes one) and publish its new DNS record"
            ]
        )
    return key


def generate_key(algorithm: str) -> PrivateKey:
    """Generate an RSA-2048 or an Ed25519 private key."""
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def private_key_pem(key: PrivateKey) -> bytes:
    """Return the key as unencrypted PKCS #8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dns_record(key: PrivateKey) -> str:
    """Return the DKIM key record (RFC 6376 section 3.6.1) of a key's public half."""
    kind, public = public_key_material(key.public_key())
    return f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode('ascii')}"


def public_key_material(public: object) -> tuple[str, bytes]:
    """Return the ``k=`` key type and the ``p=`` octets of an RSA or Ed25519 public key.

    ``p=`` is the DER SubjectPublicKeyInfo for RSA and the raw 32-octet public key for
    Ed25519 (RFC 8463 section 4). Raises TypeError for another key type.
    """
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "ed25519", public.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa", public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    raise TypeError(f"{type(public).__name__} is not an RSA or Ed25519 public key")


def txt_strings(record: str) -> list[str]:
    """Split a TXT record value into character-strings of at most 255 octets.

    DNS software joins them without a separator, so the split may fall anywhere.
    """
    return [
        record[start : start + MAX_TXT_STRING] for start in range(0, len(record), MAX_TXT_STRING)
    ]


def zone_line(domain: str, selector: str, record: str) -> str:
    """Return the record as a zone-file line: the name, TXT and the quoted strings."""
    quoted = " ".join(f'"{part}"' for part in txt_strings(record))
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"


def write_secret_file(path: Path, data: bytes, force: bool) -> None:
    """Write a key or secret file readable by its owner only; replace one only with ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, SECRET_FILE_MODE)
    except FileExistsError:
        raise MailblastError(
            f"{path} already exists; choose another --output or add --force to replace it"
        ) from None
    except OSError as error:
        raise MailblastError(f"cannot write {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(descriptor, SECRET_FILE_MODE)  # a replaced file may have had a wider mode
        handle.write(data)
