"""Local SMTP test relay that accepts, counts and stores messages, and fails on demand.

The sink is a real aiosmtpd server meant for loopback: the demo, the end-to-end tests and the
benchmarks send to it through the same relay code that talks to production relays. A failure is
chosen by the recipient's local part (``SINK_RULES_HELP`` lists the prefixes), by a scripted
queue of end-of-DATA replies, or by a constructor option.

:class:`Sink` runs in the caller's event loop. :class:`ThreadedSink` runs a :class:`Sink` on its
own event loop in a thread, for blocking clients and for tests that drive the CLI in a
subprocess. :func:`main_sink` is the body of ``mailblast sink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import hmac
import logging
import mailbox
import os
import re
import signal
import ssl
import sys
import threading
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, NoReturn, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, syntax

log = logging.getLogger("mailblast.sink")

REPLY_MAIL_OK: Final = "250 2.1.0 OK"
REPLY_RCPT_OK: Final = "250 2.1.5 OK"
REPLY_DATA_OK: Final = "250 2.0.0 OK"
REPLY_START_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"
REPLY_TOO_MANY_MESSAGES: Final = "421 4.7.0 Too many messages, closing"
REPLY_TRY_AGAIN_LATER: Final = "451 4.7.1 Try again later"
REPLY_MAILBOX_FULL: Final = "452 4.2.2 Mailbox full"
REPLY_AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
REPLY_USER_UNKNOWN: Final = "550 5.1.1 User unknown"
REPLY_RELAYING_DENIED: Final = "550 5.7.1 Relaying denied"
REPLY_MAILBOX_FULL_552: Final = "552 5.2.2 Mailbox full"
REPLY_MESSAGE_TOO_BIG: Final = "552 5.3.4 Message too big"
REPLY_MESSAGE_REJECTED: Final = "554 5.6.0 Message rejected"

# Local-part prefixes rejected at RCPT TO, each with its reply. No prefix is a prefix of another,
# so the order of the table does not matter.
RCPT_RULES: Final[tuple[tuple[str, str], ...]] = (
    ("tempfail-", REPLY_TRY_AGAIN_LATER),
    ("bounce-", REPLY_USER_UNKNOWN),
    ("full-", REPLY_MAILBOX_FULL),
    ("full552-", REPLY_MAILBOX_FULL_552),
    ("relaydeny-", REPLY_RELAYING_DENIED),
)
# Local-part prefixes whose message is rejected at the end of DATA, each with its reply.
DATA_RULES: Final[tuple[tuple[str, str], ...]] = (
    ("toolarge-", REPLY_MESSAGE_TOO_BIG),
    ("reject-data-", REPLY_MESSAGE_REJECTED),
)
GREYLIST_PREFIX: Final = "tempfail2-"
GREYLIST_REJECTIONS: Final = 2
DROP_DURING_DATA_PREFIX: Final = "drop-data-"
DROP_AFTER_DOT_PREFIX: Final = "drop-after-dot-"
SLOW_RULE: Final = re.compile(r"slow(\d*)-")
SLOW_DEFAULT_SECONDS: Final = 2.0

# A scripted reply must be a complete final reply line to the end of DATA.
SCRIPT_REPLY: Final = re.compile(r"[245]\d\d( .*)?\Z")

# How long stop() waits for aborted connections to finish their handlers.
STOP_TIMEOUT_SECONDS: Final = 5.0

SINK_RULES_HELP: Final = f"""\
Failures are chosen by the recipient's local part (prefix match, case-insensitive):
  tempfail-...        "{REPLY_TRY_AGAIN_LATER}" at RCPT
  tempfail2-...       "{REPLY_TRY_AGAIN_LATER}" at RCPT for the first {GREYLIST_REJECTIONS} attempts
                      of that address in this sink's life, then accepted (like greylisting)
  bounce-...          "{REPLY_USER_UNKNOWN}" at RCPT
  full-...            "{REPLY_MAILBOX_FULL}" at RCPT
  full552-...         "{REPLY_MAILBOX_FULL_552}" at RCPT
  relaydeny-...       "{REPLY_RELAYING_DENIED}" at RCPT
  reject-data-...     "{REPLY_MESSAGE_REJECTED}" at the end of DATA
  toolarge-...        "{REPLY_MESSAGE_TOO_BIG}" at the end of DATA
  slow-..., slowN-... the end-of-DATA reply comes after {SLOW_DEFAULT_SECONDS:g} s, or after N s
  drop-data-...       the connection is closed right after the 354 reply to DATA
  drop-after-dot-...  the whole message is read, then the connection is closed with no reply
Every other address is accepted. RCPT rules apply to each recipient on its own. The other
rules apply to the whole message when any accepted recipient matches, in this order:
drop-data, slow, a scripted reply if one is queued, drop-after-dot, toolarge, reject-data.
"""


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the sink accepted with a 2xx reply at the end of DATA."""

    envelope_sender: str
    recipients: tuple[str, ...]
    data: bytes  # exactly as received, CRLF line endings, dot-stuffing removed
    message_id: str | None
    smtputf8: bool
    peer_port: int


@dataclass
class SinkStats:
    """Counters over one sink's life."""

    messages: int = 0  # messages accepted with a 2xx reply at the end of DATA
    recipients: int = 0  # recipients of the accepted messages
    connections: int = 0  # connections accepted in total
    max_concurrent_connections: int = 0
    current_connections: int = 0
    rejected: int = 0  # 4xx or 5xx replies given at RCPT or at the end of DATA
    dropped_during_data: int = 0  # connections closed before the final dot was read
    dropped_after_dot: int = 0  # messages read in full whose connection was closed unanswered
    closed_after_limit: int = 0  # connections closed by the tempfail_every or drop_after limit
    received: list[ReceivedMessage] = field(default_factory=list)  # only with keep_messages


def local_part(address: str) -> str:
    """Return the lower-cased local part of ``address``, which the failure rules match."""
    return address.rpartition("@")[0].lower() if "@" in address else address.lower()


def rcpt_rule_reply(local: str) -> str | None:
    """Return the RCPT rejection for a local part, or None when no RCPT rule matches."""
    for prefix, reply in RCPT_RULES:
        if local.startswith(prefix):
            return reply
    return None


def data_rule_reply(locals_: Iterable[str]) -> str:
    """Return the end-of-DATA reply for a message sent to recipients with these local parts."""
    locals_ = tuple(locals_)
    for prefix, reply in DATA_RULES:
        if any(local.startswith(prefix) for local in locals_):
            return reply
    return REPLY_DATA_OK


def slow_delay(local: str) -> float:
    """Return the end-of-DATA delay in seconds that a ``slow-`` or ``slowN-`` local part sets."""
    match = SLOW_RULE.match(local)
    if match is None:
        return 0.0
    return float(match.group(1)) if match.group(1) else SLOW_DEFAULT_SECONDS


def parse_script(script: Iterable[str]) -> deque[str]:
    """Check each scripted end-of-DATA reply and return them as a queue."""
    replies: deque[str] = deque()
    for position, line in enumerate(script, start=1):
        if not SCRIPT_REPLY.match(line):
            raise ValueError(
                f"invalid scripted reply {line!r} at position {position}: expected a 2xx, 4xx "
                "or 5xx reply line such as '250 2.0.0 OK' or '451 4.3.0 Busy'"
            )
        replies.append(line)
    return replies


def parse_message_id(data: bytes) -> str | None:
    """Return the Message-ID header of a message, or None when it has none."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    value = parser.parsebytes(data).get("Message-ID")
    return None if value is None else str(value).strip()


def maildir_bytes(message: ReceivedMessage) -> bytes:
    """Prefix the message with its envelope as Return-Path and Delivered-To header fields."""
    envelope = [f"Return-Path: <{message.envelope_sender}>\r\n"]
    envelope += [f"Delivered-To: {recipient}\r\n" for recipient in message.recipients]
    return "".join(envelope).encode("utf-8") + message.data


def format_stats(stats: SinkStats) -> str:
    """Format the counters as one line for the console."""
    return (
        f"messages {stats.messages}, recipients {stats.recipients}, rejected {stats.rejected}, "
        f"dropped {stats.dropped_during_data + stats.dropped_after_dot}, "
        f"connections {stats.connections} ({stats.current_connections} open, "
        f"max {stats.max_concurrent_connections})"
    )


class _SinkSMTP(SMTP):
    """One client connection: aiosmtpd's protocol plus connection counting and drops."""

    def __init__(self, handler: _SinkHandler, **options: Any) -> None:
        super().__init__(handler, **options)
        self.sink_handler = handler
        self.messages_on_connection = 0  # transactions that reached the end of DATA
        self._sink_opened = False
        self._sink_closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # STARTTLS calls this a second time for the TLS transport of the same connection.
        if not self._sink_opened:
            self._sink_opened = True
            self.sink_handler.connection_opened(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        # aiosmtpd reports a failed STARTTLS handshake itself, and the transport may report it too.
        if self._sink_opened and not self._sink_closed:
            self._sink_closed = True
            self.sink_handler.connection_closed(self)
        super().connection_lost(error)

    def drop(self) -> NoReturn:
        """Close the connection without a reply and end this connection's command loop.

        Must be called from the command loop's task (a ``handle_*`` hook or an ``smtp_*``
        method). The CancelledError ends that task the way aiosmtpd's own QUIT does.
        """
        if self.transport is not None:
            self.transport.close()
        raise asyncio.CancelledError

    def abort(self) -> asyncio.Task[None] | None:
        """Abort the connection at once and return the task of its command loop."""
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.abort()
        elif self.transport is not None:
            self.transport.close()
        return self._handler_coroutine

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is None or not self.sink_handler.drops_during_data(envelope):
            await super().smtp_DATA(arg)
            return

        # Close right after the 354, before any of the message is read: a client that checks
        # its connection before writing the final dot can then know nothing was delivered.
        await self.push(REPLY_START_DATA)
        self.sink_handler.stats.dropped_during_data += 1
        log.debug("dropped connection from port %s during DATA", self.session_port())
        self.drop()

    def session_port(self) -> int:
        """Return the client's port, which names the connection in records and logs."""
        peer = self.session.peer if self.session is not None else None
        return int(peer[1]) if isinstance(peer, tuple) else 0


class _SinkHandler:
    """aiosmtpd hooks that apply the failure rules and keep the counters.

    Every method runs on the sink's event loop thread, so plain ints are safe to update.
    """

    def __init__(
        self,
        *,
        maildir: str | None,
        keep_messages: bool,
        script: Iterable[str] | None,
        drop_after: int | None,
        pipelining: bool,
        eight_bit_mime: bool,
        auth: dict[str, str] | None,
        tempfail_every: int | None,
    ) -> None:
        self.stats = SinkStats()
        self.keep_messages = keep_messages
        self.maildir = None if maildir is None else _open_maildir(maildir)
        self.script = parse_script(script or ())
        self.drop_after = _positive_or_none("drop_after", drop_after)
        self.tempfail_every = _positive_or_none("tempfail_every", tempfail_every)
        self.pipelining = pipelining
        self.eight_bit_mime = eight_bit_mime
        self.auth = auth
        self.greylist_attempts: dict[str, int] = {}
        self.open_connections: set[_SinkSMTP] = set()

    def connection_opened(self, connection: _SinkSMTP) -> None:
        self.open_connections.add(connection)
        self.stats.connections += 1
        self.stats.current_connections = len(self.open_connections)
        self.stats.max_concurrent_connections = max(
            self.stats.max_concurrent_connections, self.stats.current_connections
        )

    def connection_closed(self, connection: _SinkSMTP) -> None:
        self.open_connections.discard(connection)
        self.stats.current_connections = len(self.open_connections)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """Check a LOGIN or PLAIN user name and password against the ``auth`` table."""
        if self.auth is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)

        expected = self.auth.get(auth_data.login.decode("utf-8", errors="replace"))
        matches = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), auth_data.password
        )
        return AuthResult(success=matches, handled=False)

    async def handle_EHLO(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # The five-argument hook takes over recording the client's name from aiosmtpd.
        session.host_name = hostname
        extensions = [
            line
            for line in responses
            if (self.auth is not None or not line.startswith("250-AUTH"))
            and (self.eight_bit_mime or line[4:].upper() != "8BITMIME")
        ]
        if self.pipelining:
            # aiosmtpd reads commands one line at a time, so pipelined commands already work.
            extensions.insert(-1, "250-PIPELINING")
        return extensions

    async def handle_MAIL(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.auth is not None and not session.authenticated:
            return REPLY_AUTH_REQUIRED

        done = server.messages_on_connection
        if self.drop_after is not None and done >= self.drop_after:
            self.stats.closed_after_limit += 1
            server.drop()
        if self.tempfail_every is not None and done >= self.tempfail_every:
            self.stats.closed_after_limit += 1
            await server.push(REPLY_TOO_MANY_MESSAGES)
            server.drop()

        # A hook that returns a reply takes over aiosmtpd's default bookkeeping.
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_MAIL_OK

    async def handle_RCPT(
        self,
        server: _SinkSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        rejection = self.rcpt_rejection(address)
        if rejection is not None:
            self.stats.rejected += 1
            return rejection

        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return REPLY_RCPT_OK

    def rcpt_rejection(self, address: str) -> str | None:
        """Return the RCPT rejection for an address, counting greylisted attempts."""
        local = local_part(address)
        if not local.startswith(GREYLIST_PREFIX):
            return rcpt_rule_reply(local)

        key = address.lower()
        self.greylist_attempts[key] = self.greylist_attempts.get(key, 0) + 1
        if self.greylist_attempts[key] <= GREYLIST_REJECTIONS:
            return REPLY_TRY_AGAIN_LATER
        return None

    def drops_during_data(self, envelope: Envelope) -> bool:
        """Return whether an accepted recipient's local part selects a drop before the final dot."""
        return any(
            local_part(rcpt).startswith(DROP_DURING_DATA_PREFIX) for rcpt in envelope.rcpt_tos
        )

    async def handle_DATA(self, server: _SinkSMTP, session: Session, envelope: Envelope) -> str:
        locals_ = [local_part(rcpt) for rcpt in envelope.rcpt_tos]
        delay = max((slow_delay(local) for local in locals_), default=0.0)
        if delay > 0:
            await asyncio.sleep(delay)

        server.messages_on_connection += 1
        if self.script:
            reply = self.script.popleft()
        elif any(local.startswith(DROP_AFTER_DOT_PREFIX) for local in locals_):
            self.stats.dropped_after_dot += 1
            log.debug("dropped connection from port %s after the dot", server.session_port())
            server.drop()
        else:
            reply = data_rule_reply(locals_)

        if reply.startswith("2"):
            self.accept(server, envelope)
        else:
            self.stats.rejected += 1
        return reply

    def accept(self, server: _SinkSMTP, envelope: Envelope) -> None:
        """Count an accepted message, and keep or store it when keep_messages or maildir is set."""
        self.stats.messages += 1
        self.stats.recipients += len(envelope.rcpt_tos)
        if not self.keep_messages and self.maildir is None:
            return

        data = envelope.original_content or b""
        message = ReceivedMessage(
            envelope_sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos),
            data=data,
            message_id=parse_message_id(data),
            smtputf8=envelope.smtp_utf8,
            peer_port=server.session_port(),
        )
        if self.keep_messages:
            self.stats.received.append(message)
        if self.maildir is not None:
            # NOTE: a blocking local file write on the event loop. That is acceptable for a test
            # relay, but benchmarks of the sending side should run without a maildir.
            self.maildir.add(maildir_bytes(message))


def _positive_or_none(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError(
            f"{name} must be a whole number of messages of at least 1, got {value}; "
            "pass None to turn the limit off"
        )
    return value


def _check_tls_options(
    tls_context: ssl.SSLContext | None, require_starttls: bool, implicit_tls: bool
) -> None:
    if tls_context is None and (require_starttls or implicit_tls):
        option = "implicit_tls" if implicit_tls else "require_starttls"
        raise ValueError(
            f"{option}=True needs tls_context: pass an ssl.SSLContext with the server "
            "certificate and key loaded"
        )
    if require_starttls and implicit_tls:
        raise ValueError(
            "require_starttls and implicit_tls exclude each other: a listener wrapped in TLS "
            "does not offer STARTTLS; set only one of them"
        )


class Sink:
    """A local SMTP relay on the running event loop that accepts, counts and fails messages.

    Messages are accepted unless a failure rule (``SINK_RULES_HELP``), a scripted reply or a
    limit rejects them. Options:

    - ``maildir``: store each accepted message once, however many recipients it has, as one
      file in this Maildir folder (created if missing), after Return-Path and Delivered-To
      header fields that record its envelope.
    - ``keep_messages``: keep each accepted message in ``stats.received``.
    - ``script``: reply lines such as ``"451 4.3.0 Busy"``, consumed one per end of DATA ahead
      of the recipient rules. A 2xx line accepts the message.
    - ``drop_after=N``: after N messages on one connection, close it without a reply at the next
      MAIL FROM.
    - ``tempfail_every=N``: after N messages on one connection, reply to the next MAIL FROM with
      ``421 4.7.0 Too many messages, closing`` and close the connection.
    - ``pipelining``: advertise PIPELINING in the EHLO reply. ``smtputf8``: accept SMTPUTF8.
      ``eight_bit_mime``: advertise 8BITMIME (aiosmtpd's default).
    - ``tls_context``: offer STARTTLS, required before MAIL with ``require_starttls``, or wrap
      the listener in TLS with ``implicit_tls``.
    - ``auth``: user name to password. Enables AUTH PLAIN and LOGIN and requires a successful
      AUTH before MAIL FROM. AUTH needs TLS first only when STARTTLS is offered.

    A message counts towards the per-connection limits when it reaches the end of DATA,
    whatever the reply.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        maildir: str | None = None,
        keep_messages: bool = False,
        script: Iterable[str] | None = None,
        drop_after: int | None = None,
        pipelining: bool = True,
        eight_bit_mime: bool = True,
        smtputf8: bool = True,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        tempfail_every: int | None = None,
        hostname: str = "sink.example.net",
    ) -> None:
        _check_tls_options(tls_context, require_starttls, implicit_tls)
        self.host = host
        self.port = port
        self._handler = _SinkHandler(
            maildir=maildir,
            keep_messages=keep_messages,
            script=script,
            drop_after=drop_after,
            pipelining=pipelining,
            eight_bit_mime=eight_bit_mime,
            auth=auth,
            tempfail_every=tempfail_every,
        )
        starttls_context = None if implicit_tls else tls_context
        self._listener_tls = tls_context if implicit_tls else None
        self._smtp_options: dict[str, Any] = {
            "hostname": hostname,
            "ident": "mailblast sink",
            "enable_SMTPUTF8": smtputf8,
            "tls_context": starttls_context,
            "require_starttls": require_starttls,
            # aiosmtpd tracks only TLS started by STARTTLS, not a listener wrapped in TLS, so
            # AUTH can require TLS only when STARTTLS is offered. handle_MAIL enforces AUTH
            # before MAIL because aiosmtpd's auth_required without TLS emits a UserWarning.
            "auth_require_tls": starttls_context is not None,
            "authenticator": self._handler.authenticate if auth is not None else None,
            "auth_exclude_mechanism": None if auth is not None else ["LOGIN", "PLAIN"],
        }
        self._server: asyncio.Server | None = None

    @property
    def stats(self) -> SinkStats:
        """A snapshot of the counters, safe to read from another thread."""
        stats = self._handler.stats
        return dataclasses.replace(stats, received=list(stats.received))

    async def start(self) -> None:
        """Bind the listener. Afterwards ``port`` is the bound port, also when 0 was requested."""
        if self._server is not None:
            raise RuntimeError(f"sink on {self.host}:{self.port} is already started")

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _SinkSMTP(self._handler, loop=loop, **self._smtp_options),
            self.host,
            self.port,
            ssl=self._listener_tls,
        )
        # NOTE: a host name that resolves to several addresses gets one socket each, and with
        # port 0 each socket has its own port. Only the first is reported, so pass an IP literal.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("sink listening on %s", _host_port(self.host, self.port))

    async def stop(self) -> None:
        """Stop listening, abort open connections and wait until their handlers have ended."""
        server = self._server
        if server is None:
            return

        self._server = None
        server.close()
        tasks = [connection.abort() for connection in list(self._handler.open_connections)]
        await server.wait_closed()
        pending = {task for task in tasks if task is not None and not task.done()}
        if pending:
            await asyncio.wait(pending, timeout=STOP_TIMEOUT_SECONDS)
        log.info(
            "sink on %s stopped: %s", _host_port(self.host, self.port), format_stats(self.stats)
        )

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class ThreadedSink:
    """A :class:`Sink` on its own event loop in a daemon thread, with synchronous start and stop.

    Takes the same arguments as :class:`Sink`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.sink = Sink(host, port, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.sink.port

    @property
    def stats(self) -> SinkStats:
        return self.sink.stats

    def start(self) -> None:
        """Start the loop thread and bind the listener, raising what binding raised."""
        if self._thread is not None:
            raise RuntimeError(f"sink on {self.sink.host}:{self.port} is already started")

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mailblast-sink", daemon=True
        )
        self._thread.start()
        try:
            self._run(self.sink.start())
        except BaseException:
            self._stop_loop()
            raise

    def stop(self) -> None:
        """Stop the sink, then its loop and thread. Does nothing when not started."""
        if self._loop is None:
            return

        try:
            self._run(self.sink.stop())
        finally:
            self._stop_loop()

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STOP_TIMEOUT_SECONDS * 2)

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> ThreadedSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main_sink(
    host: str,
    port: int,
    maildir: str | None,
    *,
    interval: float = 5.0,
    out: TextIO | None = None,
    **options: Any,
) -> None:
    """Run a sink until SIGINT or SIGTERM, then print its totals.

    Prints the listening address first, then a counting line every ``interval`` seconds when
    the counts have changed. ``options`` are the other :class:`Sink` arguments.
    """
    sink = Sink(host, port, maildir=maildir, **options)
    asyncio.run(_serve(sink, interval, out or sys.stdout))


async def _serve(sink: Sink, interval: float, out: TextIO) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)

    try:
        async with sink:
            print(f"mailblast sink listening on {_host_port(sink.host, sink.port)}", file=out)
            out.flush()
            await _print_counts(sink, stop_requested, interval, out)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    print(f"totals: {format_stats(sink.stats)}", file=out)
    out.flush()


async def _print_counts(
    sink: Sink, stop_requested: asyncio.Event, interval: float, out: TextIO
) -> None:
    last_line = ""
    while not stop_requested.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_requested.wait(), timeout=interval)

        line = format_stats(sink.stats)
        if line != last_line and not stop_requested.is_set():
            print(line, file=out)
            out.flush()
            last_line = line


def _open_maildir(path: str) -> mailbox.Maildir:
    """Open a Maildir, creating tmp, new and cur also inside an existing empty folder."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return mailbox.Maildir(path, create=False)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
