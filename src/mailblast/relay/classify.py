"""Classify every SMTP reply by scope, which decides what the engine does with the message.

| scope      | meaning                                   | message state          |
|------------|-------------------------------------------|------------------------|
| success    | 250 to the end of DATA                    | sent                   |
| connection | 421, timeout, reset, TLS failure          | retried elsewhere      |
| relay      | authentication, relaying denied           | retried elsewhere; relay taken out |
| sender     | 5.1.7/5.1.8, 5.7.x policy at MAIL or RCPT | requeued; campaign paused |
| message    | 5xx to DATA or to the end of DATA         | failed                 |
| recipient  | 5xx at RCPT (5.1.1, 5.1.2, 5.2.1 …)       | bounced                |
| temporary  | 4xx, 552 at RCPT, 5.2.2 mailbox full      | deferred with backoff  |
| unknown    | connection lost after the end of DATA     | unknown                |

552 at RCPT is temporary because RFC 5321 section 4.5.3.1.10 asks clients to treat "too many
recipients" that way; 5.2.2 (mailbox full) is a soft bounce under RFC 3463.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """The party a reply is about."""

    SUCCESS = "success"
    CONNECTION = "connection"
    RELAY = "relay"
    SENDER = "sender"
    MESSAGE = "message"
    RECIPIENT = "recipient"
    TEMPORARY = "temporary"
    UNKNOWN = "unknown"


class Command(StrEnum):
    """The SMTP step that a reply belongs to."""

    CONNECT = "connect"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"


# Reply codes named by RFC 5321 section 4.2.3.
S250_OK = 250
S354_START_INPUT = 354
S421_SERVICE_CLOSING = 421
S530_AUTH_REQUIRED = 530
S535_AUTH_FAILED = 535
S552_EXCEEDED_STORAGE = 552

_STATE_BY_SCOPE = {
    Scope.SUCCESS: "sent",
    Scope.CONNECTION: "deferred",
    Scope.RELAY: "deferred",
    Scope.SENDER: "deferred",
    Scope.MESSAGE: "failed",
    Scope.RECIPIENT: "bounced",
    Scope.TEMPORARY: "deferred",
    Scope.UNKNOWN: "unknown",
}
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_AUTH_CODES = frozenset({530, 534, 535, 538})
_SESSION_COMMANDS = frozenset({Command.CONNECT, Command.EHLO, Command.STARTTLS, Command.AUTH})
_SENDER_STATUSES = frozenset({"5.1.7", "5.1.8"})
_SOFT_STATUSES = frozenset({"5.2.2"})
# X.7.13 "user account disabled" (RFC 4954) is about the client's own account at AUTH, but at
# RCPT receivers use it for a disabled recipient account, which is not about the sender.
_RECIPIENT_POLICY_STATUSES = frozenset({"5.7.13"})
_RELAY_DENIED = re.compile(r"relay(ing)?\s+(access\s+)?(denied|not permitted|prohibited)", re.I)


@dataclass(frozen=True, slots=True)
class Reply:
    """A classified SMTP reply (or a connection failure, with code None)."""

    command: Command
    code: int | None
    status: str | None  # enhanced status code such as "5.1.1"
    text: str
    scope: Scope

    @property
    def state(self) -> str:
        """The message state this reply leads to."""
        return _STATE_BY_SCOPE[self.scope]

    def describe(self) -> str:
        """Return the reply as a relay would write it: code, then text (with its status)."""
        if self.code is None:
            return self.text
        return f"{self.code} {self.text}"


def enhanced_status(text: str) -> str | None:
    """Return the RFC 3463 enhanced status code at the start of a reply text, if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify(command: Command, code: int, text: str) -> Reply:
    """Classify one SMTP reply to ``command``."""
    text = " ".join(text.split())
    status = enhanced_status(text)
    return Reply(command, code, status, text, _scope(command, code, status, text))


def connection_failure(command: Command, text: str, *, after_end_of_data: bool = False) -> Reply:
    """Describe a lost, refused or timed-out connection; after the end of DATA it is unknown."""
    scope = Scope.UNKNOWN if after_end_of_data else Scope.CONNECTION
    return Reply(command, None, None, text, scope)


def _scope(command: Command, code: int, status: str | None, text: str) -> Scope:
    if 200 <= code < 400:
        return Scope.SUCCESS
    if code == S421_SERVICE_CLOSING:
        return Scope.CONNECTION
    if code in _AUTH_CODES:
        return Scope.RELAY
    if command in _SESSION_COMMANDS:
        return Scope.CONNECTION if code < 500 else Scope.RELAY
    if code < 500 or (status and status.startswith("4.")):
        return Scope.TEMPORARY
    if command is Command.MAIL:
        return Scope.SENDER
    if command is Command.RCPT:
        return _rcpt_scope(code, status, text)
    return Scope.MESSAGE


def _rcpt_scope(code: int, status: str | None, text: str) -> Scope:
    if _RELAY_DENIED.search(text):
        return Scope.RELAY
    if status in _SENDER_STATUSES:
        return Scope.SENDER
    if code == S552_EXCEEDED_STORAGE or status in _SOFT_STATUSES:
        return Scope.TEMPORARY
    if status and status.startswith("5.7.") and status not in _RECIPIENT_POLICY_STATUSES:
        return Scope.SENDER
    return Scope.RECIPIENT
