"""Send a campaign with a VERP envelope sender through a sink, then process its bounces."""

from __future__ import annotations

import mailbox
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bounce_mail import arf, auto_reply, dsn, plain_mail
from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.cli.main import main
from mailblast.config import load_campaign
from mailblast.sink import ReceivedMessage, ThreadedSink
from mailblast.unsubscribe import make_token

VERP = "bounces+{token}@example.com"
SECRET = "0123456789abcdef0123456789abcdef"


def test_campaign_bounces_end_to_end(
    tmp_path: Path,
    start_sink: Callable[..., ThreadedSink],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = start_sink(keep_messages=True)
    write_list(tmp_path / "attendees.csv", person_rows(8))
    path = write_campaign(tmp_path, [relay_block("only", sink.port)])
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"bounces@example.com"', f'"{VERP}"'), encoding="utf-8")
    campaign = load_campaign(path)
    summary, _, _ = blast.send(campaign)
    assert summary.counts["sent"] == 8
    sent = {message.recipients[0]: message for message in sink.stats.received}
    assert all(m.envelope_sender.startswith("bounces+") for m in sent.values())

    maildir = mailbox.Maildir(tmp_path / "bounces", create=True)
    for data in returned_messages(sent):
        maildir.add(data)
    mbox = mailbox.mbox(tmp_path / "more.mbox", create=True)
    token = make_token(SECRET.encode(), "spring-gala", "guest6@example.com")
    mbox.add(plain_mail("unsubscribe@example.com", f"unsubscribe {token}", "guest6@example.com"))
    mbox.close()
    monkeypatch.setenv("MAILBLAST_UNSUBSCRIBE_SECRET", SECRET)
    store = tmp_path / "mailblast.db"
    review = tmp_path / "review"
    arguments = ["bounces", "process", str(tmp_path / "bounces"), str(tmp_path / "more.mbox")]
    arguments += ["--store", str(store), "--review", str(review)]

    assert main(arguments) == 0
    output = capsys.readouterr().out

    assert "messages read: 8" in output
    assert "hard bounces: 1" in output
    assert "soft bounces: 1" in output
    assert "sender or policy blocks: 1" in output
    assert "delay notices: 1" in output
    assert "complaints: 1" in output
    assert "unsubscribe requests: 1" in output
    assert "auto-replies (ignored): 1" in output
    assert "for review: 1" in output
    assert states(store) == {
        "guest0@example.com": "bounced",
        "guest1@example.com": "bounced",
        "guest2@example.com": "bounced",
        "guest3@example.com": "sent",
        "guest4@example.com": "sent",
        "guest5@example.com": "sent",
        "guest6@example.com": "sent",
        "guest7@example.com": "sent",
    }
    assert query(store, "SELECT address, reason FROM suppressions ORDER BY address") == [
        ("guest0@example.com", "hard-bounce"),
        ("guest4@example.com", "complaint"),
        ("guest6@example.com", "unsubscribed"),
    ]
    records = query(
        store,
        "SELECT recipient, type, status FROM delivery_log"
        " WHERE type NOT IN ('queued', 'sent', 'attempt') ORDER BY recipient",
    )
    assert records == [
        ("guest0@example.com", "bounced", "5.1.1"),
        ("guest1@example.com", "bounced", "5.2.2"),
        ("guest2@example.com", "bounced", "5.7.1"),
        ("guest3@example.com", "deferred", "4.4.1"),
        ("guest4@example.com", "complaint", None),
        ("guest6@example.com", "unsubscribed", None),
    ]
    assert len(list(review.glob("*.eml"))) == 1
    assert len(maildir) == 7

    assert main(arguments) == 0
    again = capsys.readouterr().out
    assert "already processed: 6" in again
    assert "addresses suppressed: 0" in again


def returned_messages(sent: dict[str, ReceivedMessage]) -> list[bytes]:
    """Return one returned message per case, each addressed to its message's VERP sender."""

    def to(address: str) -> str:
        return sent[address].envelope_sender

    def original(address: str) -> bytes:
        return sent[address].data

    # guest0 forwarded to another address, so only VERP can match its bounce.
    return [
        dsn(to("guest0@example.com"), "forward@example.net", "5.1.1", "550 5.1.1 User unknown"),
        dsn(
            to("guest1@example.com"),
            "guest1@example.com",
            "5.2.2",
            "552 5.2.2 Mailbox full",
            original("guest1@example.com"),
        ),
        dsn(to("guest2@example.com"), "guest2@example.com", "5.7.1", "554 5.7.1 Spam detected"),
        dsn(
            to("guest3@example.com"),
            "guest3@example.com",
            "4.4.1",
            "Connection timed out",
            action="delayed",
        ),
        arf(to("guest4@example.com"), "guest4@example.com", original("guest4@example.com")),
        auto_reply(to("guest5@example.com"), "guest5@example.com"),
        dsn("bounces+999999@example.com", "stranger@example.org", "5.1.1", "User unknown"),
    ]


def states(store: Path) -> dict[str, str]:
    return dict(query(store, "SELECT address, state FROM messages"))  # type: ignore[arg-type]


def query(store: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(store) as db:
        return db.execute(sql).fetchall()
