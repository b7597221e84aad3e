"""A loopback SMTP server that replies from a table, for client tests that need exact replies.

It records each line as it arrives, together with whether a reply to MAIL was still pending,
so a test can tell pipelined commands from lock-step ones, and the lines that arrived while the
reply to a final dot was still pending.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

VERBS = frozenset({"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "AUTH"})
DEFAULT_REPLIES = {
    "greeting": "220 relay.example.net ESMTP",
    "EHLO": "250-relay.example.net\n250-PIPELINING\n250 8BITMIME",
    "MAIL": "250 2.1.0 OK",
    "RCPT": "250 2.1.5 OK",
    "DATA": "354 go ahead",
    ".": "250 2.0.0 queued",
    "RSET": "250 OK",
    "NOOP": "250 OK",
    "QUIT": "221 bye",
}


@dataclass
class Script:
    """Replies by verb (a list is used up one per command) and the MAIL and final dot delays."""

    replies: dict[str, str | list[str]] = field(default_factory=dict)
    mail_delay: float = 0.0
    dot_delay: float = 0.0
    behind_dot: list[str] = field(default_factory=list)  # lines sent before the dot's reply
    arrivals: list[tuple[str, bool]] = field(default_factory=list)  # (line, MAIL reply pending)
    bodies: list[list[str]] = field(default_factory=list)

    def reply(self, verb: str) -> str:
        chosen = self.replies.get(verb, DEFAULT_REPLIES.get(verb, "500 5.5.1 unknown command"))
        if isinstance(chosen, list):
            return chosen.pop(0)
        return chosen


class ScriptedRelay(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.buffer = b""
        self.mail_pending = False
        self.dot_pending = False
        self.transport: asyncio.Transport | None = None
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send(self.script.reply("greeting"))
        self.worker = asyncio.get_running_loop().create_task(self.work())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\r\n")
        for line in lines:
            text = line.decode("utf-8")
            self.script.arrivals.append((text, self.mail_pending))
            if self.dot_pending:
                self.script.behind_dot.append(text)
            if text.upper().startswith("MAIL"):
                self.mail_pending = True  # until the worker has sent its reply
            if text == ".":
                self.dot_pending = True  # a body line "." arrives dot-stuffed as ".."
            self.lines.put_nowait(text)

    def send(self, reply: str) -> None:
        assert self.transport is not None
        self.transport.write(reply.replace("\n", "\r\n").encode("utf-8") + b"\r\n")

    async def work(self) -> None:
        while True:
            line = await self.lines.get()
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            verb = verb if verb in VERBS else ""
            if verb == "MAIL":
                await asyncio.sleep(self.script.mail_delay)
            reply = self.script.reply(verb)
            self.send(reply)
            if verb == "MAIL":
                self.mail_pending = False
            if verb == "DATA" and reply.startswith("354"):
                await self.read_body()
            if verb == "QUIT":
                assert self.transport is not None
                self.transport.close()

    async def read_body(self) -> None:
        body: list[str] = []
        while (line := await self.lines.get()) != ".":
            body.append(line)
        self.script.bodies.append(body)
        await asyncio.sleep(self.script.dot_delay)
        self.send(self.script.reply("."))
        self.dot_pending = False


async def start_scripted(script: Script) -> asyncio.Server:
    """Listen on a free port of 127.0.0.1; the caller closes the server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ScriptedRelay(script), "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def pending_lines(script: Script) -> deque[str]:
    """Lines that arrived while a reply to MAIL was still pending (sent without waiting)."""
    return deque(line for line, pending in script.arrivals if pending)
