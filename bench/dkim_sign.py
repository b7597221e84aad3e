"""Measure the cost of DKIM signing and List-Unsubscribe per message, with dkimpy as reference.

Every case composes or signs the same personalized message (a text and an HTML part, about
2 kB) ``--messages`` times per run. It reports the CPU time per message in microseconds,
measured with ``time.process_time``, which other processes on a busy machine do not inflate:

- ``compose``: Composer.compose without unsubscribe or DKIM;
- ``compose+unsubscribe``: with the List-Unsubscribe headers and the ``unsubscribe_url`` variable;
- ``compose+unsubscribe+rsa`` / ``+ed25519`` / ``+both``: also signed, as the engine sends;
- ``sign rsa`` / ``sign ed25519``: DkimSigner alone over an already composed message;
- ``dkimpy rsa`` / ``dkimpy ed25519``: ``dkim.sign`` from dkimpy over the same message, same
  key, same header list and relaxed/relaxed: the reference.

Usage, from the repository root::

    .venv/bin/python bench/dkim_sign.py [--messages 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import base64
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailblast.compose import Composer
from mailblast.config import Campaign, UnsubscribeSettings, parse_campaign
from mailblast.dkim import SIGNED_HEADERS, DkimSigner, SigningKey
from mailblast.render import CompiledTemplates
from mailblast.signingkey import private_key_pem
from mailblast.unsubscribe import UnsubscribeLinks

TEXT = (
    "Dear {{ name }},\n\nOur spring sale starts on Monday. As a customer since {{ since }} you"
    " get early access.\n\n" + "Prices are down on every item in the catalogue. " * 12 + "\n\n"
    "Unsubscribe: {{ unsubscribe_url }}\n"
)
HTML = "<html><body><p>Dear {{ name }},</p><p>" + "Prices are down. " * 20 + "</p></body></html>\n"
FIELDS = {"email": "zoe@example.com", "name": "Zoë Ångström", "since": "2019"}


def make_campaign(directory: Path, text: str) -> Campaign:
    (directory / "list.csv").write_text("email,name,since\n", encoding="utf-8")
    (directory / "body.txt").write_text(text, encoding="utf-8")
    (directory / "body.html").write_text(HTML, encoding="utf-8")
    data = {
        "campaign": {
            "name": "spring-sale",
            "from": "Shop <news@example.com>",
            "subject": "{{ name }}, our spring sale starts Monday",
            "to_name": "{{ name }}",
            "text": "body.txt",
            "html": "body.html",
        },
        "recipients": {"path": "list.csv"},
        "relay": [{"name": "local", "host": "127.0.0.1"}],
    }
    return parse_campaign(data, base_dir=directory, source="bench.toml")


def make_composers(directory: Path) -> tuple[Composer, Callable[[DkimSigner | None], Composer]]:
    """Return a Composer without unsubscribe and a factory for the configured ones."""
    (directory / "plain").mkdir()
    plain = make_campaign(directory / "plain", TEXT.replace("{{ unsubscribe_url }}", "-"))
    campaign = make_campaign(directory, TEXT)
    templates = CompiledTemplates(campaign.templates)
    settings = UnsubscribeSettings(url="https://example.com/unsubscribe", mailto="u@example.com")
    links = UnsubscribeLinks(settings, campaign.name, b"0123456789abcdef0123456789abcdef")

    def composer(signer: DkimSigner | None) -> Composer:
        return Composer(campaign, templates, unsubscribe=links, dkim=signer)

    return Composer(plain, CompiledTemplates(plain.templates)), composer


def per_message(action: Callable[[int], object], messages: int) -> float:
    """Run ``action`` for each message number and return CPU microseconds per message."""
    started = time.process_time()
    for number in range(messages):
        action(number)
    return (time.process_time() - started) / messages * 1e6


def dkimpy_signer(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        secret, algorithm = base64.b64encode(raw), b"ed25519-sha256"
    else:
        secret, algorithm = private_key_pem(key), b"rsa-sha256"
    headers = [name.encode("ascii") for name in SIGNED_HEADERS] + [b"From"]

    def sign(message: bytes) -> bytes:
        signature: bytes = dkimpy.sign(
            message,
            b"s1",
            b"example.com",
            secret,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=headers,
            signature_algorithm=algorithm,
        )
        return signature

    return sign


def build_cases(directory: Path) -> dict[str, Callable[[int], object]]:
    rsa_key = SigningKey("example.com", "s1", rsa.generate_private_key(65537, 2048))
    ed_key = SigningKey("example.com", "s2", ed25519.Ed25519PrivateKey.generate())
    plain, composer = make_composers(directory)
    configured = {
        "compose+unsubscribe": composer(None),
        "compose+unsubscribe+rsa": composer(DkimSigner([rsa_key])),
        "compose+unsubscribe+ed25519": composer(DkimSigner([ed_key])),
        "compose+unsubscribe+both": composer(DkimSigner([rsa_key, ed_key])),
    }
    message = composer(None).compose("k", "zoe@example.com", FIELDS, False, "t").data
    cases: dict[str, Callable[[int], object]] = {
        "compose": lambda n: plain.compose(str(n), f"r{n}@example.com", FIELDS, False, "t"),
    }
    for name, configured_composer in configured.items():
        cases[name] = lambda n, c=configured_composer: c.compose(
            str(n), f"r{n}@example.com", FIELDS, False, "t"
        )
    for label, key in (("rsa", rsa_key), ("ed25519", ed_key)):
        signer = DkimSigner([key])
        cases[f"sign {label}"] = lambda n, signer=signer: signer.signature_headers(message, n)
        reference = dkimpy_signer(key.private_key)
        cases[f"dkimpy {label}"] = lambda n, reference=reference: reference(message)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per case and run")
    parser.add_argument("--runs", type=int, default=5, help="runs per case")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        cases = build_cases(Path(directory))
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(arguments.runs):  # interleaved, so drift in machine load hits all cases
            for name, action in cases.items():
                results[name].append(per_message(action, arguments.messages))

    print(f"python {platform.python_version()}, {arguments.runs} runs of {arguments.messages}")
    print(f"{'case (CPU time per message)':30} {'median µs':>10} {'min–max µs':>18}")
    for name, values in results.items():
        low, high = min(values), max(values)
        print(f"{name:30} {statistics.median(values):10.1f} {low:8.1f}–{high:<9.1f}")
    for label in ("rsa", "ed25519"):
        ratio = statistics.median(results[f"dkimpy {label}"]) / statistics.median(
            results[f"sign {label}"]
        )
        print(f"dkimpy / mailblast, {label}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
