"""End-to-end blasts through real sinks on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import person_rows, relay_block, write_campaign, write_list
from mailblast import blast
from mailblast.config import load_campaign
from mailblast.sink import ThreadedSink
from scripted_relay import Script, port_of, start_scripted

BARE_LINE_END = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def test_weighted_blast_delivers_each_once(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    count = 5000
    sinks = [start_sink(keep_messages=True) for _ in range(3)]
    weights = [1, 1, 2]
    relays = [
        relay_block(
            f"sink{i}",
            sink.port,
            weight=weight,
            max_connections=4,
            max_messages_per_connection=1000,
        )
        for i, (sink, weight) in enumerate(zip(sinks, weights, strict=True))
    ]
    write_list(tmp_path / "attendees.csv", person_rows(count))
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, report = blast.send(campaign)

    assert report is not None
    assert report.queued == count
    assert summary.counts["sent"] == count
    received = [message for sink in sinks for message in sink.stats.received]
    by_recipient = Counter(r for message in received for r in message.recipients)
    assert len(by_recipient) == count
    assert max(by_recipient.values()) == 1
    message_ids = Counter(message.message_id for message in received)
    assert len(message_ids) == count
    shares = [sink.stats.messages / count for sink in sinks]
    print("relay shares:", shares)
    for share, weight in zip(shares, weights, strict=True):
        assert abs(share - weight / sum(weights)) <= 0.05, shares
    for message in received:
        check_message(message.data, message.recipients[0])


def check_message(data: bytes, recipient: str) -> None:
    """The bytes re-parse to the same headers and carry the row's values."""
    assert BARE_LINE_END.search(data) is None
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    row = recipient.split("@")[0].removeprefix("guest")
    assert parsed["To"] == recipient
    assert parsed["Subject"] == f"First{row}, you're invited to Gala"
    assert parsed.get_all("Bcc") is None
    text = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert f"Dear First{row} Last{row}," in text.get_content()
    assert f"(row {row})" in html.get_content()


def test_scripted_replies_give_each_state(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(script=["451 4.3.0 Busy, try again"], keep_messages=True)
    rows = [
        ["first@example.com", "A", "B", "Gala", "0"],
        ["bounce-x@example.com", "C", "D", "Gala", "1"],
        ["reject-data-y@example.com", "E", "F", "Gala", "2"],
    ]
    write_list(tmp_path / "attendees.csv", rows)
    relays = [relay_block("only", sink.port, max_connections=1)]
    campaign = load_campaign(write_campaign(tmp_path, relays))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 1
    assert summary.counts["bounced"] == 1
    assert summary.counts["failed"] == 1
    with blast.opened(campaign.store) as store:
        row = store.get_campaign(campaign.name)
        assert row is not None
        log = [
            (r["recipient"], r["type"], r["command"], r["code"], r["status"])
            for r in store.iter_log(row.id)
        ]
    assert ("first@example.com", "deferred", "end-of-data", 451, "4.3.0") in log
    assert ("first@example.com", "sent", "end-of-data", 250, "2.0.0") in log
    assert ("bounce-x@example.com", "bounced", "rcpt", 550, "5.1.1") in log
    assert ("reject-data-y@example.com", "failed", "end-of-data", 554, "5.6.0") in log
    assert len(log) == 4


def test_second_send_sends_nothing(tmp_path: Path, start_sink: Callable[..., ThreadedSink]) -> None:
    sink = start_sink()
    write_list(tmp_path / "attendees.csv", person_rows(50))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))

    first, _, _ = blast.send(campaign)
    second, stats, report = blast.send(campaign)

    assert first.counts["sent"] == 50
    assert sink.stats.messages == 50
    assert report is None
    assert sum(stats.outcomes.values()) == 0
    assert second.counts["sent"] == 50
    assert second.status == "done"


def test_header_injection_in_fields(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(keep_messages=True)
    rows = [
        [
            "victim@example.com",
            "Bob\r\nBcc: x@example.net",
            "Smith",
            "Gala\r\nBcc: y@example.net",
            "0",
        ]
    ]
    write_list(tmp_path / "attendees.csv", rows)
    campaign = load_campaign(
        write_campaign(
            tmp_path,
            [relay_block("only", sink.port)],
            extra_campaign='to_name = "{{ first_name }} {{ last_name }}"\n',
        )
    )

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 1
    message = sink.stats.received[0]
    assert message.recipients == ("victim@example.com",)
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert parsed.get_all("Bcc") is None
    assert parsed["To"].addresses[0].addr_spec == "victim@example.com"
    assert len(parsed["To"].addresses) == 1
    assert b"\nBcc:" not in message.data.split(b"\r\n\r\n")[0]


def test_list_edge_cases_queued_and_rejected(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink]
) -> None:
    sink = start_sink(keep_messages=True)
    content = (
        "\ufeffemail,first_name,last_name,event,row\r\n"
        "\u00a0ann@example.com\u00a0,Ann,A,Gala,1\r\n"
        "Bob@Example.com,Bob,B,Gala,2\r\n"
        "bob@example.COM,Bobby,B,Gala,3\r\n"
        "not-an-address,X,Y,Gala,4\r\n"
        '"carol@example.com","Carol, the ""first""","Multi\r\nLine",Gala,5\r\n'
        "dave@b\u00fccher.example,Dave,D,Gala,6\r\n"
        "erin@xn--bcher-kva.example,Erin,E,Gala,7\r\n"
    )
    (tmp_path / "attendees.csv").write_bytes(content.encode("utf-8"))
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))

    summary, _, report = blast.send(campaign)

    assert report is not None
    assert report.queued == 5
    assert report.rejected == 1
    assert report.duplicates == 1
    assert summary.counts["sent"] == 5
    assert report.reject_file is not None
    rejects = Path(report.reject_file).read_text(encoding="utf-8").splitlines()
    assert rejects[0] == "line,type,address,reason"
    assert rejects[1].startswith("5,rejected,not-an-address,")
    assert rejects[2].startswith("4,rejected,bob@example.com,duplicate of line 3")
    recipients = sorted(r for m in sink.stats.received for r in m.recipients)
    assert "ann@example.com" in recipients
    assert "Bob@example.com" in recipients
    assert "dave@xn--bcher-kva.example" in recipients


@pytest.mark.parametrize(("advertised", "encoding"), [(True, "8bit"), (False, "quoted-printable")])
def test_body_encoding_follows_8bitmime(
    tmp_path: Path, start_sink: Callable[..., ThreadedSink], advertised: bool, encoding: str
) -> None:
    sink = start_sink(keep_messages=True, eight_bit_mime=advertised)
    write_list(tmp_path / "attendees.csv", [["zoe@example.com", "Zoë", "Ångström", "Gala", "1"]])
    campaign = load_campaign(write_campaign(tmp_path, [relay_block("only", sink.port)]))

    summary, _, _ = blast.send(campaign)

    assert summary.counts["sent"] == 1
    data = sink.stats.received[0].data
    assert data.isascii() is not advertised
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    parts = [part for part in parsed.walk() if not part.is_multipart()]
    assert [part["Content-Transfer-Encoding"] for part in parts] == [encoding] * 2
    text = parsed.get_body(preferencelist=("plain",))
    assert text is not None
    assert "Dear Zoë Ångström," in text.get_content()


def test_envelopes_go_out_behind_final_dots(tmp_path: Path) -> None:
    # One session: after the first message, each envelope rides on the previous final dot.
    script = Script(dot_delay=0.005)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(start_scripted(script), loop).result()
    try:
        write_list(tmp_path / "attendees.csv", person_rows(50))
        relay = relay_block("only", port_of(server), max_connections=1)
        summary, _, _ = blast.send(load_campaign(write_campaign(tmp_path, [relay])))
    finally:
        server.close()
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    assert summary.counts["sent"] == 50
    assert len(script.bodies) == 50
    behind = [line for line in script.behind_dot if line.startswith("MAIL FROM")]
    print("envelopes behind a final dot:", len(behind))
    assert len(behind) >= 40
