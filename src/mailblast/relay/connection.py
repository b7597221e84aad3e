"""One SMTP session to a relay: connect, EHLO, STARTTLS, AUTH once, then a transaction per message.

Built on aiosmtplib. DATA is split in two steps. A connection lost before the relay's 354
handed nothing over, so the message is retried. A connection lost after the final dot was
written may have delivered it, so the outcome is unknown.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable

import aiosmtplib

from mailblast.config import RelaySettings
from mailblast.relay.classify import (
    S354_START_INPUT,
    Command,
    Reply,
    Scope,
    classify,
    connection_failure,
)

logger = logging.getLogger("mailblast.relay")

_LEADING_DOT = re.compile(rb"(?m)^\.")
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    ssl.SSLError,
)


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
        self.client: aiosmtplib.SMTP | None = None
        self.messages_sent = 0
        self.last_used = time.monotonic()
        self.smtputf8 = False
        self.pipelining = False

    @property
    def is_open(self) -> bool:
        return self.client is not None and self.client.is_connected

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
        client = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            local_hostname=self.ehlo_name,
            timeout=relay.command_timeout,
            use_tls=relay.tls == "implicit",
            start_tls=False,
            tls_context=tls_context(relay) if relay.tls != "none" else None,
        )
        self.client = client
        try:
            await client.connect(timeout=relay.connect_timeout)
            # Without STARTTLS aiosmtplib defers EHLO; the extensions are needed now.
            await client.ehlo()
            if relay.tls == "starttls":
                await self._starttls(client)
        except aiosmtplib.SMTPResponseException as error:
            self.close()
            raise SessionError(classify(Command.CONNECT, error.code, error.message)) from error
        except _CONNECTION_ERRORS as error:
            self.close()
            raise SessionError(_connect_failure(relay, error)) from error
        except aiosmtplib.SMTPException as error:
            # Such as "STARTTLS extension not supported": the relay cannot be used as set up.
            self.close()
            text = f"relay {relay.name} cannot be used with tls = {relay.tls!r}: {error}"
            raise SessionError(Reply(Command.STARTTLS, None, None, text, Scope.RELAY)) from error
        await self._authenticate(client)
        self.smtputf8 = client.supports_extension("smtputf8")
        self.pipelining = client.supports_extension("pipelining")
        logger.debug("relay %s: session open (SMTPUTF8=%s)", relay.name, self.smtputf8)

    async def _starttls(self, client: aiosmtplib.SMTP) -> None:
        """Upgrade to TLS, then EHLO again (RFC 3207 section 4.2)."""
        # NOTE: when the TLS handshake fails (say, a certificate that does not verify),
        # Python 3.11's asyncio can leave the plain socket for the garbage collector, which
        # then warns with ResourceWarning. The session is closed; only the warning remains.
        await client.starttls()
        await client.ehlo()

    async def _authenticate(self, client: aiosmtplib.SMTP) -> None:
        relay = self.settings
        if not relay.username:
            return
        password = relay.password() or ""
        try:
            await client.login(relay.username, password)
        except aiosmtplib.SMTPResponseException as error:
            self.close()
            raise SessionError(classify(Command.AUTH, error.code, error.message)) from error
        except _CONNECTION_ERRORS as error:
            self.close()
            raise SessionError(connection_failure(Command.AUTH, _describe(error))) from error
        except aiosmtplib.SMTPException as error:
            self.close()
            text = f"AUTH failed on relay {relay.name}: {error}"
            raise SessionError(Reply(Command.AUTH, None, None, text, Scope.RELAY)) from error

    async def send(
        self,
        envelope_sender: str,
        recipient: str,
        data: bytes,
        smtputf8: bool,
        before_end_of_data: Callable[[], Awaitable[None]],
    ) -> Reply:
        """Run one mail transaction and return the classified reply that ended it.

        ``before_end_of_data`` is awaited after the relay's 354 and before the message and its
        final dot are written: the engine makes the in-flight mark durable there. If it raises,
        nothing more is written and the connection is closed.
        """
        client = self.client
        if client is None:
            return connection_failure(Command.MAIL, "session is not open")
        encoding = "utf-8" if smtputf8 else "ascii"
        options = ["SMTPUTF8"] if smtputf8 else []
        if client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        reply = await self._command(client.mail, envelope_sender, options, encoding, Command.MAIL)
        if reply is None:
            reply = await self._command(client.rcpt, recipient, [], encoding, Command.RCPT)
        if reply is None:
            reply = await self._data(client, data, before_end_of_data)
        if reply.scope is not Scope.SUCCESS:
            await self._reset(reply)
        else:
            self.messages_sent += 1
        self.last_used = time.monotonic()
        return reply

    async def check(self) -> bool:
        """Send NOOP on an idle session; False (and the session closed) if it no longer works."""
        client = self.client
        if client is None or not client.is_connected:
            self.close()
            return False
        try:
            response = await client.noop(timeout=self.settings.command_timeout)
        except (aiosmtplib.SMTPException, *_CONNECTION_ERRORS):
            self.close()
            return False
        self.last_used = time.monotonic()
        return 200 <= response.code < 300

    async def _command(
        self,
        method: Callable[..., Awaitable[aiosmtplib.SMTPResponse]],
        address: str,
        options: list[str],
        encoding: str,
        command: Command,
    ) -> Reply | None:
        """Send MAIL or RCPT; return None on 250, else the classified reply."""
        try:
            await method(address, options=options, encoding=encoding)
        except aiosmtplib.SMTPResponseException as error:
            return classify(command, error.code, error.message)
        except _CONNECTION_ERRORS as error:
            self.close()
            return connection_failure(command, _describe(error))
        return None

    async def _data(
        self,
        client: aiosmtplib.SMTP,
        data: bytes,
        before_end_of_data: Callable[[], Awaitable[None]],
    ) -> Reply:
        relay = self.settings
        try:
            start = await client.execute_command(b"DATA", timeout=relay.command_timeout)
        except aiosmtplib.SMTPResponseException as error:
            return classify(Command.DATA, error.code, error.message)
        except _CONNECTION_ERRORS as error:
            self.close()
            return connection_failure(Command.DATA, _describe(error))
        if start.code != S354_START_INPUT:
            return classify(Command.DATA, start.code, start.message)
        try:
            await before_end_of_data()
        except BaseException:
            self.close()
            raise
        protocol = client.protocol
        if protocol is None or not client.is_connected:
            self.close()
            return connection_failure(Command.DATA, "connection lost before the message was sent")
        protocol.write(_LEADING_DOT.sub(b"..", data) + b".\r\n")
        try:
            response = await protocol.read_response(timeout=relay.data_timeout)
        except (aiosmtplib.SMTPException, *_CONNECTION_ERRORS) as error:
            self.close()
            return connection_failure(Command.END_OF_DATA, _describe(error), after_end_of_data=True)
        return classify(Command.END_OF_DATA, response.code, response.message)

    async def _reset(self, reply: Reply) -> None:
        """Close after a connection-scope reply; otherwise RSET so the next transaction is clean."""
        if self.client is None or not self.client.is_connected:
            self.close()
            return
        if reply.scope in (Scope.CONNECTION, Scope.UNKNOWN, Scope.RELAY):
            await self.quit()
            return
        try:
            await self.client.rset(timeout=self.settings.command_timeout)
        except (aiosmtplib.SMTPException, *_CONNECTION_ERRORS):
            self.close()

    async def quit(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit(timeout=5)
        except (aiosmtplib.SMTPException, *_CONNECTION_ERRORS):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


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
