"""``mailblast plan`` and ``mailblast relays probe`` against sinks on loopback."""

from __future__ import annotations

import email
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.cli.main import main
from mailblast.plan import Plan, campaign_relay_rates, sustained_rate
from mailblast.signingkey import generate_key, private_key_pem
from mailblast.sink import ThreadedSink
from mailblast.store.base import LogRecord
from mailblast.store.sqlite import SQLiteStore


def test_sustained_rate_median_of_active_minutes() -> None:
    times: list[float] = []
    for minute, count in [(0, 600), (1, 600), (2, 60), (3, 600), (10, 600), (11, 5)]:
        times += [minute * 60 + i * 60 / count for i in range(count)]

    rate, minutes = sustained_rate(times)

    # Minutes 4 to 9 are idle and minute 11 is the partial last one, so neither counts.
    assert minutes == 5
    assert rate == pytest.approx(10.0)


def test_sustained_rate_short_send() -> None:
    assert sustained_rate([100.0, 100.5, 101.0, 102.0]) == (pytest.approx(1.5), 0)
    assert sustained_rate([100.0]) == (0.0, 0)


def test_sustained_rate_ignores_late_retry() -> None:
    burst = [100.0 + i / 600 for i in range(300)]

    for delay in (24.0, 90.0):
        rate, minutes = sustained_rate([*burst, burst[-1] + delay])

        assert rate == pytest.approx(600.0)
        assert minutes == 0


def test_campaign_rates_late_straggler(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mailblast.db")
    campaign = store.upsert_campaign("spring-gala", {"name": "spring-gala"}, 1.0).id
    records = [
        LogRecord(type="sent", time=100.0 + i / 600, relay=relay)
        for relay in ("r1", "r2")
        for i in range(300)
    ]
    # r2's one deferred message is accepted on its retry, 24 s after the burst.
    records.append(LogRecord(type="sent", time=124.5, relay="r2"))
    store.commit_group(campaign, [], [], records)

    rates = {rate.relay: rate for rate in campaign_relay_rates(store, campaign, "spring-gala")}
    store.close()

    assert rates["r1"].rate == pytest.approx(600.0)
    assert rates["r2"].rate == pytest.approx(600.0)
    assert rates["r2"].accepted == 301
    assert rates["r2"].active_minutes == 0


def test_plan_arithmetic() -> None:
    plan = Plan(recipients=1_000_000, seconds=4 * 3600, relay_rate=50.0)

    assert plan.required_rate == pytest.approx(69.444, rel=1e-3)
    assert plan.relays == 2
    assert plan.capacity == 100.0
    assert plan.headroom == pytest.approx(0.44, abs=0.001)
    assert plan.rule_of_thumb_servers == 20


def test_plan_cli_relay_rate(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--recipients", "1000000", "--within", "4h", "--relay-rate", "3000/m"])

    out = capsys.readouterr().out
    assert code == 0
    assert "required rate  = 1,000,000 / 14,400 s = 69.4 msg/s" in out
    assert "relays         = 69.4 / 50.0 = 1.39, rounded up to 2" in out
    assert "44% headroom" in out
    assert "20 servers for a 4-6 h send" in out


def test_plan_cli_low_headroom_note(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--recipients", "100000", "--within", "1h", "--relay-rate", "28/s"])

    out = capsys.readouterr().out
    assert code == 0
    assert "rounded up to 1" in out
    assert "note: under 10% headroom" in out


@pytest.fixture(scope="module")
def sent_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Send 240 messages through two sinks capped at 40/s and 80/s; return the store path."""
    directory = tmp_path_factory.mktemp("sent")
    slow = ThreadedSink("127.0.0.1", 0)
    fast = ThreadedSink("127.0.0.1", 0)
    slow.start()
    fast.start()
    try:
        write_list(directory / "attendees.csv", person_rows(240))
        relays = [
            relay_block("slow", slow.port, rate="40/s", weight=1, max_connections=2),
            relay_block("fast", fast.port, rate="80/s", weight=2, max_connections=4),
        ]
        campaign = write_campaign(directory, relays)
        assert main(["send", str(campaign)]) == 0
    finally:
        slow.stop()
        fast.stop()
    return directory / "mailblast.db"


def test_relay_rates_from_real_send(sent_store: Path) -> None:
    with blast.opened(str(sent_store)) as store:
        row = blast.require_campaign(store, "spring-gala")
        rates = {rate.relay: rate for rate in campaign_relay_rates(store, row.id, row.name)}

    assert set(rates) == {"slow", "fast"}
    assert rates["slow"].accepted + rates["fast"].accepted == 240
    assert rates["slow"].rate == pytest.approx(40, rel=0.3)
    assert rates["fast"].rate == pytest.approx(80, rel=0.3)


def test_plan_cli_from_campaign(sent_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["plan", "--recipients", "500000", "--within", "1h30m"]

    code = main([*arguments, "--from-campaign", "spring-gala", "--store", str(sent_store)])

    out = capsys.readouterr().out
    assert code == 0
    assert "sustained rates in campaign spring-gala (status done):" in out
    assert "  slow: " in out
    assert "sent in under a minute" in out
    assert "the median of the 2 measured relays" in out
    assert "required rate  = 500,000 / 5,400 s = 92.6 msg/s" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--recipients", "-5", "--within", "1h", "--relay-rate", "5/s"],
            "invalid --recipients -5",
        ),
        (
            ["--recipients", "5", "--within", "soon", "--relay-rate", "5/s"],
            "invalid duration 'soon'",
        ),
        (["--recipients", "5", "--within", "0s", "--relay-rate", "5/s"], "invalid --within '0s'"),
        (["--recipients", "5", "--within", "1h", "--relay-rate", "fast"], "invalid rate 'fast'"),
    ],
)
def test_plan_cli_bad_input(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_plan_cli_unknown_campaign(sent_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["plan", "--recipients", "5", "--within", "1h", "--from-campaign", "autumn"]

    code = main([*arguments, "--store", str(sent_store)])

    err = capsys.readouterr().err
    assert code == 2
    assert "campaign 'autumn' not found" in err
    assert "campaigns there: spring-gala" in err


def closed_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


def test_relays_probe(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(3))
    relays = [
        relay_block("good", sink.port, max_connections=3, max_messages_per_connection=10),
        relay_block("down", closed_port(), connect_timeout=2),
    ]
    campaign = write_campaign(tmp_path, relays)
    arguments = ["relays", "probe", str(campaign), "--to", "probe@example.net"]

    code = main([*arguments, "--messages", "40", "--json"])

    good, down = json.loads(capsys.readouterr().out)
    assert code == 1
    assert good["accepted"] == 40
    assert good["failed"] == 0
    # Three concurrent sessions, each followed by another past the 10-message limit
    # unless the others emptied the queue first.
    assert 4 <= good["sessions"] <= 6
    assert good["rate"] > 0
    assert good["connect_time"] > 0
    assert sink.stats.messages == 40
    assert down["accepted"] == 0
    assert down["sessions"] == 0
    assert down["session_failures"] == 10  # max_connections sessions, each failed
    assert "session:" in down["errors"][0]


def test_relays_probe_table(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(1))
    campaign = write_campaign(tmp_path, [relay_block("only", sink.port)])

    code = main(["relays", "probe", str(campaign), "--to", "probe@example.net", "--messages", "5"])

    out = capsys.readouterr().out
    assert code == 0
    assert "5/5" in out
    assert sink.stats.messages == 5


def test_relays_probe_sends_campaign_message(
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = start_sink(keep_messages=True)
    write_list(tmp_path / "attendees.csv", person_rows(1))
    campaign = write_campaign(tmp_path, [relay_block("only", sink.port)])
    (tmp_path / "invite.txt").write_text("Leave: {{ unsubscribe_url }}\n", encoding="utf-8")
    (tmp_path / "dkim.pem").write_bytes(private_key_pem(generate_key("rsa")))
    monkeypatch.setenv("MAILBLAST_TEST_PROBE_SECRET", "s" * 32)
    tables = (
        '[unsubscribe]\nurl = "https://example.com/u"\nsecret_env = "MAILBLAST_TEST_PROBE_SECRET"\n'
        '[dkim]\ndomain = "example.com"\nselector = "s1"\n'
        f'private_key_file = "{tmp_path / "dkim.pem"}"\n'
    )
    campaign.write_text(campaign.read_text(encoding="utf-8") + "\n" + tables, encoding="utf-8")

    code = main(["relays", "probe", str(campaign), "--to", "probe@example.net", "--messages", "2"])

    assert code == 0, capsys.readouterr().err
    assert len(sink.stats.received) == 2
    for received in sink.stats.received:
        message = email.message_from_bytes(received.data)
        assert message["List-Unsubscribe"] is not None
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["DKIM-Signature"] is not None
        assert b"https://example.com/u?token=" in received.data


@pytest.mark.parametrize("count", ["0", "-3"])
def test_relays_probe_bad_count(
    tmp_path: Path, count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_list(tmp_path / "attendees.csv", person_rows(1))
    campaign = write_campaign(tmp_path, [relay_block("only", closed_port())])

    code = main(["relays", "probe", str(campaign), "--to", "a@example.net", "--messages", count])

    assert code == 2
    assert f"invalid --messages {count}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["dns", "check"], "--nameserver IP[:PORT]"),
        (["plan"], "--within DURATION"),
        (["relays", "probe"], "--messages N"),
    ],
)
def test_new_commands_have_help(
    command: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])

    assert exited.value.code == 0
    assert expected in capsys.readouterr().out
