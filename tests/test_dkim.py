"""DKIM signatures checked with dkimpy's verifier, and the canonicalization against dkimpy's."""

from __future__ import annotations

import re
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mailblast.compose import Composer
from mailblast.dkim import (
    DkimSigner,
    SigningKey,
    canonicalize_body,
    canonicalize_header,
)
from mailblast.render import CompiledTemplates
from mailblast.signingkey import dns_record
from test_compose import COLUMNS, NOW, ROWS, Row, links_for, make_campaign

DOMAIN = "example.com"
SIGNATURE_START = re.compile(rb"^DKIM-Signature:", re.M)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def signers(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> dict[str, DkimSigner]:
    rsa_signing = SigningKey(DOMAIN, "rsa1", rsa_key)
    ed_signing = SigningKey(DOMAIN, "ed1", ed_key)
    return {
        "rsa": DkimSigner([rsa_signing]),
        "ed25519": DkimSigner([ed_signing]),
        "both": DkimSigner([rsa_signing, ed_signing]),
    }


@pytest.fixture(scope="module")
def records(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> dict[bytes, bytes]:
    return {
        b"rsa1._domainkey.example.com.": dns_record(rsa_key).encode(),
        b"ed1._domainkey.example.com.": dns_record(ed_key).encode(),
    }


def verify_all(data: bytes, records: dict[bytes, bytes]) -> list[bool]:
    """Verify every DKIM-Signature of a message with dkimpy, answering DNS from ``records``."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    results = []
    for index in range(len(SIGNATURE_START.findall(data))):
        try:
            results.append(bool(dkimpy.DKIM(data).verify(idx=index, dnsfunc=dnsfunc)))
        except dkimpy.DKIMException:
            results.append(False)  # dkimpy raises on a body hash mismatch
    return results


def signature_tags(data: bytes) -> list[dict[str, str]]:
    """Return the tags of each DKIM-Signature header, whitespace removed."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    found = re.findall(r"^DKIM-Signature:(.*?)\r\n(?![ \t])", head + "\r\n", re.M | re.S)
    tags = []
    for value in found:
        pairs = (part.split("=", 1) for part in re.sub(r"\s", "", value).split(";"))
        tags.append({name: tag for name, tag in pairs})
    return tags


def refold(data: bytes, width: int) -> bytes:
    """Unfold every header and fold it again at its spaces, with tabs, as a relay may do."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields = []
    for field in re.split(rb"\r\n(?![ \t])", head):
        words = field.replace(b"\r\n", b"").split(b" ")
        lines = [words[0]]
        for word in words[1:]:
            if len(lines[-1]) + 1 + len(word) > width:
                lines.append(b"\t" + word)
            else:
                lines[-1] += b" " + word
        fields.append(b"\r\n".join(lines))
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def make_signing_composer(directory: Path, signer: DkimSigner, **options: bool) -> Composer:
    campaign = make_campaign(directory, **options)
    templates = CompiledTemplates(campaign.templates, COLUMNS)
    return Composer(campaign, templates, unsubscribe=links_for(campaign), dkim=signer)


def compose_row(composer: Composer, row: Row, eight_bit: bool = False) -> bytes:
    composed = composer.compose("k", row.address, row.fields(), row.smtputf8, "t", NOW, eight_bit)
    return composed.data


def test_signed_body_not_8bit(signers: dict[str, DkimSigner], tmp_path: Path) -> None:
    # Even to a relay that offers 8BITMIME: a later hop could re-encode the body.
    composer = make_signing_composer(tmp_path, signers["rsa"])

    data = compose_row(composer, ROWS["accents"], eight_bit=True)

    assert data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in data


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519", "both"])
def test_every_row_verifies(
    tmp_path: Path,
    signers: dict[str, DkimSigner],
    records: dict[bytes, bytes],
    algorithm: str,
) -> None:
    composers = []
    for kind, options in {"both": {}, "text": {"html": False}, "html": {"text": False}}.items():
        (tmp_path / kind).mkdir()
        composers.append(make_signing_composer(tmp_path / kind, signers[algorithm], **options))
    expected = 2 if algorithm == "both" else 1

    for composer in composers:
        for name, row in ROWS.items():
            data = compose_row(composer, row)
            assert verify_all(data, records) == [True] * expected, name


def test_signature_tags(signers: dict[str, DkimSigner], tmp_path: Path) -> None:
    composer = make_signing_composer(tmp_path, signers["both"])

    data = compose_row(composer, ROWS["ascii"])
    rsa_tags, ed_tags = signature_tags(data)

    assert rsa_tags["a"] == "rsa-sha256"
    assert ed_tags["a"] == "ed25519-sha256"
    assert rsa_tags["c"] == "relaxed/relaxed"
    assert (rsa_tags["d"], rsa_tags["s"], ed_tags["s"]) == (DOMAIN, "rsa1", "ed1")
    assert rsa_tags["t"] == str(int(NOW))
    assert rsa_tags["h"] == (
        "From:To:Subject:Date:Message-ID:Reply-To:MIME-Version:Content-Type"
        ":List-Unsubscribe:List-Unsubscribe-Post:From"
    )
    assert ed_tags["h"] == rsa_tags["h"]
    assert ed_tags["bh"] == rsa_tags["bh"]


def test_signature_without_reply_to(signers: dict[str, DkimSigner], tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path, reply_to=None)
    composer = Composer(campaign, CompiledTemplates(campaign.templates), dkim=signers["rsa"])

    data = compose_row(composer, ROWS["ascii"])

    assert signature_tags(data)[0]["h"] == (
        "From:To:Subject:Date:Message-ID:MIME-Version:Content-Type:From"
    )


def test_signature_lines_within_78(signers: dict[str, DkimSigner], tmp_path: Path) -> None:
    composer = make_signing_composer(tmp_path, signers["both"])

    data = compose_row(composer, ROWS["long_name"])
    head = data.split(b"\r\n\r\n", 1)[0]
    signature_lines = head.split(b"\r\nFrom:", 1)[0].split(b"\r\n")

    assert len(signature_lines) > 4
    assert max(len(line) for line in signature_lines) <= 78
    assert all(line[:1] == b" " for line in signature_lines if b"DKIM-Signature" not in line)


@pytest.mark.parametrize("width", [30, 60, 200])
def test_refolded_headers_verify(
    signers: dict[str, DkimSigner], records: dict[bytes, bytes], tmp_path: Path, width: int
) -> None:
    composer = make_signing_composer(tmp_path, signers["both"])

    for name in ("ascii", "cjk", "long_subject", "specials", "smtputf8"):
        data = compose_row(composer, ROWS[name])
        refolded = refold(data, width)

        assert refolded != data
        assert verify_all(refolded, records) == [True, True], name


def test_changed_message_fails(
    signers: dict[str, DkimSigner], records: dict[bytes, bytes], tmp_path: Path
) -> None:
    composer = make_signing_composer(tmp_path, signers["both"])
    data = compose_row(composer, ROWS["ascii"])

    subject = data.replace(b"Subject: Spring sale", b"Subject: Spring sales")
    body = data.replace(b"Prices are down.", b"Prices are up.")
    added_from = data.replace(b"\r\n\r\n", b"\r\nFrom: eve@example.net\r\n\r\n", 1)
    post = data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b"")

    assert verify_all(subject, records) == [False, False]
    assert verify_all(body, records) == [False, False]
    assert verify_all(added_from, records) == [False, False]
    assert verify_all(post, records) == [False, False]


def test_unsigned_without_signer(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    composer = Composer(campaign, CompiledTemplates(campaign.templates))

    data = compose_row(composer, ROWS["ascii"])

    assert b"DKIM-Signature" not in data


@pytest.fixture(scope="module")
def property_composer(
    tmp_path_factory: pytest.TempPathFactory, signers: dict[str, DkimSigner]
) -> Composer:
    return make_signing_composer(tmp_path_factory.mktemp("dkim"), signers["both"], html=False)


# Bodies built from pieces that stress canonicalization: runs of whitespace, trailing
# whitespace, line ends of every kind, lines long enough for quoted-printable, non-ASCII.
BODY_PIECES = ["a", "é", "日", "🎉", " ", "\t", "\n", "\r\n", "\r", "x" * 200, "  \n"]
BODY_TEXT = st.lists(st.sampled_from(BODY_PIECES), max_size=40).map("".join) | st.text()


@settings(max_examples=60, deadline=None)
@given(body=BODY_TEXT, subject=st.text(max_size=120), name=st.text(max_size=60))
def test_random_messages_verify(
    property_composer: Composer,
    records: dict[bytes, bytes],
    body: str,
    subject: str,
    name: str,
) -> None:
    fields = {"name": name, "subject": subject, "body": body}

    data = property_composer.compose("k", "ann@example.com", fields, False, "t", now=NOW).data

    assert verify_all(data, records) == [True, True]
    assert verify_all(refold(data, 40), records) == [True, True]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200) | st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a"])))
def test_body_canonicalization_matches_dkimpy(body: bytes | list[bytes]) -> None:
    data = body if isinstance(body, bytes) else b"".join(body)

    assert canonicalize_body(data) == Relaxed.canonicalize_body(data)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([b"Subject", b"SUBJECT ", b"X-Tab\t"]),
    value=st.lists(st.sampled_from([b" ", b"\t", b"\r\n ", b"\r\n\t", b"a", b"\xc3\xa9"])),
)
def test_header_canonicalization_matches_dkimpy(name: bytes, value: list[bytes]) -> None:
    raw = b"".join(value)
    [(expected_name, expected_value)] = Relaxed.canonicalize_headers([(name, raw)])

    assert canonicalize_header(name + b":" + raw + b"\r\n") == (
        expected_name + b":" + expected_value
    )
