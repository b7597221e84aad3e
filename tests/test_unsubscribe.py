from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.config import UnsubscribeSettings, load_campaign
from mailblast.errors import ConfigError
from mailblast.unsubscribe import InvalidToken, UnsubscribeLinks, make_token, verify_token

SECRET = b"s3cret-s3cret-s3cret"


def test_token_round_trip() -> None:
    token = make_token(SECRET, "spring", "ann@example.com")

    subject = verify_token(SECRET, token)

    assert subject.campaign == "spring"
    assert subject.address == "ann@example.com"


def test_token_other_secret_rejected() -> None:
    token = make_token(SECRET, "spring", "ann@example.com")

    with pytest.raises(InvalidToken, match="signature"):
        verify_token(b"another-secret-of-16", token)


def test_token_tampered_address_rejected() -> None:
    forged = make_token(b"attacker-secret!!", "spring", "bob@example.com")
    genuine = make_token(SECRET, "spring", "ann@example.com")
    spliced = forged.split(".")[0] + "." + genuine.split(".")[1]

    with pytest.raises(InvalidToken):
        verify_token(SECRET, spliced)


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "!!!.???", "YQ.", ".YQ", "é.é", "x" * 5000],
)
def test_token_malformed_rejected(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(SECRET, token)


@given(
    campaign=st.text(min_size=1).filter(lambda text: "\n" not in text),
    local=st.text(min_size=1),
    flip=st.integers(min_value=0),
)
def test_token_any_flip_rejected(campaign: str, local: str, flip: int) -> None:
    token = make_token(SECRET, campaign, f"{local}@example.com")
    assert verify_token(SECRET, token).address == f"{local}@example.com"

    position = flip % len(token)
    replacement = "A" if token[position] != "A" else "B"
    altered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(InvalidToken):
        verify_token(SECRET, altered)


def test_links_header_value_with_mailto() -> None:
    settings = UnsubscribeSettings(url="https://example.com/u?list=7", mailto="leave@example.com")
    links = UnsubscribeLinks(settings, "spring", SECRET)

    value = links.header_value("ann@example.com")

    token = make_token(SECRET, "spring", "ann@example.com")
    assert value == (
        f"<https://example.com/u?list=7&token={token}>,"
        f" <mailto:leave@example.com?subject=unsubscribe%20{token}>"
    )


def test_links_url_is_token_url() -> None:
    links = UnsubscribeLinks(UnsubscribeSettings(url="https://example.com/u"), "spring", SECRET)

    url = links.url("ann@example.com")

    assert url == "https://example.com/u?token=" + make_token(SECRET, "spring", "ann@example.com")


def _campaign_with(tmp_path: Path, table: str) -> Path:
    write_list(tmp_path / "attendees.csv", person_rows(1))
    path = write_campaign(tmp_path, [relay_block("a", 2525)])
    path.write_text(path.read_text() + "\n[unsubscribe]\n" + table, encoding="utf-8")
    return path


def test_config_defaults_to_secret_variable(tmp_path: Path) -> None:
    path = _campaign_with(tmp_path, 'url = "https://example.com/u"\n')

    settings = load_campaign(path).unsubscribe

    assert settings is not None
    assert settings.secret_env == "MAILBLAST_UNSUBSCRIBE_SECRET"
    assert settings.secret_file is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "http://example.com/u"\n', "is not an https:// URL"),
        ('url = "https:///u"\n', "has no host name"),
        ('url = "https://example.com/u?token=1"\n', "already has a token parameter"),
        ('url = "https://example.com/u#x"\n', "must not contain a fragment"),
        ('mailto = "leave@example.com"\n', "unsubscribe.url: missing"),
        ('url = "https://example.com/u"\nsecret = "x"\n', "unsubscribe.secret: unknown key"),
        (
            'url = "https://example.com/u"\nsecret_env = "A"\nsecret_file = "b"\n',
            "set secret_env or secret_file, not both",
        ),
        ('url = "https://example.com/u"\nmailto = "not an address"\n', "unsubscribe.mailto"),
    ],
)
def test_config_invalid(tmp_path: Path, table: str, message: str) -> None:
    path = _campaign_with(tmp_path, table)

    with pytest.raises(ConfigError) as caught:
        load_campaign(path)

    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_config_loopback_http_accepted(tmp_path: Path) -> None:
    path = _campaign_with(tmp_path, 'url = "http://127.0.0.1:8025/unsubscribe"\n')

    settings = load_campaign(path).unsubscribe

    assert settings is not None
    assert settings.url == "http://127.0.0.1:8025/unsubscribe"


def test_secret_unset_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MB_TEST_UNSET_SECRET", raising=False)
    settings = UnsubscribeSettings(url="https://example.com/u", secret_env="MB_TEST_UNSET_SECRET")

    with pytest.raises(ConfigError, match="MB_TEST_UNSET_SECRET is not set"):
        settings.secret()


def test_secret_too_short_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MB_TEST_SHORT_SECRET", "short")
    settings = UnsubscribeSettings(url="https://example.com/u", secret_env="MB_TEST_SHORT_SECRET")

    with pytest.raises(ConfigError, match="has 5 bytes; use at least 16"):
        settings.secret()


def test_secret_file_read(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("0123456789abcdef0123\n", encoding="utf-8")
    os.chmod(secret_file, 0o600)
    settings = UnsubscribeSettings(
        url="https://example.com/u", secret_env=None, secret_file=str(secret_file)
    )

    assert settings.secret() == b"0123456789abcdef0123"
