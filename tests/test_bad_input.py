"""Bad input through the real CLI: each gets its documented error, and the other rows are sent."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import COLUMNS, relay_block, write_campaign
from mailblast.cli.main import main
from mailblast.sink import ThreadedSink

GOOD_ROWS = 20


def good_lines(start: int = 0) -> list[str]:
    return [
        f"guest{i}@example.com,First{i},Last{i},Gala,{i}\r\n"
        for i in range(start, start + GOOD_ROWS)
    ]


def send(capsys: pytest.CaptureFixture[str], campaign: Path) -> tuple[int, str, str]:
    code = main(["send", str(campaign)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rejects(directory: Path) -> list[dict[str, str]]:
    with open(directory / "attendees.rejects.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def blast_with(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> Callable[[bytes], tuple[ThreadedSink, Path]]:
    def prepare(list_bytes: bytes) -> tuple[ThreadedSink, Path]:
        sink = start_sink(keep_messages=True)
        (tmp_path / "attendees.csv").write_bytes(list_bytes)
        return sink, write_campaign(tmp_path, [relay_block("only", sink.port)])

    return prepare


def header() -> str:
    return ",".join(COLUMNS) + "\r\n"


def recipients(sink: ThreadedSink) -> set[str]:
    return {r for message in sink.stats.received for r in message.recipients}


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("nul@example.com,Nu\x00l,N,Gala,x\r\n", "control character U+0000"),
        ("big@example.com," + "x" * 200_000 + ",B,Gala,x\r\n", "200000 characters"),
        (",Empty,E,Gala,x\r\n", "empty address"),
        ("huge@example.com," + "y" * 140_000 + ",H,Gala,x\r\n", "140000 characters"),
    ],
    ids=["nul-byte", "field-200kb", "empty-email", "field-over-128kib"],
)
def test_bad_row_rejected_others_sent(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
    bad_row: str,
    reason: str,
) -> None:
    content = header() + "".join(good_lines(0)) + bad_row + "".join(good_lines(100))
    sink, campaign = blast_with(content.encode("utf-8"))

    code, out, _ = send(capsys, campaign)

    assert code == 0
    assert len(recipients(sink)) == 2 * GOOD_ROWS
    rows = rejects(campaign.parent)
    assert len(rows) == 1
    assert rows[0]["line"] == str(GOOD_ROWS + 2)
    assert reason in rows[0]["reason"]
    assert "1 rejected" in out


def test_unterminated_quote_reported_where_it_starts(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
) -> None:
    bad_row = 'open@example.com,"Unclosed,O,Gala,x\r\n'
    content = header() + "".join(good_lines(0)) + bad_row + "".join(good_lines(100))
    sink, campaign = blast_with(content.encode("utf-8"))

    code, _, _ = send(capsys, campaign)

    assert code == 0
    assert len(recipients(sink)) == 2 * GOOD_ROWS
    rows = rejects(campaign.parent)
    assert [row["line"] for row in rows] == [str(GOOD_ROWS + 2)]
    assert "unterminated quote" in rows[0]["reason"]


def test_cp1252_list_needs_encoding(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
) -> None:
    content = header() + "".join(good_lines(0)) + "zoe@example.com,Zoë,Müller,Gala,x\r\n"
    sink, campaign = blast_with(content.encode("cp1252"))

    code, _, err = send(capsys, campaign)

    assert code == 2
    assert f"line {GOOD_ROWS + 2}" in err
    assert 'encoding = "cp1252"' in err
    assert sink.stats.messages == 0

    text = campaign.read_text(encoding="utf-8")
    campaign.write_text(
        text.replace('path = "attendees.csv"', 'path = "attendees.csv"\nencoding = "cp1252"'),
        encoding="utf-8",
    )
    code, _, _ = send(capsys, campaign)
    assert code == 0
    assert len(recipients(sink)) == GOOD_ROWS + 1
    zoe = next(m for m in sink.stats.received if m.recipients == ("zoe@example.com",))
    assert "Zoë".encode() in zoe.data or b"Zo=C3=AB" in zoe.data


def test_missing_email_column_shows_header(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
) -> None:
    content = "mail,first_name,last_name,event,row\r\n" + "".join(good_lines(0))
    sink, campaign = blast_with(content.encode("utf-8"))

    code, _, err = send(capsys, campaign)

    assert code == 2
    assert "email" in err
    assert "'mail'" in err
    assert "email_column" in err
    assert sink.stats.connections == 0


def test_template_syntax_error_names_file_and_line(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
) -> None:
    sink, campaign = blast_with((header() + "".join(good_lines(0))).encode("utf-8"))
    (campaign.parent / "invite.txt").write_text("Hello\n{{ first_name }\n", encoding="utf-8")

    code, _, err = send(capsys, campaign)

    assert code == 2
    assert "invite.txt:2" in err
    assert sink.stats.connections == 0


def test_wrong_type_and_unknown_key(
    capsys: pytest.CaptureFixture[str],
    blast_with: Callable[[bytes], tuple[ThreadedSink, Path]],
) -> None:
    sink, campaign = blast_with((header() + "".join(good_lines(0))).encode("utf-8"))
    text = campaign.read_text(encoding="utf-8")
    text = text.replace("[recipients]", "[recipients]\nemail_colum = 3")
    text = text.replace('tls = "none"', 'tls = "none"\nmax_connections = "ten"')
    campaign.write_text(text, encoding="utf-8")

    code, _, err = send(capsys, campaign)

    assert code == 2
    assert "recipients.email_colum: unknown key" in err
    assert "relay[0].max_connections: expected an integer, got str 'ten'" in err
    assert sink.stats.connections == 0
