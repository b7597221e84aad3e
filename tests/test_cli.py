"""The public CLI: every command, its help text, exit codes and error messages."""

from __future__ import annotations

import argparse
import csv
import io
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast.blast import prepare
from mailblast.cli.main import build_parser, cause_lines, main
from mailblast.config import load_campaign
from mailblast.errors import MailblastError
from mailblast.sink import ThreadedSink

COMMANDS = [
    "check",
    "send",
    "preview",
    "worker",
    "status",
    "pause",
    "resume",
    "cancel",
    "retry",
    "log",
    "report",
    "suppress",
    "bounces",
    "dkim",
    "dns",
    "plan",
    "relays",
    "serve",
    "db",
    "sink",
    "demo",
]


def run(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def campaign_file(tmp_path: Path, start_sink: Callable[..., ThreadedSink]) -> Path:
    sink = start_sink(keep_messages=True)
    rows = person_rows(5)
    rows.append(["=cmd|' /C calc'!A0@example.com", "Eve", "E", "Gala", "9"])
    rows.append(["bounce-1@example.com", "-2+3", "@SUM(1)", "Gala", "10"])
    write_list(tmp_path / "attendees.csv", rows)
    return write_campaign(tmp_path, [relay_block("only", sink.port)])


def test_command_list_complete() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )

    assert list(subparsers.choices) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([command, "--help"])
    assert exited.value.code == 0


def test_help_states_units(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sink", "--help"])
    out = capsys.readouterr().out
    assert "SECONDS" in out
    assert "bounce-" in out
    assert "tempfail2-" in out


def test_check_valid_campaign(capsys: pytest.CaptureFixture[str], campaign_file: Path) -> None:
    code, out, _ = run(capsys, "check", str(campaign_file))
    assert code == 0
    assert "6 acceptable rows, 1 rejected" in out
    assert "campaign spring-gala: ok" in out


def test_check_reports_unknown_column(
    capsys: pytest.CaptureFixture[str], campaign_file: Path
) -> None:
    (campaign_file.parent / "invite.txt").write_text("Hi {{ nickname }}\n", encoding="utf-8")
    code, _, err = run(capsys, "check", str(campaign_file))
    assert code == 2
    assert "nickname" in err
    assert "invite.txt" in err


def test_check_reports_config_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[campaign]\nname = 5\ncolour = "red"\n', encoding="utf-8")
    code, _, err = run(capsys, "check", str(path))
    assert code == 2
    assert "campaign.name: expected a string, got int 5" in err
    assert "campaign.colour: unknown key" in err
    assert "recipients: missing" in err


def test_send_status_and_export(
    capsys: pytest.CaptureFixture[str], campaign_file: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "send", str(campaign_file))
    assert code == 0
    assert "campaign spring-gala: done" in out
    store = str(tmp_path / "mailblast.db")

    code, out, _ = run(capsys, "status", "spring-gala", "--store", store, "--json")
    summary = json.loads(out)
    assert code == 0
    assert summary["counts"]["sent"] == 5
    assert summary["counts"]["bounced"] == 1
    assert summary["load"]["rejected"] == 1

    exported = tmp_path / "log.csv"
    code, _, _ = run(
        capsys,
        "log",
        "export",
        "spring-gala",
        "--store",
        store,
        "--format",
        "csv",
        "--output",
        str(exported),
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8"))))
    assert len(rows) == 7
    assert {row["type"] for row in rows} == {"sent", "bounced", "rejected"}
    rejected = next(row for row in rows if row["type"] == "rejected")
    assert rejected["recipient"].startswith("'=")

    code, out, _ = run(capsys, "log", "export", "spring-gala", "--store", store)
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 7
    assert records[0]["campaign"] == "spring-gala"


def test_preview_writes_eml(
    capsys: pytest.CaptureFixture[str], campaign_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "one.eml"
    code, _, _ = run(capsys, "preview", str(campaign_file), "--row", "2", "--output", str(output))
    data = output.read_bytes()
    assert code == 0
    assert b"To: guest1@example.com\r\n" in data
    assert b"Subject: First1, you're invited to Gala\r\n" in data


def test_preview_8bitmime(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    write_list(tmp_path / "attendees.csv", [["zoe@example.com", "Zoë", "Ångström", "Gala", "1"]])
    campaign_file = write_campaign(tmp_path, [relay_block("only", 2525)])
    plain, eight = tmp_path / "plain.eml", tmp_path / "eight.eml"

    assert run(capsys, "preview", str(campaign_file), "--output", str(plain))[0] == 0
    assert run(capsys, "preview", str(campaign_file), "--8bitmime", "--output", str(eight))[0] == 0

    assert plain.read_bytes().isascii()
    assert b"Content-Transfer-Encoding: quoted-printable" in plain.read_bytes()
    assert "Dear Zoë Ångström,".encode() in eight.read_bytes()
    assert b"Content-Transfer-Encoding: 8bit" in eight.read_bytes()


def test_send_test_to_outside_records(
    capsys: pytest.CaptureFixture[str],
    campaign_file: Path,
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
) -> None:
    code, out, _ = run(
        capsys, "send", str(campaign_file), "--test-to", "proof@example.org", "--limit", "2"
    )
    assert code == 0
    assert out.count("250") == 2
    assert not (tmp_path / "mailblast.db").exists()


def status_of(capsys: pytest.CaptureFixture[str], store: str) -> str:
    code, out, _ = run(capsys, "status", "spring-gala", "--store", store, "--json")
    assert code == 0
    return str(json.loads(out)["status"])


def test_pause_resume_cancel(
    capsys: pytest.CaptureFixture[str], campaign_file: Path, tmp_path: Path
) -> None:
    store, _, _ = prepare(load_campaign(campaign_file))
    store.close()
    path = str(tmp_path / "mailblast.db")

    assert run(capsys, "pause", "spring-gala", "--store", path)[0] == 0
    assert status_of(capsys, path) == "paused"
    assert run(capsys, "resume", "spring-gala", "--store", path)[0] == 0
    assert status_of(capsys, path) == "active"
    assert run(capsys, "cancel", "spring-gala", "--store", path, "--yes")[0] == 0
    assert status_of(capsys, path) == "cancelled"
    code, _, err = run(capsys, "send", str(campaign_file))
    assert code == 2
    assert "was cancelled" in err


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailblast.cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("mailblast ")


def test_limit_without_test_to_rejected(
    capsys: pytest.CaptureFixture[str], campaign_file: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "send", str(campaign_file), "--limit", "2")
    assert code == 2
    assert "--limit applies only to proofs" in err
    assert not (tmp_path / "mailblast.db").exists()


def test_status_missing_store_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.db"
    code, _, err = run(capsys, "status", "spring-gala", "--store", str(missing))
    assert code == 2
    assert "not found" in err
    assert not missing.exists()


def test_unknown_campaign_lists_known(
    capsys: pytest.CaptureFixture[str], campaign_file: Path, tmp_path: Path
) -> None:
    store, _, _ = prepare(load_campaign(campaign_file))
    store.close()
    code, _, err = run(capsys, "status", "autumn", "--store", str(tmp_path / "mailblast.db"))
    assert code == 2
    assert "campaign 'autumn' not found" in err
    assert "campaigns there: spring-gala" in err


def test_check_reports_unset_password(
    capsys: pytest.CaptureFixture[str],
    campaign_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MAILBLAST_TEST_UNSET", raising=False)
    text = campaign_file.read_text(encoding="utf-8").replace(
        'tls = "none"',
        'tls = "none"\nusername = "u"\npassword_env = "MAILBLAST_TEST_UNSET"\n'
        "allow_plaintext_auth = true",
    )
    campaign_file.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "check", str(campaign_file))
    assert code == 2
    assert "MAILBLAST_TEST_UNSET is not set" in err


def test_preview_row_out_of_range(capsys: pytest.CaptureFixture[str], campaign_file: Path) -> None:
    code, _, err = run(capsys, "preview", str(campaign_file), "--row", "99")
    assert code == 2
    assert "--row 99 is out of range" in err


def test_sink_port_validated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sink", "--port", "99999"])
    assert exited.value.code == 2
    assert "invalid port 99999" in capsys.readouterr().err


def test_sink_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "sink", "--port", str(port))
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_proof_refused_exits_nonzero(
    capsys: pytest.CaptureFixture[str], campaign_file: Path
) -> None:
    code, out, err = run(
        capsys, "send", str(campaign_file), "--test-to", "bounce-proof@example.org", "--limit", "2"
    )
    assert code == 2
    assert out.count("550 5.1.1") == 2
    assert "2 of 2 proofs were not accepted" in err


def test_log_export_to_closed_pipe(campaign_file: Path, tmp_path: Path) -> None:
    assert main(["send", str(campaign_file)]) == 0
    export = [sys.executable, "-m", "mailblast.cli.main", "log", "export", "spring-gala"]
    export += ["--store", str(tmp_path / "mailblast.db")]
    process = subprocess.Popen(export, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()
    _, err = process.communicate(timeout=30)
    assert b"Traceback" not in err


def test_cause_chain_skips_repeated_text() -> None:
    inner = ValueError("the address is empty")
    middle = ValueError("invalid address '': the address is empty")
    middle.__cause__ = inner
    outer = MailblastError("invalid address '': the address is empty; give an address")
    outer.__cause__ = middle
    distinct = OSError("disk full")
    outer_with_new_fact = MailblastError("cannot write the export")
    outer_with_new_fact.__cause__ = distinct

    assert cause_lines(outer) == []
    assert cause_lines(outer_with_new_fact) == ["OSError: disk full"]
