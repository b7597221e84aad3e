"""Conformance of the SMTP client: aiosmtpd, Postfix smtp-sink and a scripted loopback relay."""

from __future__ import annotations

import asyncio
import gc
import itertools
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import trustme
from hypothesis import strategies as st

from mailblast.config import RelaySettings
from mailblast.relay.classify import Command, Reply, Scope
from mailblast.relay.client import dot_stuff
from mailblast.relay.connection import RelayConnection, SessionError
from mailblast.relay.protocol import ReplyProtocol, SMTPConnectionLost, SMTPReply
from mailblast.sink import Sink
from scripted_relay import Script, pending_lines, port_of, start_scripted

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

SENDER = "bounces@example.com"
MESSAGE = b"Subject: test\r\nTo: reader@example.org\r\n\r\nHello.\r\n"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
needs_smtp_sink = pytest.mark.skipif(
    not Path(SMTP_SINK).exists(), reason="Postfix smtp-sink is not installed"
)


@pytest.fixture(autouse=True)
def collect_leaked_sockets() -> Iterator[None]:
    """A failed TLS handshake can leave a socket to the garbage collector (see connection.py)."""
    yield
    gc.collect()


def settings(port: int, **keys: Any) -> RelaySettings:
    timeouts = {"command_timeout": 5.0, "data_timeout": 5.0, "connect_timeout": 5.0}
    base = RelaySettings(name="relay", host="127.0.0.1", port=port, tls="none")
    return replace(base, **{**timeouts, **keys})


async def nothing() -> None:
    return None


async def send_all(
    relay: RelaySettings, recipients: list[str], data: bytes = MESSAGE, *, ahead: bool = False
) -> tuple[RelayConnection, list[Reply]]:
    """Open one session, send ``data`` to each recipient in turn, quit; return the replies.

    With ``ahead`` each message's final dot carries the next recipient's envelope.
    """
    connection = RelayConnection(relay, "client.example.com")
    await connection.open()
    replies = []
    for index, recipient in enumerate(recipients):
        following: tuple[object, list[bytes]] | None = None
        if ahead and index + 1 < len(recipients):
            lines = connection.envelope_lines(SENDER, recipients[index + 1], False)
            assert isinstance(lines, list)
            following = (recipients[index + 1], lines)
        replies.append(await connection.send(SENDER, recipient, data, False, nothing, following))
        if not connection.is_open:
            break
    await connection.quit()
    return connection, replies


async def with_sink(run: Callable[[Sink], Awaitable[Any]], **options: Any) -> tuple[Sink, Any]:
    sink = Sink(**options)
    async with sink:
        result = await run(sink)
    return sink, result


# Reply parsing


def test_reply_split_across_reads() -> None:
    async def parse() -> list[SMTPReply]:
        protocol = ReplyProtocol()
        for chunk in (b"250-first line\r", b"\n250-sec", b"ond\r\n250 last\r\n354 go\r\n"):
            protocol.data_received(chunk)
        return [await protocol.read_reply(1), await protocol.read_reply(1)]

    first, second = asyncio.run(parse())

    assert first == SMTPReply(250, "first line\nsecond\nlast")
    assert second == SMTPReply(354, "go")


REPLY_STREAM = (
    b"250-mail.example.com\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n250 2.1.0 Ok\r\n"
    b"250 2.1.5 Ok\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued\r\n"
)
REPLY_STREAM_PARSED = [
    SMTPReply(250, "mail.example.com\nPIPELINING\nSMTPUTF8"),
    SMTPReply(250, "2.1.0 Ok"),
    SMTPReply(250, "2.1.5 Ok"),
    SMTPReply(354, "End data with <CR><LF>.<CR><LF>"),
    SMTPReply(250, "2.0.0 Ok: queued"),
]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(cuts=st.lists(st.integers(min_value=0, max_value=len(REPLY_STREAM)), max_size=12))
def test_reply_stream_any_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(REPLY_STREAM)]
    chunks = [REPLY_STREAM[start:end] for start, end in itertools.pairwise(bounds)]

    async def parse() -> tuple[list[SMTPReply], bool]:
        protocol = ReplyProtocol()
        for chunk in chunks:
            protocol.data_received(chunk)
        replies = [await protocol.read_reply(1) for _ in REPLY_STREAM_PARSED]
        return replies, protocol.has_unread()

    replies, unread = asyncio.run(parse())

    assert replies == REPLY_STREAM_PARSED
    assert not unread


def test_reply_malformed_line_fails() -> None:
    async def parse() -> None:
        protocol = ReplyProtocol()
        protocol.data_received(b"hello there\r\n")
        await protocol.read_reply(1)

    with pytest.raises(SMTPConnectionLost, match="not a reply"):
        asyncio.run(parse())


def test_reply_after_malformed_line_not_read() -> None:
    async def parse() -> SMTPReply:
        protocol = ReplyProtocol()
        protocol.data_received(b"250 first\r\nnot a reply\r\n250 later\r\n")
        await protocol.read_reply(1)
        return await protocol.read_reply(1)

    with pytest.raises(SMTPConnectionLost, match="not a reply"):
        asyncio.run(parse())


def test_dot_stuffing() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n..c\r\n") == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
    assert dot_stuff(b"no newline at end") == b"no newline at end\r\n.\r\n"


# aiosmtpd


@pytest.mark.parametrize("ahead", [False, True], ids=["", "envelope-ahead"])
@pytest.mark.parametrize("pipelining", [True, False])
def test_aiosmtpd_delivers(pipelining: bool, ahead: bool) -> None:
    # Without PIPELINING the client writes no envelope ahead even when given one.
    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        recipients = [f"guest{i}@example.org" for i in range(5)]
        return await send_all(settings(sink.port), recipients, ahead=ahead)

    sink, (connection, replies) = asyncio.run(
        with_sink(run, pipelining=pipelining, keep_messages=True)
    )

    assert connection.pipelining is pipelining
    assert [reply.scope for reply in replies] == [Scope.SUCCESS] * 5
    assert sink.stats.messages == 5
    assert [m.recipients for m in sink.stats.received] == [
        (f"guest{i}@example.org",) for i in range(5)
    ]
    assert sink.stats.received[0].data.endswith(b"Hello.\r\n")


def test_aiosmtpd_keeps_leading_dots() -> None:
    data = b"Subject: dots\r\n\r\n.first\r\n..second\r\n.\r\nlast\r\n"

    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        return await send_all(settings(sink.port), ["reader@example.org"], data)

    sink, (_, replies) = asyncio.run(with_sink(run, keep_messages=True))

    assert replies[0].scope is Scope.SUCCESS
    assert sink.stats.received[0].data == data


def test_aiosmtpd_failures_at_each_step() -> None:
    recipients = [
        "tempfail-a@example.org",
        "bounce-b@example.org",
        "reject-data-c@example.org",
        "full552-d@example.org",
        "fine@example.org",
        "drop-after-dot-e@example.org",
    ]

    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        return await send_all(settings(sink.port), recipients)

    sink, (_, replies) = asyncio.run(with_sink(run))

    outcomes = [(reply.command, reply.code, reply.scope) for reply in replies]
    assert outcomes == [
        (Command.RCPT, 451, Scope.TEMPORARY),
        (Command.RCPT, 550, Scope.RECIPIENT),
        (Command.END_OF_DATA, 554, Scope.MESSAGE),
        (Command.RCPT, 552, Scope.TEMPORARY),
        (Command.END_OF_DATA, 250, Scope.SUCCESS),
        (Command.END_OF_DATA, None, Scope.UNKNOWN),
    ]
    assert sink.stats.messages == 1


def test_aiosmtpd_421_at_mail_closes() -> None:
    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        recipients = [f"guest{i}@example.org" for i in range(3)]
        return await send_all(settings(sink.port), recipients)

    sink, (connection, replies) = asyncio.run(with_sink(run, tempfail_every=1))

    assert sink.stats.closed_after_limit == 1
    assert replies[0].scope is Scope.SUCCESS
    assert (replies[1].command, replies[1].code) == (Command.MAIL, 421)
    assert replies[1].scope is Scope.CONNECTION
    assert len(replies) == 2
    assert not connection.is_open


def test_aiosmtpd_drop_during_data() -> None:
    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        return await send_all(settings(sink.port), ["drop-data-a@example.org"])

    sink, (connection, replies) = asyncio.run(with_sink(run))

    # The drop may reach the client before or after it wrote the message.
    assert replies[0].scope in (Scope.CONNECTION, Scope.UNKNOWN)
    assert replies[0].code is None
    assert sink.stats.dropped_during_data == 1
    assert not connection.is_open


@pytest.fixture
def authority(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a certificate for 127.0.0.1 from a private CA, and the CA file."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_and_auth(
    mode: str, authority: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file = authority
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "s3cret")
    options = {"require_starttls": mode == "starttls", "implicit_tls": mode == "implicit"}
    relay_keys = {"username": "blast", "password_env": "MAILBLAST_TEST_PASSWORD"}

    async def run(sink: Sink) -> tuple[RelayConnection, list[Reply]]:
        relay = settings(sink.port, tls=mode, ca_file=str(ca_file), **relay_keys)
        return await send_all(relay, ["reader@example.org", "bounce-x@example.org"])

    sink, (_, replies) = asyncio.run(
        with_sink(run, tls_context=server, auth={"blast": "s3cret"}, **options)
    )

    assert [reply.scope for reply in replies] == [Scope.SUCCESS, Scope.RECIPIENT]
    assert sink.stats.messages == 1


def test_tls_wrong_password_is_relay_scope(
    authority: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca_file = authority
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "wrong")

    async def run(sink: Sink) -> SessionError:
        relay = settings(
            sink.port,
            tls="starttls",
            ca_file=str(ca_file),
            username="blast",
            password_env="MAILBLAST_TEST_PASSWORD",
        )
        with pytest.raises(SessionError) as caught:
            await send_all(relay, ["reader@example.org"])
        return caught.value

    _, error = asyncio.run(
        with_sink(run, tls_context=server, require_starttls=True, auth={"blast": "s3cret"})
    )

    assert (error.reply.command, error.reply.code) == (Command.AUTH, 535)
    assert error.reply.scope is Scope.RELAY
    assert "wrong" not in error.reply.text


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_unknown_ca_rejected(mode: str, authority: tuple[ssl.SSLContext, Path]) -> None:
    server, _ = authority
    options = {"require_starttls": mode == "starttls", "implicit_tls": mode == "implicit"}

    async def run(sink: Sink) -> SessionError:
        with pytest.raises(SessionError) as caught:
            await send_all(settings(sink.port, tls=mode), ["reader@example.org"])
        return caught.value

    sink, error = asyncio.run(with_sink(run, tls_context=server, **options))

    assert error.reply.scope is Scope.RELAY
    assert "failed verification" in error.reply.text
    assert sink.stats.messages == 0


# Scripted relay: exact replies and timing


def run_scripted(
    script: Script, recipients: list[str], *, ahead: bool = False, **keys: Any
) -> tuple[RelayConnection, list[Reply]]:
    async def run() -> tuple[RelayConnection, list[Reply]]:
        server = await start_scripted(script)
        try:
            return await send_all(settings(port_of(server), **keys), recipients, ahead=ahead)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


@pytest.mark.parametrize("advertised", [True, False])
def test_pipelining_only_when_advertised(advertised: bool) -> None:
    ehlo = "250-relay.example.net\n250-PIPELINING\n250 8BITMIME" if advertised else "250 relay"
    script = Script(replies={"EHLO": ehlo}, mail_delay=0.2)

    connection, replies = run_scripted(script, ["reader@example.org"])

    assert replies[0].scope is Scope.SUCCESS
    early = [line.split(":")[0] for line in pending_lines(script)]
    assert early == (["RCPT TO", "DATA"] if advertised else [])
    assert connection.pipelining is advertised


@pytest.mark.parametrize("ahead", [True, False])
def test_envelope_behind_final_dot(ahead: bool) -> None:
    script = Script(dot_delay=0.2)

    connection, replies = run_scripted(script, ["a@example.org", "b@example.org"], ahead=ahead)

    assert [reply.scope for reply in replies] == [Scope.SUCCESS] * 2
    assert len(script.bodies) == 2
    expected = ["MAIL FROM:<bounces@example.com> BODY=8BITMIME", "RCPT TO:<b@example.org>", "DATA"]
    assert script.behind_dot == (expected if ahead else [])
    assert connection.messages_sent == 2


def test_envelope_ahead_after_refused_message() -> None:
    # The reply to the final dot ends the transaction, so no RSET undoes the next envelope.
    script = Script(replies={".": ["554 5.6.0 content rejected", "250 2.0.0 queued"]})

    _, replies = run_scripted(script, ["a@example.org", "b@example.org"], ahead=True)

    assert [(reply.command, reply.scope) for reply in replies] == [
        (Command.END_OF_DATA, Scope.MESSAGE),
        (Command.END_OF_DATA, Scope.SUCCESS),
    ]
    assert "RSET" not in [line for line, _ in script.arrivals]
    assert len(script.bodies) == 2


def test_envelope_ahead_lost_with_421() -> None:
    script = Script(replies={".": "421 4.3.2 shutting down"})

    connection, replies = run_scripted(script, ["a@example.org", "b@example.org"], ahead=True)

    assert [(reply.command, reply.scope) for reply in replies] == [
        (Command.END_OF_DATA, Scope.CONNECTION)
    ]
    assert not connection.is_open
    assert len(script.bodies) == 1  # the second message's envelope went out, its text did not


def test_envelope_ahead_not_sent_closes_session() -> None:
    async def run() -> tuple[RelayConnection, Reply, Script]:
        script = Script(dot_delay=0.1)
        server = await start_scripted(script)
        try:
            connection = RelayConnection(settings(port_of(server)), "client.example.com")
            await connection.open()
            lines = connection.envelope_lines(SENDER, "b@example.org", False)
            assert isinstance(lines, list)
            await connection.send(SENDER, "a@example.org", MESSAGE, False, nothing, ("b", lines))
            # Another message than the one whose envelope went ahead must not use it.
            reply = await connection.send(SENDER, "c@example.org", MESSAGE, False, nothing)
            await connection.quit()
            await asyncio.sleep(0.2)
            return connection, reply, script
        finally:
            server.close()
            await server.wait_closed()

    connection, reply, script = asyncio.run(run())

    assert reply.scope is Scope.CONNECTION
    assert not connection.is_open
    assert len(script.bodies) == 1


def test_multiline_replies_each_step() -> None:
    script = Script(
        replies={
            "greeting": "220-relay.example.net\n220 welcome",
            "MAIL": "250-2.1.0 sender\n250 2.1.0 OK",
            "RCPT": "250-2.1.5 one\n250-2.1.5 two\n250 2.1.5 OK",
            "DATA": "354-first\n354 go ahead",
            ".": "250-2.0.0 queued\n250 2.0.0 as 12345",
        }
    )

    _, replies = run_scripted(script, ["reader@example.org"])

    assert replies[0].scope is Scope.SUCCESS
    assert replies[0].text == "2.0.0 queued 250 2.0.0 as 12345".replace(" 250 ", " ")
    assert script.bodies[0][-1] == "Hello."


def test_data_command_refused_pipelined() -> None:
    script = Script(replies={"DATA": ["554 5.5.1 no valid recipients", "354 go ahead"]})

    _, replies = run_scripted(script, ["a@example.org", "b@example.org"])

    assert (replies[0].command, replies[0].code, replies[0].scope) == (
        Command.DATA,
        554,
        Scope.MESSAGE,
    )
    assert replies[1].scope is Scope.SUCCESS
    assert any(line == "RSET" for line, _ in script.arrivals)


def test_rcpt_refused_but_data_started() -> None:
    script = Script(replies={"RCPT": "550 5.1.1 unknown", "DATA": "354 go ahead"})

    connection, replies = run_scripted(script, ["a@example.org"])

    assert (replies[0].command, replies[0].scope) == (Command.RCPT, Scope.RECIPIENT)
    assert connection.messages_sent == 0
    assert script.bodies == [[]]  # the client ended DATA at once with a lone dot


def test_auth_login_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILBLAST_TEST_PASSWORD", "s3cret")
    script = Script(
        replies={
            "EHLO": "250-relay.example.net\n250-AUTH LOGIN\n250 PIPELINING",
            "AUTH": "334 VXNlcm5hbWU6",
            "": ["334 UGFzc3dvcmQ6", "235 2.7.0 OK"],
        }
    )
    keys = {"username": "blast", "password_env": "MAILBLAST_TEST_PASSWORD"}

    _, replies = run_scripted(script, ["a@example.org"], allow_plaintext_auth=True, **keys)

    lines = [line for line, _ in script.arrivals]
    assert lines[1:4] == ["AUTH LOGIN", "Ymxhc3Q=", "czNjcmV0"]
    assert replies[0].scope is Scope.SUCCESS


def test_reply_timeout_is_connection_scope() -> None:
    script = Script(mail_delay=2.0)

    connection, replies = run_scripted(script, ["a@example.org"], command_timeout=0.3)

    assert (replies[0].command, replies[0].scope) == (Command.MAIL, Scope.CONNECTION)
    assert "no reply within 0.3 s" in replies[0].text
    assert not connection.is_open


def test_greeting_554_is_relay_scope() -> None:
    script = Script(replies={"greeting": "554 5.7.1 no service for you"})

    with pytest.raises(SessionError) as caught:
        run_scripted(script, ["a@example.org"])

    assert (caught.value.reply.command, caught.value.reply.scope) == (Command.CONNECT, Scope.RELAY)


# Postfix smtp-sink


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., int]]:
    """Start Postfix smtp-sink processes with extra options; return a function giving the port."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> int:
        port = free_port()
        command = [SMTP_SINK, "-u", "nobody", *options, f"127.0.0.1:{port}", "64"]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not start: {command}")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@needs_smtp_sink
@pytest.mark.parametrize("options", [(), ("-p",)], ids=["pipelining", "no-pipelining"])
@pytest.mark.parametrize("ahead", [False, True], ids=["", "envelope-ahead"])
def test_smtp_sink_delivers(
    smtp_sink: Callable[..., int], options: tuple[str, ...], ahead: bool
) -> None:
    port = smtp_sink(*options)
    recipients = [f"guest{i}@example.org" for i in range(50)]

    connection, replies = asyncio.run(send_all(settings(port), recipients, ahead=ahead))

    assert connection.pipelining is (options == ())
    assert [reply.scope for reply in replies] == [Scope.SUCCESS] * 50


@needs_smtp_sink
@pytest.mark.parametrize(
    ("options", "command", "scope"),
    [
        (("-r", "mail"), Command.MAIL, Scope.TEMPORARY),
        (("-f", "mail"), Command.MAIL, Scope.SENDER),
        (("-r", "rcpt"), Command.RCPT, Scope.TEMPORARY),
        (("-f", "rcpt"), Command.RCPT, Scope.RECIPIENT),
        (("-f", "data"), Command.DATA, Scope.MESSAGE),
        (("-r", "."), Command.END_OF_DATA, Scope.TEMPORARY),
        (("-f", "."), Command.END_OF_DATA, Scope.MESSAGE),
    ],
)
def test_smtp_sink_refusals(
    smtp_sink: Callable[..., int], options: tuple[str, ...], command: Command, scope: Scope
) -> None:
    port = smtp_sink(*options)

    connection, replies = asyncio.run(send_all(settings(port), ["a@example.org", "b@example.org"]))

    assert [(reply.command, reply.scope) for reply in replies] == [(command, scope)] * 2
    assert connection.messages_sent == 0
