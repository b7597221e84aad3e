"""One SMTP session to a relay: connect, EHLO, STARTTLS, AUTH once, then a transaction per message.

Built on the lean client in relay/client.py, which pipelines MAIL, RCPT and DATA when the relay
offers PIPELINING. DATA is split in two steps. A connection lost before the relay's 354 handed
nothing over, so the message is retried. A connection lost after the final dot was written may
have delivered it, so the outcome is unknown.

With PIPELINING the next message's MAIL, RCPT and DATA can go out in the same write as the
final dot (RFC 2920 section 3.1), so a message costs one write and one read. Those commands are
only an envelope: until the next :meth:`RelayConnection.send` writes that message after its
354, nothing of it is handed over, and a session that does not send it is closed.

NOTE: the relay's replies to such an abandoned envelope are never read, so a rejection among
them (a greylisting 451 at RCPT, say) is not in the delivery log, although the relay may count
it. The message's next attempt is logged as usual.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

from mailblast.config import RelaySettings
from mailblast.relay.classify import (
    S250_OK,
    S354_START_INPUT,
    Command,
    Reply,
    Scope,
    classify,
    connection_failure,
)
from mailblast.relay.client import S220_READY, S235_AUTH_OK, SMTPClient
from mailblast.relay.protocol import SMTPConnectionLost, SMTPReply

logger = logging.getLogger("mailblast.relay")

_CONNECTION_ERRORS = (SMTPConnectionLost, ConnectionError, TimeoutError, OSError, ssl.SSLError)
QUIT_TIMEOUT = 5.0


class SessionError(Exception):
    """The session cannot continue; ``reply`` gives the reason and its scope."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(reply.describe())


def default_ehlo_name() -> str:
    """Return this host's fully-qualified name, since many relays reject a bare ``localhost``."""
    name = socket.getfqdn()
    if "." not in name or name.startswith("localhost"):
        return "mailblast.example.com"
    return name


def tls_context(settings: RelaySettings) -> ssl.SSLContext:
    """Build a certificate-verifying TLS context; ``ca_file`` adds a private CA."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class RelayConnection:
    """A session to one relay: :meth:`open` it, :meth:`send` messages, then :meth:`quit`."""

    def __init__(self, settings: RelaySettings, ehlo_name: str | None = None) -> None:
        self.settings = settings
        self.ehlo_name = settings.ehlo_name or ehlo_name or default_ehlo_name()
        self.client: SMTPClient | None = None
        self.messages_sent = 0
        self.last_used = time.monotonic()
        self.smtputf8 = False
        self.pipelining = False
        self.eight_bit_mime = False
        self._step = Command.MAIL  # the command whose reply is awaited, for connection failures
        # The envelope written behind the last final dot, and the key of its message.
        self._ahead: tuple[object, list[bytes]] | None = None

    @property
    def is_open(self) -> bool:
        return self.client is not None and self.client.is_open

    def has_envelope_ahead(self, key: object) -> bool:
        """Return whether the envelope of the message ``key`` was written ahead."""
        return self._ahead is not None and self._ahead[0] == key

    async def open(self) -> None:
        """Connect and prepare the session; raise SessionError with a classified reason."""
        relay = self.settings
        # The campaign check refuses this too; a relay rebuilt from an old store is held here.
        if relay.username and relay.tls == "none" and not relay.allow_plaintext_auth:
            raise SessionError(
                Reply(
                    Command.AUTH,
                    None,
                    None,
                    f"relay {relay.name} has tls = 'none', so AUTH would send the password in"
                    " clear; set tls = 'starttls' or 'implicit' (allow_plaintext_auth only for"
                    " loopback tests)",
                    Scope.RELAY,
                )
            )
        try:
            refusal = await self._connect()
        except _CONNECTION_ERRORS as error:
            self.close()
            raise SessionError(_connect_failure(relay, error)) from error
        if refusal is None:
            refusal = await self._authenticate()
        if refusal is not None:
            self.close()
            raise SessionError(refusal)
        self._read_extensions()
        logger.debug("relay %s: session open (SMTPUTF8=%s)", relay.name, self.smtputf8)

    async def _connect(self) -> Reply | None:
        """Connect, read the greeting, EHLO and STARTTLS; return the reply that refused them."""
        relay = self.settings
        context = tls_context(relay) if relay.tls != "none" else None
        client, greeting = await SMTPClient.connect(
            relay.host,
            relay.port,
            timeout=relay.connect_timeout,
            command_timeout=relay.command_timeout,
            tls_context=context if relay.tls == "implicit" else None,
        )
        self.client = client
        if greeting.code != S220_READY:
            return _refused(Command.CONNECT, greeting)
        reply = await client.ehlo(self.ehlo_name)
        if reply.code != S250_OK:
            return _refused(Command.EHLO, reply)
        if relay.tls == "starttls":
            assert context is not None
            return await self._starttls(client, context)
        return None

    async def _starttls(self, client: SMTPClient, context: ssl.SSLContext) -> Reply | None:
        """Upgrade to TLS, then EHLO again (RFC 3207 section 4.2)."""
        relay = self.settings
        if not client.supports("starttls"):
            text = (
                f"relay {relay.name} cannot be used with tls = 'starttls': it does not offer"
                " STARTTLS; set tls = 'implicit' or 'none' if that is how it works"
            )
            return Reply(Command.STARTTLS, None, None, text, Scope.RELAY)
        # NOTE: when the TLS handshake fails (say, a certificate that does not verify),
        # Python 3.11's asyncio can leave the plain socket for the garbage collector, which
        # then warns with ResourceWarning. The session is closed; only the warning remains.
        reply = await client.starttls(context, relay.host, relay.connect_timeout)
        if reply.code != S220_READY:
            return _refused(Command.STARTTLS, reply)
        reply = await client.ehlo(self.ehlo_name)
        return None if reply.code == S250_OK else _refused(Command.EHLO, reply)

    async def _authenticate(self) -> Reply | None:
        """Log in when the relay has a user name; return the reply that refused it."""
        relay = self.settings
        client = self.client
        if not relay.username or client is None:
            return None
        if not client.supports("auth"):
            text = f"relay {relay.name} does not offer AUTH, but username is set for it"
            return Reply(Command.AUTH, None, None, text, Scope.RELAY)
        password = relay.password() or ""
        try:
            reply = await client.authenticate(relay.username, password)
        except _CONNECTION_ERRORS as error:
            self.close()
            raise SessionError(connection_failure(Command.AUTH, _describe(error))) from error
        return None if reply.code == S235_AUTH_OK else _refused(Command.AUTH, reply)

    def _read_extensions(self) -> None:
        assert self.client is not None
        self.smtputf8 = self.client.supports("smtputf8")
        self.pipelining = self.client.supports("pipelining")
        self.eight_bit_mime = self.client.supports("8bitmime")

    async def send(
        self,
        envelope_sender: str,
        recipient: str,
        data: bytes,
        smtputf8: bool,
        before_end_of_data: Callable[[], Awaitable[None]],
        ahead: tuple[object, list[bytes]] | None = None,
    ) -> Reply:
        """Run one mail transaction and return the classified reply that ended it.

        ``before_end_of_data`` is awaited after the relay's 354 and before the message and its
        final dot are written: the engine makes the in-flight mark durable there. If it raises,
        nothing more is written and the connection is closed.

        ``ahead`` is the key and the :meth:`envelope_lines` of the message that this session
        sends next. With PIPELINING they are written behind the final dot, and the next call
        with those lines reads their replies instead of writing them.
        """
        client = self.client
        if client is None or not client.is_open:
            return connection_failure(Command.MAIL, "session is not open")
        lines = self.envelope_lines(envelope_sender, recipient, smtputf8)
        if isinstance(lines, Reply):
            return lines
        written, self._ahead = self._ahead, None
        if written is not None and written[1] != lines:
            # The relay has another message's envelope, so this message must not follow it.
            self.close()
            return connection_failure(Command.MAIL, "another message's envelope was written ahead")
        try:
            reply = await self._envelope(client, lines, written=written is not None)
        except _CONNECTION_ERRORS as error:
            self.close()
            reply = connection_failure(self._step, _describe(error))
        if reply is None:
            reply = await self._data(client, data, before_end_of_data, ahead)
        if reply.scope is not Scope.SUCCESS:
            await self._reset(reply)
        else:
            self.messages_sent += 1
        self.last_used = time.monotonic()
        return reply

    def envelope_lines(self, sender: str, recipient: str, smtputf8: bool) -> list[bytes] | Reply:
        """Return the MAIL, RCPT and DATA lines, or a message-scope reply if they cannot be sent."""
        if _ENVELOPE_UNSAFE.search(sender) or _ENVELOPE_UNSAFE.search(recipient):
            text = f"address {recipient!r} or {sender!r} contains a line break or an angle bracket"
            return Reply(Command.MAIL, None, None, text, Scope.MESSAGE)
        mail = f"MAIL FROM:<{sender}>"
        if smtputf8:
            mail += " SMTPUTF8"
        if self.eight_bit_mime:
            mail += " BODY=8BITMIME"
        try:
            encoding = "utf-8" if smtputf8 else "ascii"
            return [mail.encode(encoding), f"RCPT TO:<{recipient}>".encode(encoding), b"DATA"]
        except UnicodeEncodeError:
            text = f"address {recipient!r} or {sender!r} is not ASCII and SMTPUTF8 is not in use"
            return Reply(Command.MAIL, None, None, text, Scope.MESSAGE)

    async def _envelope(
        self, client: SMTPClient, lines: list[bytes], *, written: bool
    ) -> Reply | None:
        """Send MAIL, RCPT and DATA; return None after the relay's 354, else the first refusal.

        With PIPELINING the three lines go out together, or went out behind the previous
        message (``written``), and every reply is read, so that the session stays in step.
        Without it, each command waits for the previous reply.
        """
        refusal: Reply | None = None
        if self.pipelining and not written:
            client.write_lines(lines)
        for command, line in zip(_ENVELOPE_COMMANDS, lines, strict=True):
            self._step = command
            try:
                reply = await (client.read_reply() if self.pipelining else client.command(line))
            except _CONNECTION_ERRORS:
                if refusal is None:
                    raise
                # A relay that rejected MAIL with 421 closes without replying to the rest.
                self.close()
                return refusal
            if refusal is None and not _accepted(command, reply.code):
                refusal = _refused(command, reply)
                if not self.pipelining:
                    return refusal
            elif refusal is not None and reply.code == S354_START_INPUT:
                # DATA started although MAIL or RCPT failed: end it at once with an empty body.
                await client.command(".")
        return refusal

    async def _data(
        self,
        client: SMTPClient,
        data: bytes,
        before_end_of_data: Callable[[], Awaitable[None]],
        ahead: tuple[object, list[bytes]] | None,
    ) -> Reply:
        try:
            await before_end_of_data()
        except BaseException:
            self.close()
            raise
        if not client.is_open:
            self.close()
            return connection_failure(Command.DATA, "connection lost before the message was sent")
        if not self.pipelining:
            ahead = None
        self._ahead = ahead
        try:
            response = await client.send_data(
                data, self.settings.data_timeout, ahead[1] if ahead else ()
            )
        except _CONNECTION_ERRORS as error:
            self.close()
            return connection_failure(Command.END_OF_DATA, _describe(error), after_end_of_data=True)
        return classify(Command.END_OF_DATA, response.code, response.text)

    async def check(self) -> bool:
        """Send NOOP on an idle session; False (and the session closed) if it no longer works."""
        client = self.client
        if self._ahead is not None:
            # A NOOP now would get its reply after the replies to that envelope.
            return client is not None and client.is_open
        if client is None or not client.is_open:
            self.close()
            return False
        try:
            reply = await client.command("NOOP")
        except _CONNECTION_ERRORS:
            self.close()
            return False
        self.last_used = time.monotonic()
        return 200 <= reply.code < 300

    async def _reset(self, reply: Reply) -> None:
        """Close after a connection-scope reply; otherwise RSET so the next transaction is clean."""
        client = self.client
        if client is None or not client.is_open:
            self.close()
            return
        if reply.scope in (Scope.CONNECTION, Scope.UNKNOWN, Scope.RELAY):
            await self.quit()
            return
        if self._ahead is not None:
            # The reply to the final dot ended the transaction, and an RSET now would undo
            # the next message's envelope.
            return
        try:
            answer = await client.command("RSET")
        except _CONNECTION_ERRORS:
            self.close()
            return
        if answer.code != S250_OK:
            self.close()

    async def quit(self) -> None:
        if self._ahead is not None:
            # After the envelope written ahead the relay may be reading a message, so QUIT
            # would be message text. Closing without the final dot delivers nothing.
            self.close()
            return
        client = self.client
        self.client = None
        if client is not None:
            await client.quit(QUIT_TIMEOUT)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self._ahead = None


_ENVELOPE_COMMANDS = (Command.MAIL, Command.RCPT, Command.DATA)
# A line break would end the command early and an angle bracket would end the path.
_ENVELOPE_UNSAFE = re.compile("[\r\n<>]")


def _accepted(command: Command, code: int) -> bool:
    """Return whether a reply lets the transaction go on: 354 to DATA, 2xx to MAIL and RCPT."""
    if command is Command.DATA:
        return code == S354_START_INPUT
    return 200 <= code < 300


def _refused(command: Command, reply: SMTPReply) -> Reply:
    """Classify a reply that ended a step; an unexpected positive code is a lost session."""
    classified = classify(command, reply.code, reply.text)
    if classified.scope is not Scope.SUCCESS:
        return classified
    text = f"unexpected reply {reply.code} {classified.text}"
    return Reply(command, reply.code, classified.status, text, Scope.CONNECTION)


def _connect_failure(relay: RelaySettings, error: BaseException) -> Reply:
    """Classify a failed connect; a certificate that does not verify is the relay's setup."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            text = (
                f"TLS certificate of relay {relay.name} ({relay.host}) failed verification:"
                f" {cause.verify_message}; set ca_file if it uses a private CA"
            )
            return Reply(Command.STARTTLS, None, None, text, Scope.RELAY)
        cause = cause.__cause__ or cause.__context__
    command = Command.STARTTLS if isinstance(error, ssl.SSLError) else Command.CONNECT
    return connection_failure(command, _describe(error))


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if str(error) else text
