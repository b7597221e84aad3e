"""Campaign file validation: every key, wrong types, unknown keys, all problems at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailblast.config import Campaign, load_campaign
from mailblast.errors import ConfigError
from mailblast.units import format_duration, parse_duration, parse_rate

BASE = """
[campaign]
name = "spring"
from = "Events Team <events@example.com>"
subject = "Hello {{ first_name }}"
text = "body.txt"

[recipients]
path = "list.csv"

[[relay]]
name = "smtp1"
host = "127.0.0.1"
port = 2525
tls = "none"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "body.txt").write_text("Hi {{ first_name }}\n", encoding="utf-8")
    (tmp_path / "list.csv").write_text("email,first_name\nann@example.com,Ann\n", encoding="utf-8")
    path = tmp_path / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_campaign(write(tmp_path, text))
    return raised.value.problems


def test_minimal_campaign_defaults(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, BASE))
    assert campaign.name == "spring"
    assert campaign.from_address == "events@example.com"
    assert campaign.envelope_sender == "events@example.com"
    assert campaign.store == str(tmp_path / "mailblast.db")
    assert campaign.recipients.path == str(tmp_path / "list.csv")
    assert campaign.recipients.email_column == "email"
    relay = campaign.relays[0]
    assert (relay.weight, relay.max_connections, relay.max_messages_per_connection) == (1, 10, 100)
    assert relay.rate is None
    assert campaign.sending.lease == 300


def test_full_relay_keys(tmp_path: Path) -> None:
    text = BASE.replace(
        'tls = "none"',
        'tls = "starttls"\nusername = "blast"\npassword_env = "SMTP1_PASSWORD"\nweight = 3\n'
        'max_connections = 4\nrate = "600/m"\nmax_messages_per_connection = 50\n'
        'connect_timeout = "10s"\ncommand_timeout = "2m"\ndata_timeout = "10m"\n'
        'ehlo_name = "mta.example.com"',
    )
    relay = load_campaign(write(tmp_path, text)).relays[0]
    assert relay.rate == 10.0
    assert relay.weight == 3
    assert relay.command_timeout == 120
    assert relay.data_timeout == 600
    assert relay.password_env == "SMTP1_PASSWORD"


def test_daily_quota_read(tmp_path: Path) -> None:
    text = BASE.replace('tls = "none"', 'tls = "none"\ndaily_quota = 5000')
    relay = load_campaign(write(tmp_path, text)).relays[0]
    assert relay.daily_quota == 5000


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", "0 must be at least 1 message per UTC day"), ('"many"', "daily_quota")],
)
def test_daily_quota_invalid(tmp_path: Path, value: str, expected: str) -> None:
    text = BASE.replace('tls = "none"', f'tls = "none"\ndaily_quota = {value}')
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert "relay[0].daily_quota" in found[0]
    assert expected in found[0]


def test_store_url_with_password_variable(tmp_path: Path) -> None:
    text = BASE.replace(
        'text = "body.txt"',
        'text = "body.txt"\nstore = "postgresql://blast@db.example.net/mail"\n'
        'store_password_env = "MAILBLAST_DB_PASSWORD"',
    )
    campaign = load_campaign(write(tmp_path, text))
    assert campaign.store == "postgresql://blast@db.example.net/mail"
    assert campaign.store_password_env == "MAILBLAST_DB_PASSWORD"


def test_store_password_env_needs_url(tmp_path: Path) -> None:
    text = BASE.replace('text = "body.txt"', 'text = "body.txt"\nstore_password_env = "X"')
    found = problems(tmp_path, text)
    assert found == [
        f"{tmp_path / 'campaign.toml'}: campaign.store_password_env: applies only to a"
        " postgresql:// store; a SQLite store has no password"
    ]


def test_round_trip_through_dict(tmp_path: Path) -> None:
    campaign = load_campaign(write(tmp_path, BASE))
    assert Campaign.from_dict(campaign.to_dict()) == campaign


def test_unknown_key_rejected(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace("port = 2525", "port = 2525\nprot = 1"))
    assert any("relay[0].prot: unknown key" in p for p in found)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace("port = 2525", 'port = "2525"'))
    assert any("relay[0].port: expected an integer, got str '2525'" in p for p in found)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace('tls = "none"', 'tls = "ssl"\nweight = 0').replace(
        'from = "Events Team <events@example.com>"', 'from = "not an address"'
    )
    found = problems(tmp_path, text + '\n[sending]\nlease = "soon"\n')
    assert len(found) == 4
    assert any("relay[0].tls" in p for p in found)
    assert any("relay[0].weight" in p for p in found)
    assert any("campaign.from" in p for p in found)
    assert any("sending.lease" in p for p in found)


def test_literal_password_rejected(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('tls = "none"', 'tls = "none"\npassword = "hunter2"'))
    assert any("password_env or password_file" in p for p in found)
    assert not any("hunter2" in p for p in found)


def test_missing_template_file(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('text = "body.txt"', 'text = "nope.txt"'))
    assert any("campaign.text: template file" in p and "nope.txt" in p for p in found)


def test_missing_list_file(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('path = "list.csv"', 'path = "missing.csv"'))
    assert any("recipients.path" in p for p in found)


def test_invalid_toml_reports_line(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + "\nthis is not toml\n")
    assert "invalid TOML" in found[0]
    assert "line" in found[0]


def test_duplicate_relay_names(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + '\n[[relay]]\nname = "smtp1"\nhost = "127.0.0.1"\n')
    assert any("duplicate relay name" in p for p in found)


def test_unknown_encoding(tmp_path: Path) -> None:
    found = problems(
        tmp_path, BASE.replace('path = "list.csv"', 'path = "list.csv"\nencoding = "klingon"')
    )
    assert any("recipients.encoding" in p for p in found)


def test_password_variable_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAILBLAST_TEST_UNSET", raising=False)
    text = BASE.replace(
        'tls = "none"', 'tls = "starttls"\nusername = "u"\npassword_env = "MAILBLAST_TEST_UNSET"'
    )
    relay = load_campaign(write(tmp_path, text)).relays[0]
    with pytest.raises(ConfigError, match="MAILBLAST_TEST_UNSET is not set"):
        relay.password()


def test_password_file_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n", encoding="utf-8")
    text = BASE.replace(
        'tls = "none"', 'tls = "implicit"\nusername = "u"\npassword_file = "secret"'
    )
    assert load_campaign(write(tmp_path, text)).relays[0].password() == "s3cret"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800), (45, 45)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "m10", "-5s"])
def test_parse_duration_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "rate"), [("200/s", 200), ("600/m", 10), ("3600/h", 1)])
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "0/s", "10/week"])
def test_parse_rate_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


def test_format_duration() -> None:
    assert format_duration(5.25) == "5.2s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"


def test_auth_without_tls_rejected(tmp_path: Path) -> None:
    text = BASE.replace('tls = "none"', 'tls = "none"\nusername = "u"\npassword_env = "P"')
    found = problems(tmp_path, text)
    assert any("relay[0].tls: 'none' would send the AUTH password in clear" in p for p in found)


def test_auth_without_tls_allowed_for_loopback(tmp_path: Path) -> None:
    text = BASE.replace(
        'tls = "none"',
        'tls = "none"\nusername = "u"\npassword_env = "P"\nallow_plaintext_auth = true',
    )
    assert load_campaign(write(tmp_path, text)).relays[0].allow_plaintext_auth is True
