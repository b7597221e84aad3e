"""The reading side of an SMTP client: an asyncio Protocol that parses replies in order.

Replies are matched to readers first in, first out, which is what RFC 2920 pipelining needs: a
client that wrote three commands reads three replies. A reader that times out or is cancelled
aborts the connection, because a later reply could otherwise be taken as the reply to a later
command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import cast

from mailblast.errors import MailblastError

# RFC 5321 section 4.5.3.1.5 allows 512 octets per reply line; some relays send longer texts.
MAX_REPLY_LINE = 8192
MAX_REPLY_LINES = 1000


class SMTPConnectionLost(MailblastError):
    """The connection closed, timed out or carried something that is not an SMTP reply."""


class SMTPReplyTimeout(SMTPConnectionLost, TimeoutError):
    """No complete reply arrived within the command's timeout."""


@dataclass(frozen=True, slots=True)
class SMTPReply:
    """One complete reply: its code and its text lines joined by newlines."""

    code: int
    text: str


class ReplyProtocol(asyncio.Protocol):
    """Reads SMTP replies from a transport and hands them to readers in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._replies: deque[SMTPReply] = deque()
        self._waiters: deque[asyncio.Future[SMTPReply]] = deque()
        self._lost: SMTPConnectionLost | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = asyncio.Event()  # set when the transport has reported connection_lost

    @property
    def is_open(self) -> bool:
        return self._lost is None and self.transport is not None and not self.transport.is_closing()

    def has_unread(self) -> bool:
        """Return whether bytes arrived that no command requested (checked before STARTTLS)."""
        return bool(self._buffer or self._lines or self._replies)

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)
        # Kept, because asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {type(exc).__name__}: {exc}" if exc else ""
        self._fail(SMTPConnectionLost(f"the relay closed the connection{reason}"))
        self._writable.set()
        self.closed.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        # Replies usually arrive as whole lines, so lines are sliced from the received bytes.
        # Only a partial line waits in the buffer for the rest.
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        start = 0
        while self._lost is None:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._take_line(data[start:end].rstrip(b"\r"))
            start = end + 1
        if start < len(data):
            buffer += data[start:]
        if len(buffer) > MAX_REPLY_LINE:
            self._fail(SMTPConnectionLost(f"reply line longer than {MAX_REPLY_LINE} bytes"))

    # Parsing

    def _take_line(self, line: bytes) -> None:
        separator = line[3:4]
        if len(line) < 3 or not line[:3].isdigit() or separator not in (b"", b" ", b"-"):
            shown = line[:80].decode("ascii", "replace")
            self._fail(SMTPConnectionLost(f"the relay sent a line that is not a reply: {shown!r}"))
            return
        text = line[4:].decode("utf-8", "replace")
        if separator == b"-":
            self._lines.append(text)
            if len(self._lines) > MAX_REPLY_LINES:
                self._fail(SMTPConnectionLost(f"reply longer than {MAX_REPLY_LINES} lines"))
            return
        if self._lines:
            self._lines.append(text)
            text = "\n".join(self._lines)
            self._lines = []
        reply = SMTPReply(int(line[:3]), text)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(reply)
                return
        self._replies.append(reply)

    def _fail(self, error: SMTPConnectionLost) -> None:
        if self._lost is None:
            self._lost = error
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    # Reading and writing

    async def read_reply(self, timeout: float) -> SMTPReply:
        """Return the next reply; raise SMTPConnectionLost (or its timeout) and abort if none."""
        if self._replies:
            return self._replies.popleft()
        if self._lost is not None:
            raise self._lost
        loop = self._loop or asyncio.get_running_loop()
        waiter: asyncio.Future[SMTPReply] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout, self._expire, waiter, timeout)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._fail(SMTPConnectionLost("the command was cancelled while waiting for a reply"))
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[SMTPReply], timeout: float) -> None:
        if not waiter.done():
            self._fail(SMTPReplyTimeout(f"no reply within {timeout:g} s"))

    def write(self, data: bytes) -> None:
        if self._lost is not None:
            raise self._lost
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if not self._writable.is_set():
            await self._writable.wait()
        if self._lost is not None:
            raise self._lost
