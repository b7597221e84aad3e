"""Tests of the local test relay, driven by real SMTP clients over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import mailbox
import select
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest
import trustme

from mailblast.sink import (
    DATA_RULES,
    RCPT_RULES,
    SINK_RULES_HELP,
    Sink,
    SinkStats,
    ThreadedSink,
    local_part,
    slow_delay,
)

T = TypeVar("T")

SENDER = "sender@example.com"
MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.net\r\n"
    b"Subject: test\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def run(scenario: Callable[[Sink], Awaitable[T]], **options: Any) -> tuple[T, SinkStats]:
    """Run ``scenario`` against a fresh sink and return its result and the sink's final stats."""

    async def main() -> tuple[T, SinkStats]:
        async with Sink(**options) as sink:
            result = await scenario(sink)
            await settle(sink)
        return result, sink.stats

    return asyncio.run(main())


async def settle(sink: Sink) -> None:
    """Wait until the sink has seen every client close its connection."""
    deadline = time.monotonic() + 2
    while sink.stats.current_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def client(sink: Sink, **options: Any) -> aiosmtplib.SMTP:
    options.setdefault("start_tls", False)
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=5, **options)


async def rcpt_codes(sink: Sink, recipients: list[str]) -> list[tuple[int, str]]:
    async with client(sink) as smtp:
        await smtp.mail(SENDER)
        replies = []
        for recipient in recipients:
            response = await smtp.execute_command(b"RCPT", f"TO:<{recipient}>".encode())
            replies.append((response.code, response.message))
        return replies


async def data_reply(smtp: aiosmtplib.SMTP, recipients: list[str]) -> tuple[int, str]:
    """Send one message on an open connection and return the reply to the end of DATA."""
    await smtp.mail(SENDER)
    for recipient in recipients:
        await smtp.rcpt(recipient)
    try:
        response = await smtp.data(MESSAGE)
    except aiosmtplib.SMTPDataError as error:
        return error.code, error.message
    return response.code, response.message


async def send_one(sink: Sink, recipients: list[str]) -> tuple[int, str]:
    async with client(sink) as smtp:
        return await data_reply(smtp, recipients)


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Return a server context with a certificate for 127.0.0.1 and a client context trusting it."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.parametrize(
    ("recipient", "code", "text"),
    [
        ("tempfail-a@example.net", 451, "4.7.1 Try again later"),
        ("TempFail-A@example.net", 451, "4.7.1 Try again later"),
        ("bounce-a@example.net", 550, "5.1.1 User unknown"),
        ("full-a@example.net", 452, "4.2.2 Mailbox full"),
        ("full552-a@example.net", 552, "5.2.2 Mailbox full"),
        ("relaydeny-a@example.net", 550, "5.7.1 Relaying denied"),
        ("plain@example.net", 250, "2.1.5 OK"),
    ],
)
def test_rcpt_rule_reply(recipient: str, code: int, text: str) -> None:
    replies, stats = run(lambda sink: rcpt_codes(sink, [recipient]))

    assert replies == [(code, text)]
    assert stats.rejected == (0 if code == 250 else 1)


def test_greylist_accepts_third_attempt() -> None:
    recipients = ["tempfail2-a@example.net"] * 3 + ["tempfail2-b@example.net"]
    replies, stats = run(lambda sink: rcpt_codes(sink, recipients))

    assert [code for code, _ in replies] == [451, 451, 250, 451]
    assert stats.rejected == 3


def test_greylist_counts_across_connections() -> None:
    async def scenario(sink: Sink) -> list[tuple[int, str]]:
        replies = []
        for _ in range(3):
            replies += await rcpt_codes(sink, ["tempfail2-a@example.net"])
        return replies

    replies, _ = run(scenario)

    assert [code for code, _ in replies] == [451, 451, 250]


@pytest.mark.parametrize(
    ("recipient", "code", "text"),
    [
        ("reject-data-a@example.net", 554, "5.6.0 Message rejected"),
        ("toolarge-a@example.net", 552, "5.3.4 Message too big"),
        ("plain@example.net", 250, "2.0.0 OK"),
    ],
)
def test_data_rule_reply(recipient: str, code: int, text: str) -> None:
    reply, stats = run(lambda sink: send_one(sink, [recipient]))

    assert reply == (code, text)
    assert stats.messages == (1 if code == 250 else 0)


def test_data_rule_applies_to_whole_message() -> None:
    recipients = ["plain@example.net", "reject-data-b@example.net"]
    reply, stats = run(lambda sink: send_one(sink, recipients))

    assert reply[0] == 554
    assert stats.messages == 0
    assert stats.rejected == 1


def test_slow_delays_end_of_data() -> None:
    started = time.monotonic()
    reply, _ = run(lambda sink: send_one(sink, ["slow1-a@example.net"]))
    elapsed = time.monotonic() - started

    assert reply[0] == 250
    assert elapsed >= 1.0
    assert elapsed < 1.9  # below the 2 s default, so the N in slowN- was used


@pytest.mark.parametrize(
    ("local", "seconds"),
    [("slow-a", 2.0), ("slow5-a", 5.0), ("SLOW3-a", 3.0), ("slowly", 0.0), ("a-slow-b", 0.0)],
)
def test_slow_delay_parse(local: str, seconds: float) -> None:
    assert slow_delay(local_part(f"{local}@example.net")) == seconds


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """Read one reply, which may span several lines, and return its last line."""
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    return line


async def bytes_after_data(sink: Sink, recipient: str, data: bytes) -> bytes:
    """Run a transaction by hand, send ``data`` after the 354 and return the next bytes received.

    The result is empty when the sink closed the connection instead of replying. Fails with
    TimeoutError when the sink does neither within 2 s.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", sink.port)
    try:
        await read_reply(reader)
        commands = ["EHLO client.example.com", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{recipient}>"]
        for command in [*commands, "DATA"]:
            writer.write(command.encode() + b"\r\n")
            await read_reply(reader)
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), timeout=2)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_drop_data_closes_before_final_dot() -> None:
    first_line = MESSAGE.split(b"\r\n")[0] + b"\r\n"
    after, stats = run(lambda sink: bytes_after_data(sink, "drop-data-a@example.net", first_line))

    assert after == b""
    assert stats.dropped_during_data == 1
    assert stats.messages == 0
    assert stats.current_connections == 0


def test_drop_after_dot_closes_without_reply() -> None:
    after, stats = run(
        lambda sink: bytes_after_data(sink, "drop-after-dot-a@example.net", MESSAGE + b".\r\n"),
        keep_messages=True,
    )

    assert after == b""
    assert stats.dropped_after_dot == 1
    assert stats.messages == 0
    assert stats.received == []


def test_plain_recipient_replies_after_dot() -> None:
    after, _ = run(lambda sink: bytes_after_data(sink, "a@example.net", MESSAGE + b".\r\n"))

    assert after.startswith(b"250 2.0.0 OK\r\n")


def test_tempfail_every_closes_after_limit() -> None:
    async def scenario(sink: Sink) -> tuple[list[int], int, bool]:
        async with client(sink) as smtp:
            codes = [(await data_reply(smtp, ["a@example.net"]))[0] for _ in range(2)]
            response = await smtp.execute_command(b"MAIL", f"FROM:<{SENDER}>".encode())
            return codes, response.code, smtp.is_connected

    (codes, limit_code, connected), stats = run(scenario, tempfail_every=2)

    assert codes == [250, 250]
    assert limit_code == 421
    assert connected is False
    assert stats.closed_after_limit == 1
    assert stats.messages == 2
    assert stats.current_connections == 0


def test_drop_after_closes_at_next_mail() -> None:
    async def scenario(sink: Sink) -> tuple[int, bool]:
        async with client(sink) as smtp:
            code, _ = await data_reply(smtp, ["a@example.net"])
            try:
                await smtp.mail(SENDER)
            except aiosmtplib.SMTPServerDisconnected:
                return code, True
            return code, False

    (code, disconnected), stats = run(scenario, drop_after=1)

    assert code == 250
    assert disconnected is True
    assert stats.closed_after_limit == 1


def test_script_replies_before_rules() -> None:
    async def scenario(sink: Sink) -> list[tuple[int, str]]:
        async with client(sink) as smtp:
            return [await data_reply(smtp, ["reject-data-a@example.net"]) for _ in range(3)]

    replies, stats = run(scenario, script=["451 4.3.0 Busy", "250 2.0.0 Queued"])

    assert replies == [
        (451, "4.3.0 Busy"),
        (250, "2.0.0 Queued"),
        (554, "5.6.0 Message rejected"),
    ]
    assert stats.messages == 1
    assert stats.rejected == 2


def test_script_invalid_line() -> None:
    with pytest.raises(ValueError, match=r"'25O OK' at position 2"):
        Sink(script=["250 OK", "25O OK"])


def test_keep_messages_records_envelope() -> None:
    async def scenario(sink: Sink) -> int:
        async with client(sink) as smtp:
            await smtp.sendmail(SENDER, ["a@example.net", "bounce-b@example.net"], MESSAGE)
            assert smtp.transport is not None
            return int(smtp.transport.get_extra_info("sockname")[1])

    client_port, stats = run(scenario, keep_messages=True)
    message = stats.received[0]

    assert len(stats.received) == 1
    assert message.envelope_sender == SENDER
    assert message.recipients == ("a@example.net",)
    assert message.data == MESSAGE
    assert message.message_id == "<m1@example.com>"
    assert message.smtputf8 is False
    assert message.peer_port == client_port
    assert stats.recipients == 1


def test_smtputf8_recorded() -> None:
    async def scenario(sink: Sink) -> None:
        async with client(sink) as smtp:
            await smtp.mail(SENDER, options=["SMTPUTF8"])
            await smtp.rcpt("josé@example.net", encoding="utf-8")
            await smtp.data(MESSAGE)

    _, stats = run(scenario, keep_messages=True)

    assert stats.received[0].smtputf8 is True
    assert stats.received[0].recipients == ("josé@example.net",)


def test_smtputf8_disabled() -> None:
    async def scenario(sink: Sink) -> tuple[bool, int]:
        async with client(sink) as smtp:
            await smtp.ehlo()
            advertised = smtp.supports_extension("smtputf8")
            response = await smtp.execute_command(b"MAIL", f"FROM:<{SENDER}> SMTPUTF8".encode())
            return advertised, response.code

    (advertised, code), _ = run(scenario, smtputf8=False)

    assert advertised is False
    assert code == 501


def test_maildir_stores_each_message_once(tmp_path: Path) -> None:
    folder = tmp_path / "maildir"

    async def scenario(sink: Sink) -> None:
        async with client(sink) as smtp:
            await smtp.sendmail(SENDER, ["a@example.net", "b@example.net"], MESSAGE)
            await smtp.sendmail(SENDER, ["c@example.net"], MESSAGE)

    run(scenario, maildir=str(folder))
    box = mailbox.Maildir(str(folder), create=False)
    stored = sorted((box.get_bytes(key) for key in box.iterkeys()), key=len)

    assert len(stored) == 2
    assert stored[0].startswith(b"Return-Path: <sender@example.com>\r\n")
    assert b"Delivered-To: c@example.net\r\n" in stored[0]
    assert stored[0].endswith(MESSAGE)
    assert b"Delivered-To: a@example.net\r\nDelivered-To: b@example.net\r\n" in stored[1]


def test_maildir_in_existing_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()

    async def scenario(sink: Sink) -> None:
        async with client(sink) as smtp:
            await smtp.sendmail(SENDER, ["a@example.net"], MESSAGE)

    _, stats = run(scenario, maildir=str(folder))

    assert stats.messages == 1
    assert len(list((folder / "new").iterdir())) == 1


def test_concurrent_connections_counted() -> None:
    async def scenario(sink: Sink) -> SinkStats:
        clients = [client(sink) for _ in range(3)]
        await asyncio.gather(*(smtp.connect() for smtp in clients))
        during = sink.stats
        await asyncio.gather(*(smtp.quit() for smtp in clients))
        return during

    during, after = run(scenario)

    assert during.current_connections == 3
    assert during.max_concurrent_connections == 3
    assert after.current_connections == 0
    assert after.max_concurrent_connections == 3
    assert after.connections == 3


@pytest.mark.parametrize("enabled", [True, False])
def test_pipelining_advertised(enabled: bool) -> None:
    async def scenario(sink: Sink) -> bool:
        async with client(sink) as smtp:
            await smtp.ehlo()
            return smtp.supports_extension("pipelining")

    advertised, _ = run(scenario, pipelining=enabled)

    assert advertised is enabled


def test_starttls_required_before_mail() -> None:
    server_context, client_context = tls_contexts()

    async def scenario(sink: Sink) -> tuple[int, bool]:
        async with client(sink, tls_context=client_context) as smtp:
            await smtp.ehlo()
            plain_code = (await smtp.execute_command(b"MAIL", f"FROM:<{SENDER}>".encode())).code
            await smtp.starttls()
            await smtp.sendmail(SENDER, ["a@example.net"], MESSAGE)
            return plain_code, smtp.get_transport_info("sslcontext") is not None

    (plain_code, encrypted), stats = run(
        scenario, tls_context=server_context, require_starttls=True
    )

    assert plain_code == 530
    assert encrypted is True
    assert stats.messages == 1
    assert stats.connections == 1


def test_implicit_tls_accepts_message() -> None:
    server_context, client_context = tls_contexts()

    async def scenario(sink: Sink) -> tuple[bool, bool]:
        async with client(sink, use_tls=True, start_tls=None, tls_context=client_context) as smtp:
            await smtp.ehlo()
            offers_starttls = smtp.supports_extension("starttls")
            await smtp.sendmail(SENDER, ["a@example.net"], MESSAGE)
            return offers_starttls, smtp.get_transport_info("sslcontext") is not None

    (offers_starttls, encrypted), stats = run(
        scenario, tls_context=server_context, implicit_tls=True
    )

    assert offers_starttls is False
    assert encrypted is True
    assert stats.messages == 1


def test_auth_required_before_mail() -> None:
    async def scenario(sink: Sink) -> tuple[int, int]:
        async with client(sink) as smtp:
            await smtp.ehlo()
            unauthenticated = await smtp.execute_command(b"MAIL", f"FROM:<{SENDER}>".encode())
            try:
                await smtp.auth_plain("user", "wrong")
            except aiosmtplib.SMTPAuthenticationError as error:
                return unauthenticated.code, error.code
            return unauthenticated.code, 235

    (mail_code, auth_code), stats = run(scenario, auth={"user": "secret"})

    assert mail_code == 530
    assert auth_code == 535
    assert stats.messages == 0


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_auth_accepts_credentials(mechanism: str) -> None:
    async def scenario(sink: Sink) -> int:
        async with client(sink) as smtp:
            await smtp.ehlo()
            login = smtp.auth_plain if mechanism == "plain" else smtp.auth_login
            response = await login("user", "secret")
            await smtp.sendmail(SENDER, ["a@example.net"], MESSAGE)
            return response.code

    code, stats = run(scenario, auth={"user": "secret"})

    assert code == 235
    assert stats.messages == 1


def test_auth_advertised_only_when_configured() -> None:
    async def scenario(sink: Sink) -> bool:
        async with client(sink) as smtp:
            await smtp.ehlo()
            return smtp.supports_extension("auth")

    with_auth, _ = run(scenario, auth={"user": "secret"})
    without_auth, _ = run(scenario)

    assert with_auth is True
    assert without_auth is False


def test_auth_after_starttls_only() -> None:
    server_context, client_context = tls_contexts()

    async def scenario(sink: Sink) -> tuple[bool, bool]:
        async with client(sink, tls_context=client_context) as smtp:
            await smtp.ehlo()
            before = smtp.supports_extension("auth")
            await smtp.starttls()
            await smtp.ehlo()
            return before, smtp.supports_extension("auth")

    (before, after), _ = run(scenario, tls_context=server_context, auth={"user": "secret"})

    assert before is False
    assert after is True


def test_port_zero_reports_bound_port() -> None:
    async def scenario(sink: Sink) -> int:
        return sink.port

    port, _ = run(scenario, port=0)

    assert port > 0


def test_stop_aborts_open_connection() -> None:
    async def main() -> tuple[SinkStats, bool]:
        sink = Sink()
        await sink.start()
        smtp = client(sink)
        await smtp.connect()
        await sink.stop()
        stats = sink.stats
        await asyncio.sleep(0.05)
        disconnected = not smtp.is_connected
        smtp.close()
        return stats, disconnected

    stats, disconnected = asyncio.run(main())

    assert stats.connections == 1
    assert stats.current_connections == 0
    assert disconnected is True


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"implicit_tls": True}, "implicit_tls=True needs tls_context"),
        ({"require_starttls": True}, "require_starttls=True needs tls_context"),
        ({"tempfail_every": 0}, "tempfail_every must be"),
        ({"drop_after": -1}, "drop_after must be"),
    ],
)
def test_invalid_options(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Sink(**options)


def test_rules_help_lists_every_prefix() -> None:
    prefixes = [prefix for prefix, _ in RCPT_RULES + DATA_RULES]
    prefixes += ["tempfail2-", "slow-", "slowN-", "drop-data-", "drop-after-dot-"]

    for prefix in prefixes:
        assert prefix in SINK_RULES_HELP, prefix


def test_threaded_sink_with_smtplib() -> None:
    with ThreadedSink(keep_messages=True) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as smtp:
            refused = smtp.sendmail(SENDER, ["a@example.net", "bounce-b@example.net"], MESSAGE)
        stats = sink.stats

    assert refused == {"bounce-b@example.net": (550, b"5.1.1 User unknown")}
    assert stats.messages == 1
    assert stats.received[0].recipients == ("a@example.net",)


def test_threaded_sink_stop_idempotent() -> None:
    sink = ThreadedSink()
    sink.start()
    port = sink.port
    sink.stop()
    sink.stop()

    assert port > 0
    with pytest.raises(OSError), smtplib.SMTP("127.0.0.1", port, timeout=1):
        pass


def test_main_sink_prints_counts_and_totals() -> None:
    code = "from mailblast.sink import main_sink; main_sink('127.0.0.1', 0, None, interval=0.05)"
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 10)
        assert readable, "the sink printed no listening line within 10 s"
        first_line = process.stdout.readline()
        port = int(first_line.rsplit(":", 1)[1])
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.sendmail(SENDER, ["a@example.net"], MESSAGE)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert first_line.startswith("mailblast sink listening on 127.0.0.1:")
    assert "\nmessages 1, recipients 1," in "\n" + output
    assert "totals: messages 1, recipients 1," in output
    assert process.returncode == 0
