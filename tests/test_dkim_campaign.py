"""DKIM in the campaign file, key files, `mailblast dkim keygen`, check warnings, a signed blast."""

from __future__ import annotations

import json
import logging
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.alignment import aligned
from mailblast.cli.main import main
from mailblast.config import Campaign, load_campaign
from mailblast.demo import write_demo
from mailblast.errors import ConfigError
from mailblast.signingkey import dns_record, private_key_pem, read_private_key, txt_strings
from mailblast.sink import ThreadedSink
from test_dkim import verify_all

SECRET_ENV = "MAILBLAST_TEST_UNSUBSCRIBE_SECRET"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write one key file of each kind the checks tell apart."""
    directory = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (directory / "rsa.pem").write_bytes(private_key_pem(rsa_key))
    (directory / "ed.pem").write_bytes(private_key_pem(ed_key))
    (directory / "rsa-copy.pem").write_bytes(private_key_pem(rsa_key))
    (directory / "small.pem").write_bytes(private_key_pem(small))
    (directory / "ec.pem").write_bytes(private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (directory / "encrypted.pem").write_bytes(encrypted)
    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (directory / "public.pem").write_bytes(public)
    return directory


def dkim_table(key_file: Path, selector: str = "s1", domain: str = "example.com") -> str:
    return f'domain = "{domain}"\nselector = "{selector}"\nprivate_key_file = "{key_file}"\n'


def campaign_with(tmp_path: Path, tables: str, port: int = 2525, count: int = 3) -> Path:
    """Write a campaign whose file ends with the given TOML tables."""
    write_list(tmp_path / "attendees.csv", person_rows(count))
    path = write_campaign(tmp_path, [relay_block("sink", port)])
    path.write_text(path.read_text(encoding="utf-8") + "\n" + tables, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        blast.dkim_signer(load_campaign(path))
    return caught.value.problems


def test_dkim_table_read(tmp_path: Path, key_dir: Path) -> None:
    path = campaign_with(
        tmp_path, "[dkim]\n" + dkim_table(key_dir / "rsa.pem", "S1", "Example.COM")
    )

    campaign = load_campaign(path)

    assert len(campaign.dkim) == 1
    assert campaign.dkim[0].domain == "example.com"
    assert campaign.dkim[0].selector == "s1"
    assert campaign.dkim[0].private_key_file == str(key_dir / "rsa.pem")


def test_dkim_store_keeps_path_only(tmp_path: Path, key_dir: Path) -> None:
    path = campaign_with(tmp_path, "[dkim]\n" + dkim_table(key_dir / "rsa.pem"))
    campaign = load_campaign(path)

    saved = json.dumps(campaign.to_dict())

    assert "PRIVATE KEY" not in saved
    assert str(key_dir / "rsa.pem") in saved
    assert Campaign.from_dict(json.loads(saved)) == campaign


def test_dkim_two_tables_sign_twice(tmp_path: Path, key_dir: Path) -> None:
    tables = "[[dkim]]\n" + dkim_table(key_dir / "rsa.pem", "r1")
    tables += "[[dkim]]\n" + dkim_table(key_dir / "ed.pem", "e1")
    campaign = load_campaign(campaign_with(tmp_path, tables))

    signer = blast.dkim_signer(campaign)

    assert signer is not None
    assert [key.algorithm for key in signer.keys] == ["rsa-sha256", "ed25519-sha256"]
    assert [key.selector for key in signer.keys] == ["r1", "e1"]


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ('[dkim]\ndomain = "example.com"\n', "dkim.selector: missing"),
        ('[dkim]\ndomain = "example.com"\nselector = "s1"\n', "dkim.private_key_file: missing"),
        (
            '[dkim]\ndomain = "not a domain"\nselector = "s1"\nprivate_key_file = "k.pem"\n',
            "dkim.domain: 'not a domain' is not a valid domain name",
        ),
        (
            '[dkim]\ndomain = "localhost"\nselector = "s1"\nprivate_key_file = "k.pem"\n',
            "dkim.domain: 'localhost' is not a valid domain name",
        ),
        (
            '[dkim]\ndomain = "example.com"\nselector = "s_1"\nprivate_key_file = "k.pem"\n',
            "dkim.selector: 's_1' is not a valid selector",
        ),
        (
            '[dkim]\ndomain = "example.com"\nselector = "s1"\nprivate_key_file = "none.pem"\n',
            "dkim.private_key_file: key file",
        ),
        ('[dkim]\ndomain = "example.com"\nkey = "x"\n', "dkim.key: unknown key"),
        ("[[dkim]]\n[[dkim]]\n[[dkim]]\n", "dkim: expected a [dkim] table or 1 to 2"),
    ],
)
def test_dkim_table_problems(tmp_path: Path, tables: str, message: str) -> None:
    (tmp_path / "k.pem").write_text("placeholder", encoding="utf-8")
    path = campaign_with(tmp_path, tables)

    with pytest.raises(ConfigError) as caught:
        load_campaign(path)

    assert any(message in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("small.pem", "the RSA key has 1024 bits; use at least 2048"),
        ("encrypted.pem", "the private key is encrypted; store it unencrypted"),
        ("public.pem", "not a PEM private key"),
        ("ec.pem", "is not a DKIM key type; use RSA or Ed25519"),
    ],
)
def test_dkim_key_problems(tmp_path: Path, key_dir: Path, name: str, message: str) -> None:
    path = campaign_with(tmp_path, "[dkim]\n" + dkim_table(key_dir / name))

    [problem] = problems_of(path)

    assert problem.startswith(f"dkim.private_key_file: {key_dir / name}: ")
    assert message in problem


def test_dkim_key_unreadable(tmp_path: Path, key_dir: Path) -> None:
    path = campaign_with(tmp_path, "[dkim]\n" + dkim_table(key_dir / "rsa.pem"))
    campaign = load_campaign(path)
    (key_dir / "rsa.pem").rename(key_dir / "moved.pem")
    try:
        with pytest.raises(ConfigError) as caught:
            blast.dkim_signer(campaign)
    finally:
        (key_dir / "moved.pem").rename(key_dir / "rsa.pem")

    assert caught.value.problems == [
        f"dkim.private_key_file: {key_dir / 'rsa.pem'}: cannot read the key file:"
        " No such file or directory"
    ]


def test_dkim_two_keys_same_type(tmp_path: Path, key_dir: Path) -> None:
    tables = "[[dkim]]\n" + dkim_table(key_dir / "rsa.pem", "r1")
    tables += "[[dkim]]\n" + dkim_table(key_dir / "rsa-copy.pem", "r2")
    path = campaign_with(tmp_path, tables)

    assert problems_of(path) == [
        "dkim: two keys of type rsa-sha256; give at most one RSA and one Ed25519 key"
    ]


def test_dkim_second_key_problem_path(tmp_path: Path, key_dir: Path) -> None:
    tables = "[[dkim]]\n" + dkim_table(key_dir / "rsa.pem", "r1")
    tables += "[[dkim]]\n" + dkim_table(key_dir / "small.pem", "r2")

    [problem] = problems_of(campaign_with(tmp_path, tables))

    assert problem.startswith("dkim[1].private_key_file: ")


def keygen(capsys: pytest.CaptureFixture[str], output: Path, *options: str) -> tuple[int, str, str]:
    arguments = ["dkim", "keygen", "--domain", "example.com", "--selector", "s1"]
    code = main([*arguments, "--output", str(output), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def published_record(zone_line: str) -> bytes:
    """Join the quoted strings of a printed zone-file line, as a resolver returns them."""
    assert zone_line.startswith("s1._domainkey.example.com. IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', zone_line)
    assert all(len(string) <= 255 for string in strings)
    return "".join(strings).encode("ascii")


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_signs_verifiably(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, algorithm: str
) -> None:
    key_file = tmp_path / "dkim.pem"

    code, out, err = keygen(capsys, key_file, "--algorithm", algorithm)
    record = published_record(out.strip())
    path = campaign_with(tmp_path, "[dkim]\n" + dkim_table(key_file))
    data = blast.preview(load_campaign(path))

    assert code == 0
    assert "publish this TXT record at s1._domainkey.example.com" in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert record.startswith(f"v=DKIM1; k={algorithm}; p=".encode())
    assert verify_all(data, {b"s1._domainkey.example.com.": record}) == [True]


def test_keygen_record_split(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _, out, _ = keygen(capsys, tmp_path / "dkim.pem")

    assert out.count('"') == 4  # an RSA-2048 record is about 410 octets: two strings
    assert txt_strings("x" * 511) == ["x" * 255, "x" * 255, "x"]


def test_keygen_refuses_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_text("old", encoding="utf-8")
    key_file.chmod(0o644)

    code, _, err = keygen(capsys, key_file, "--algorithm", "ed25519")
    assert code == 2
    assert "already exists; choose another --output or add --force" in err
    assert key_file.read_text(encoding="utf-8") == "old"

    code, _, _ = keygen(capsys, key_file, "--algorithm", "ed25519", "--force")
    assert code == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_keygen_invalid_domain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    arguments = ["dkim", "keygen", "--domain", "bad domain", "--selector", "s1"]
    code = main([*arguments, "--output", str(tmp_path / "k.pem")])

    assert code == 2
    assert "--domain 'bad domain' is not a domain name" in capsys.readouterr().err
    assert not (tmp_path / "k.pem").exists()


def check_output(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["check", str(path)])
    return code, capsys.readouterr().out


def unsubscribe_table(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, "0123456789abcdef0123")
    return f'[unsubscribe]\nurl = "https://example.com/u"\nsecret_env = "{SECRET_ENV}"\n'


def test_check_aligned_campaign_no_warnings(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key_dir: Path,
) -> None:
    tables = "[dkim]\n" + dkim_table(key_dir / "ed.pem", domain="mail.example.com")
    path = campaign_with(tmp_path, tables + unsubscribe_table(monkeypatch))

    code, out = check_output(capsys, path)

    assert code == 0
    assert "warning" not in out


def test_check_warns_without_dkim_and_unsubscribe(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = check_output(capsys, campaign_with(tmp_path, ""))

    assert code == 0
    assert "warning: no [dkim] table: messages are not DKIM-signed" in out
    assert "warning: no [unsubscribe] table" in out
    assert "aligns" not in out  # the envelope sender bounces@example.com aligns


def test_check_warns_unaligned_domains(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key_dir: Path,
) -> None:
    tables = "[dkim]\n" + dkim_table(key_dir / "ed.pem", domain="example.co.uk")
    path = campaign_with(tmp_path, tables + unsubscribe_table(monkeypatch))
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("bounces@example.com", "bounces@example.net"), encoding="utf-8")

    code, out = check_output(capsys, path)

    assert code == 0
    assert (
        "warning: neither the DKIM domain (example.co.uk) nor the envelope sender domain"
        " (example.net) aligns with the From domain (example.com)"
    ) in out
    assert out.count("warning") == 1


def test_check_reports_bad_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, key_dir: Path
) -> None:
    path = campaign_with(tmp_path, "[dkim]\n" + dkim_table(key_dir / "small.pem"))

    code = main(["check", str(path)])

    assert code == 2
    assert "dkim.private_key_file:" in capsys.readouterr().err


def test_signed_blast_verifies(
    tmp_path: Path,
    key_dir: Path,
    start_sink: Callable[..., ThreadedSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = start_sink(keep_messages=True)
    tables = "[[dkim]]\n" + dkim_table(key_dir / "rsa.pem", "r1")
    tables += "[[dkim]]\n" + dkim_table(key_dir / "ed.pem", "e1")
    path = campaign_with(tmp_path, tables + unsubscribe_table(monkeypatch), sink.port, count=40)
    records = {
        b"r1._domainkey.example.com.": public_record(key_dir / "rsa.pem"),
        b"e1._domainkey.example.com.": public_record(key_dir / "ed.pem"),
    }
    caplog.set_level(logging.DEBUG)

    summary, _, _ = blast.send(load_campaign(path))

    assert summary.counts["sent"] == 40
    assert len(sink.stats.received) == 40
    for message in sink.stats.received:
        assert verify_all(message.data, records) == [True, True]
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in message.data
    assert "PRIVATE KEY" not in caplog.text


def public_record(key_file: Path) -> bytes:
    return dns_record(read_private_key(str(key_file), "test")).encode("ascii")


def test_keygen_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["dkim", "keygen", "--help"])

    assert exited.value.code == 0
    assert "--algorithm {rsa,ed25519}" in capsys.readouterr().out


def test_demo_campaign_signed(tmp_path: Path) -> None:
    path = write_demo(tmp_path, [2525, 2526, 2527], 5)
    campaign = load_campaign(path)
    record = public_record(tmp_path / "dkim-demo.pem")

    data = blast.preview(campaign)

    assert campaign.unsubscribe is not None
    assert stat.S_IMODE((tmp_path / "unsubscribe.secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dkim-demo.pem").stat().st_mode) == 0o600
    assert b"\r\nList-Unsubscribe: <http://127.0.0.1:8025/unsubscribe?token=" in data
    assert verify_all(data, {b"demo._domainkey.example.com.": record}) == [True]


@pytest.mark.parametrize(
    ("domain", "from_domain", "expected"),
    [
        ("mail.example.com", "example.com", True),
        ("example.com", "news.example.com", True),
        ("a.example.co.uk", "b.example.co.uk", True),
        ("example.co.uk", "other.co.uk", False),
        ("example.net", "example.com", False),
        ("xn--bcher-kva.example", "bücher.example", True),
    ],
)
def test_relaxed_alignment(domain: str, from_domain: str, expected: bool) -> None:
    assert aligned(domain, from_domain) is expected
