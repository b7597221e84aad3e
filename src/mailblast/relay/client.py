"""A lean SMTP client: EHLO, STARTTLS, AUTH PLAIN/LOGIN and pipelined mail transactions.

Replies are returned, never raised: the caller classifies each one. Only transport problems
(connection lost, timeout, TLS failure) raise, as SMTPConnectionLost, TimeoutError, OSError or
ssl.SSLError. MAIL, RCPT and DATA go out in one write when the relay advertises PIPELINING
(RFC 2920), and one at a time otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import weakref
from collections.abc import Sequence
from typing import cast

from mailblast.relay.protocol import ReplyProtocol, SMTPConnectionLost, SMTPReply

S220_READY = 220
S235_AUTH_OK = 235
S334_CONTINUE = 334


def dot_stuff(data: bytes) -> bytes:
    """Return ``data`` with each line's leading dot doubled, ending with CRLF and the final dot."""
    if data.startswith(b"."):
        data = b"." + data
    if b"\n." in data:
        data = data.replace(b"\n.", b"\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def command_lines(lines: Sequence[bytes]) -> bytes:
    """Return command lines (without line ends) as one CRLF-terminated block."""
    return b"\r\n".join(lines) + b"\r\n"


class SMTPClient:
    """One SMTP connection; commands return the relay's reply for the caller to check."""

    def __init__(self, protocol: ReplyProtocol, command_timeout: float) -> None:
        self.protocol = protocol
        self.command_timeout = command_timeout
        self.extensions: dict[str, str] = {}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        command_timeout: float,
        tls_context: ssl.SSLContext | None = None,
    ) -> tuple[SMTPClient, SMTPReply]:
        """Open a connection (in TLS with ``tls_context``) and return it with the greeting."""
        loop = asyncio.get_running_loop()
        protocol = ReplyProtocol()
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: protocol,
                host,
                port,
                ssl=tls_context,
                server_hostname=host if tls_context else None,
            )
        client = cls(protocol, command_timeout)
        try:
            greeting = await protocol.read_reply(timeout)
        except BaseException:
            client.close()
            raise
        return client, greeting

    @property
    def is_open(self) -> bool:
        return self.protocol.is_open

    def supports(self, extension: str) -> bool:
        return extension.lower() in self.extensions

    async def command(self, line: str | bytes, timeout: float | None = None) -> SMTPReply:
        """Send one command line (without CRLF) and return its reply."""
        raw = line.encode("ascii") if isinstance(line, str) else line
        self.protocol.write(raw + b"\r\n")
        return await self.protocol.read_reply(timeout or self.command_timeout)

    async def ehlo(self, name: str) -> SMTPReply:
        """Send EHLO and keep the advertised extensions (keyword in lower case, then its value)."""
        reply = await self.command(f"EHLO {name}")
        self.extensions = {}
        if reply.code == 250:
            for line in reply.text.split("\n")[1:]:
                keyword, _, value = line.strip().partition(" ")
                self.extensions[keyword.lower()] = value
        return reply

    async def starttls(self, context: ssl.SSLContext, host: str, timeout: float) -> SMTPReply:
        """Send STARTTLS and, after its 220, upgrade the connection (RFC 3207).

        Raises SMTPConnectionLost when the relay sent more than the 220 reply before the
        handshake, since such bytes could be injected commands' replies.
        """
        reply = await self.command("STARTTLS")
        if reply.code != S220_READY:
            return reply
        if self.protocol.has_unread():
            self.close()
            raise SMTPConnectionLost("the relay sent data after its reply to STARTTLS")
        loop = asyncio.get_running_loop()
        transport = self.protocol.transport
        assert transport is not None
        try:
            upgraded = await loop.start_tls(
                transport,
                self.protocol,
                context,
                server_hostname=host,
                ssl_handshake_timeout=timeout,
            )
        except BaseException:
            transport.abort()
            raise
        self.protocol.transport = cast(asyncio.Transport, upgraded)
        self.extensions = {}
        return reply

    async def authenticate(self, username: str, password: str) -> SMTPReply:
        """Log in with AUTH PLAIN, or AUTH LOGIN if only that is offered; return the last reply."""
        mechanisms = self.extensions.get("auth", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = _b64(f"\0{username}\0{password}")
            return await self.command(b"AUTH PLAIN " + token)
        reply = await self.command("AUTH LOGIN")
        for value in (username, password):
            if reply.code != S334_CONTINUE:
                return reply
            reply = await self.command(_b64(value))
        return reply

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Write several command lines at once; read their replies in order (RFC 2920)."""
        self.protocol.write(command_lines(lines))

    async def read_reply(self) -> SMTPReply:
        return await self.protocol.read_reply(self.command_timeout)

    async def send_data(self, data: bytes, timeout: float, then: Sequence[bytes] = ()) -> SMTPReply:
        """Write the message after a 354 (dot-stuffed, then the final dot) and return the reply.

        ``then`` are command lines written in the same write, behind the final dot (RFC 2920).
        """
        self.protocol.write(dot_stuff(data) + command_lines(then) if then else dot_stuff(data))
        await self.protocol.drain()
        return await self.protocol.read_reply(timeout)

    async def quit(self, timeout: float) -> None:
        """Send QUIT, wait briefly for its reply, then close; failures only close."""
        try:
            if self.is_open:
                await self.command("QUIT", timeout)
        except (SMTPConnectionLost, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        transport = self.protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            _closing.add(self.protocol)


CLOSE_SECONDS = 2.0  # how long a run waits at its end for closed connections to finish closing

# Protocols whose transport was closed but has not reported connection_lost yet. A TLS
# transport finishes its shutdown on the event loop, so the loop must run until it is done:
# closing the loop earlier leaks the socket, and uvloop then fails to close the loop at all.
_closing: weakref.WeakSet[ReplyProtocol] = weakref.WeakSet()


async def wait_closed(timeout: float) -> None:
    """Wait up to ``timeout`` seconds until every closed connection has finished closing."""
    pending = [protocol.closed.wait() for protocol in list(_closing)]
    if not pending:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*pending)


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))
