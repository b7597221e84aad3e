"""Read one returned message: which recipients failed, why, and what that means for each.

A message is one of: a delivery status notification (RFC 3464 ``message/delivery-status``, or a
non-standard bounce that flufl.bounce recognises), a complaint (an ARF feedback report, RFC
5965), an unsubscribe request by mail, an auto-reply (RFC 3834) or none of these.

Each failed recipient gets a class:

- ``hard``: the address or its domain does not exist (5.1.1, 5.1.2, 5.1.6, 5.1.10, 5.2.1,
  5.4.4, or text such as "user unknown"). Suppress it.
- ``soft``: a mailbox full (5.2.2, also with 552), a delay, an expiry or any other temporary
  or unexplained failure. Suppress it only after repeated soft bounces.
- ``block``: the receiver rejected the sender, the content or its reputation (5.7.x,
  5.1.7/5.1.8, spam and blocklist texts). The recipient is fine, so it is never suppressed.

The SMTP reply code and enhanced status go through :mod:`mailblast.relay.classify` first, as
for a reply at RCPT time. Diagnostic text decides where the status is generic (5.0.0, x.5.0,
none) and overrides a status when the text clearly names a block or a full mailbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_string
from email.message import Message
from email.utils import getaddresses, parseaddr
from enum import StrEnum
from typing import Any

from flufl.bounce import all_failures

from mailblast.bounce_ses import ses_notification, ses_recipients
from mailblast.bounce_text import (
    BLOCK_TEXT,
    FULL_TEXT,
    HARD_TEXT,
    NOT_ACCEPTING_TEXT,
    diagnostic_near,
    has_signal,
    inline_copy,
    listed_recipients,
    named_failures,
    notification_text,
    paragraph_near,
    rejected_command,
)
from mailblast.relay.classify import Command, Scope, classify

# Enhanced status codes (RFC 3463) that mean the address or domain does not exist.
_HARD_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})
# Statuses that mean only "permanent failure" or "mail system", so the text decides.
_GENERIC_STATUS = re.compile(r"^[45]\.(0\.\d+|5\.0|3\.0|1\.0|2\.0)$")
_ANY_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*unsubscribe\s+(\S+)\s*$", re.I)
_AUTO_REPLY_SUBJECT = re.compile(
    r"out of (the )?office|auto(matic|matisch)?[ -]?(reply|response|antwort)|vacation|"
    r"abwesenheit|absence|away from",
    re.I,
)
_DAEMON_FROM = re.compile(r"mailer-daemon|post_?master|mail delivery|mailerdaemon", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|delivery (status|failure|failed|notification|"
    r"has failed|problem)|failure notice|mail delivery|could not (be )?deliver|"
    r"non[- ]?delivery|rejected|nicht zustellbar|message not delivered|returned to sender|"
    r"could not be delivered|was not delivered|delivery to the following|"
    # Notices of a mail loop: the message was dropped instead of delivered.
    r"mail loop|loop (alert|detected)",
    re.I,
)
_QUOTED_HEADER = re.compile(
    r"^\W*(message-id|from|sender|reply-to|return-path|in-reply-to|references|mail from)\s*:",
    re.I,
)
_ADDRESS = re.compile(r"[\w.+=-]+@[\w-]+(?:\.[\w-]+)+")
# The au (KDDI) mail servers reject an unknown address at RCPT with "550 <address>: User
# unknown". When the recipient's domain filter rejects the sender, they reply "550 : User
# unknown" at the end of DATA, without the address. Only that second form is a DATA rejection.
_KDDI_DOMAINS = re.compile(r"(^|\.)(ezweb\.ne\.jp|au\.com)$")
_KDDI_FILTER_REPLY = re.compile(r"(?<!\d)550 : User unknown", re.I)


class BounceClass(StrEnum):
    """The outcome of a returned message for one recipient."""

    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"
    COMPLAINT = "complaint"


class ReportKind(StrEnum):
    """The kind of a whole returned message."""

    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    AUTO_REPLY = "auto-reply"
    UNRECOGNISED = "unrecognised"


@dataclass(slots=True)
class Failure:
    """One recipient named by a report, with the facts that classified it."""

    recipient: str  # Final-Recipient, or the address a non-standard bounce names
    bounce_class: BounceClass
    original_recipient: str | None = None  # Original-Recipient, or the text's other name
    action: str | None = None  # failed | delayed for a DSN
    status: str | None = None
    code: int | None = None
    diagnostic: str = ""

    @property
    def addresses(self) -> list[str]:
        """The addresses this failure may be filed under, the final recipient first."""
        found = [self.recipient]
        if self.original_recipient and self.original_recipient != self.recipient:
            found.append(self.original_recipient)
        return found


@dataclass(slots=True)
class Report:
    """A parsed returned message."""

    kind: ReportKind
    failures: list[Failure] = field(default_factory=list)
    original: Message | None = None  # headers of the returned message, when included
    unsubscribe_token: str | None = None

    def original_message_ids(self, message: Message) -> list[str]:
        """Return the Message-IDs that may name the message this one is about."""
        ids: list[str] = []
        if self.original is not None and self.original.get("Message-ID"):
            ids.append(str(self.original["Message-ID"]).strip())
        for name in ("In-Reply-To", "References"):
            ids.extend(re.findall(r"<[^<>\s]+>", str(message.get(name, ""))))
        return ids


def read_report(message: Message) -> Report:
    """Parse one returned message into a Report of its kind and failed recipients."""
    original = _original_headers(message)
    token = _unsubscribe_token(message)
    if token is not None:
        return Report(ReportKind.UNSUBSCRIBE, original=original, unsubscribe_token=token)
    if _is_feedback_report(message):
        failures = [Failure(a, BounceClass.COMPLAINT) for a in _complaint_recipients(message)]
        return Report(ReportKind.COMPLAINT, failures, original)

    ses = ses_notification(message)
    if ses is not None:
        return _ses_report(ses, original)
    failures = _dsn_failures(message) or _heuristic_failures(message)
    if not failures and _looks_like_bounce(message, original):
        quoted = _quoted_bounce(message)
        if quoted is not None:
            failures = _dsn_failures(quoted)
            original = original or _original_headers(quoted)
        failures = failures or _text_failures(message, original)
    if failures:
        return Report(ReportKind.BOUNCE, failures, original)
    if _is_auto_reply(message):
        return Report(ReportKind.AUTO_REPLY, original=original)
    return Report(ReportKind.UNRECOGNISED, original=original)


def classify_failure(
    status: str | None,
    code: int | None,
    text: str,
    action: str = "",
    command: Command | None = None,
    recipient: str = "",
) -> BounceClass:
    """Classify one failed recipient from its status, reply code, diagnostic text and command.

    ``command`` is the SMTP step that the remote server rejected, when the bounce names it.
    """
    text = " ".join(text.split())
    if action.lower().startswith("delay"):
        return BounceClass.SOFT
    if command is None and _is_kddi_filter_reply(recipient, text):
        command = Command.DATA
    # A server that rejects at DATA with "user unknown" but no address status (5.1.x) is
    # usually a content or domain filter: it accepted the recipient at RCPT.
    if command is not None and command is not Command.RCPT and status not in _HARD_STATUSES:
        return _after_rcpt_class(command, text)
    if status and status.startswith("4."):
        return _transient_class(status, text)
    if NOT_ACCEPTING_TEXT.search(text):
        return BounceClass.HARD
    if BLOCK_TEXT.search(text) and not (status in _HARD_STATUSES and HARD_TEXT.search(text)):
        return BounceClass.BLOCK
    if FULL_TEXT.search(text):
        return BounceClass.SOFT
    if status and not _GENERIC_STATUS.match(status):
        return _status_class(status, code, text)
    if HARD_TEXT.search(text):
        return BounceClass.HARD
    return BounceClass.SOFT


def _is_kddi_filter_reply(recipient: str, text: str) -> bool:
    domain = recipient.rpartition("@")[2].lower()
    return bool(_KDDI_DOMAINS.search(domain) and _KDDI_FILTER_REPLY.search(text))


def _after_rcpt_class(command: Command, text: str) -> BounceClass:
    """Classify a rejection of MAIL, DATA or the session: the recipient was never refused."""
    scope = classify(command, 550, text).scope
    if scope in (Scope.SENDER, Scope.RELAY) or BLOCK_TEXT.search(text):
        return BounceClass.BLOCK
    return BounceClass.SOFT


def _transient_class(status: str, text: str) -> BounceClass:
    """Classify a 4.x.x status as soft, except an unknown address reported as 4.1.1."""
    if status[1:] in (".1.1", ".1.2", ".1.10") and HARD_TEXT.search(text):
        return BounceClass.HARD
    return BounceClass.SOFT


def _status_class(status: str, code: int | None, text: str) -> BounceClass:
    """Classify a specific 5.x.x status as the reply to RCPT that it would be."""
    if status in _HARD_STATUSES:
        return BounceClass.HARD
    scope = classify(Command.RCPT, code or 550, f"{status} {text}").scope
    if scope is Scope.RECIPIENT:
        # Other recipient statuses (5.2.1 mailbox disabled, 5.1.0) are hard only with a text
        # stating that the address does not exist.
        return BounceClass.HARD if HARD_TEXT.search(text) else BounceClass.SOFT
    if scope in (Scope.SENDER, Scope.RELAY):
        return BounceClass.BLOCK
    return BounceClass.SOFT


def _dsn_failures(message: Message) -> list[Failure]:
    failures: list[Failure] = []
    text = notification_text(message)
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        blocks = [block for block in part.get_payload() if isinstance(block, Message)]
        failed = [block for block in _split_blocks(blocks) if _is_failed(block)]
        for block in failed:
            failure = _dsn_failure(block, text, single=len(failed) == 1)
            if failure is not None:
                failures.append(failure)
    return _with_listed_alias(failures, text)


def _with_listed_alias(failures: list[Failure], text: str) -> list[Failure]:
    """File a lone failure also under the one, different address that the text lists as failed.

    The text and the structured fields (Final-Recipient, X-Failed-Recipients) can name one
    recipient differently, for example before and after alias or directory rewriting.
    """
    if len(failures) != 1 or failures[0].original_recipient is not None:
        return failures
    listed = listed_recipients(text)
    if len(listed) == 1 and listed[0] != failures[0].recipient:
        failures[0].original_recipient = listed[0]
    return failures


def _split_blocks(blocks: list[Message]) -> list[Message]:
    """Split recipient blocks that some MTAs write without the blank line between them."""
    split: list[Message] = []
    for block in blocks:
        if len(block.get_all("Final-Recipient", [])) < 2:
            split.append(block)
            continue
        current: Message | None = None
        for name, value in block.items():
            if name.lower() == "final-recipient" or current is None:
                current = Message()
                split.append(current)
            current[name] = value
    return split


def _is_failed(block: Message) -> bool:
    return str(block.get("Action", "")).strip().lower().startswith(("fail", "delay", "error"))


def _dsn_failure(block: Message, text: str, *, single: bool) -> Failure | None:
    action = str(block.get("Action", "")).strip().lower()
    recipient = _typed_address(block.get("Final-Recipient")) or _typed_address(
        block.get("X-Actual-Recipient")
    )
    original = _typed_address(block.get("Original-Recipient"))
    if not recipient:
        return None

    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    diagnostic = diagnostic.partition(";")[2].strip() or diagnostic
    status_comment = re.findall(r"\((.*?)\)", str(block.get("Status", "")))
    diagnostic = " ".join([diagnostic, *status_comment]).strip()
    if not has_signal(diagnostic):
        diagnostic = f"{diagnostic} {diagnostic_near(text, recipient)}"
    status = _status_in(str(block.get("Status", ""))) or _status_in(diagnostic)
    code = _code_in(diagnostic)
    if status and status.endswith(".0.0") and (better := _status_in(diagnostic)):
        status = better
    if str(block.get("Diagnostic-Code", "")).strip().lower().startswith("x-unix"):
        # A local delivery program failed (procmail, a filter): no verdict on the address.
        return Failure(recipient, BounceClass.SOFT, original, "failed", status, code, diagnostic)
    command = _command_for(text, recipient, single=single)
    bounce_class = classify_failure(status, code, diagnostic, action, command, recipient)
    return Failure(recipient, bounce_class, original, action.split()[0], status, code, diagnostic)


def _command_for(text: str, address: str, *, single: bool) -> Command | None:
    """Return the rejected SMTP command for one recipient; the whole text counts for one."""
    command = rejected_command(paragraph_near(text, address))
    if command is None and single:
        command = rejected_command(text)
    return command


def _heuristic_failures(message: Message) -> list[Failure]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:
        return []
    text = notification_text(message)
    failures = []
    found = [(a, "delayed") for a in sorted(temporary)] + [(a, "failed") for a in sorted(permanent)]
    listed = listed_recipients(text)
    # flufl.bounce's text patterns can also pick up the sender or a quoted Message-ID.
    senders = _quoted_sender_addresses(text)
    for raw, action in found:
        address = raw.decode("ascii", "replace").strip("<>").lower()
        if not _is_address(address) or address in senders:
            continue
        # A header such as X-Failed-Recipients may name the address differently from the
        # text, so the reason is looked up under the text's name for it.
        mention = address
        if len(found) == 1 and len(listed) == 1 and address not in text.lower():
            mention = listed[0]
        diagnostic = diagnostic_near(text, mention)
        if not has_signal(diagnostic):
            diagnostic = " ".join(text.split())[:2000]
        status, code = _status_in(diagnostic), _code_in(diagnostic)
        command = _command_for(text, mention, single=len(found) == 1)
        bounce_class = classify_failure(status, code, diagnostic, action, command, address)
        failures.append(Failure(address, bounce_class, None, action, status, code, diagnostic))
    return _with_listed_alias(failures, text)


def _quoted_bounce(message: Message) -> Message | None:
    """Return the DSN that a plain-text notice quotes inline, as some providers forward them."""
    copy = inline_copy(message)
    if copy is None:
        return None
    quoted = message_from_string(copy)
    return quoted if quoted.get_content_type() == "multipart/report" else None


def _ses_report(notification: dict[str, Any], original: Message | None) -> Report:
    kind = str(notification.get("notificationType", "")).lower()
    entries = ses_recipients(notification)
    if kind == "complaint":
        failures = [Failure(str(e["emailAddress"]).lower(), BounceClass.COMPLAINT) for e in entries]
        return Report(ReportKind.COMPLAINT, failures, original)
    bounce = notification.get("bounce")
    permanent = isinstance(bounce, dict) and bounce.get("bounceType") == "Permanent"
    failures = []
    for entry in entries:
        diagnostic = str(entry.get("diagnosticCode", "")).partition(";")[2].strip()
        status = _status_in(str(entry.get("status", ""))) or _status_in(diagnostic)
        action = "failed" if permanent else "delayed"
        bounce_class = classify_failure(status, _code_in(diagnostic), diagnostic, action)
        address = str(entry["emailAddress"]).lower()
        failures.append(Failure(address, bounce_class, None, action, status, None, diagnostic))
    if not failures:
        return Report(ReportKind.UNRECOGNISED, original=original)
    return Report(ReportKind.BOUNCE, failures, original)


def _text_failures(message: Message, original: Message | None) -> list[Failure]:
    """Find failed recipients in the text of a bounce that neither DSN nor flufl.bounce parse.

    Every address in the notification text counts, except the bounce's own sender and
    recipients. An address that the text names as the failed one counts even then, since
    DragonFly Mail Agent repeats it in X-Original-To. When the text names none, the To
    addresses of the returned message count.
    """
    text = notification_text(message)
    own = {a.lower() for _, a in getaddresses(_own_address_fields(message))}
    senders = (own | _quoted_sender_addresses(text)) - set(named_failures(text))
    found = [a.lower() for a in _ADDRESS.findall(text)]
    addresses = [a for a in dict.fromkeys(found) if a not in senders and not _DAEMON_FROM.match(a)]
    if not addresses and original is not None:
        addresses = [a.lower() for _, a in getaddresses(original.get_all("To", [])) if "@" in a]

    failures = []
    for address in addresses:
        diagnostic = diagnostic_near(text, address)
        if not has_signal(diagnostic):
            diagnostic = " ".join(text.split())[:2000]
        status, code = _status_in(diagnostic), _code_in(diagnostic)
        single = len(addresses) == 1
        command = _command_for(text if single else diagnostic, address, single=single)
        bounce_class = classify_failure(status, code, diagnostic, "failed", command, address)
        failures.append(Failure(address, bounce_class, None, "failed", status, code, diagnostic))
    return failures


def _quoted_sender_addresses(text: str) -> set[str]:
    """Return the addresses that ``text`` mentions only on lines quoting sender headers.

    Such lines (From, Return-Path, Message-ID, MAIL FROM and similar) name the returned
    message's sender or its Message-ID, never a failed recipient.
    """
    quoted: set[str] = set()
    elsewhere: set[str] = set()
    for line in text.lower().splitlines():
        side = quoted if _QUOTED_HEADER.match(line) else elsewhere
        side.update(_ADDRESS.findall(line))
    return quoted - elsewhere


def _own_address_fields(message: Message) -> list[str]:
    names = ("From", "To", "Cc", "Reply-To", "Return-Path", "Delivered-To", "X-Original-To")
    return [str(value) for name in names for value in message.get_all(name, [])]


def _looks_like_bounce(message: Message, original: Message | None) -> bool:
    sender = str(message.get("From", ""))
    subject = str(message.get("Subject", ""))
    if _DAEMON_FROM.search(sender) or _BOUNCE_SUBJECT.search(subject):
        return True
    # A message that returns another one and reports it undelivered is a bounce too.
    return original is not None and bool(_BOUNCE_SUBJECT.search(notification_text(message)))


def _typed_address(value: object) -> str | None:
    """Return the address of a DSN recipient field such as ``rfc822; user@example.com``."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    kind, separator, address = text.partition(";")
    address = (address if separator else kind).strip().strip("<>").strip()
    return address.lower() if _is_address(address) else None


def _is_address(text: str) -> bool:
    local, separator, domain = text.rpartition("@")
    return bool(separator and local and domain and " " not in text)


def _status_in(text: str) -> str | None:
    match = _ANY_STATUS.search(text)
    return ".".join(match.groups()) if match else None


def _code_in(text: str) -> int | None:
    match = _REPLY_CODE.search(text)
    return int(match.group(1)) if match else None


def _original_headers(message: Message) -> Message | None:
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822" and part.is_multipart():
            inner = part.get_payload(0)
            assert isinstance(inner, Message)
            return inner
        if content_type == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return message_from_string(payload.decode("utf-8", "replace"))
    return None


def _unsubscribe_token(message: Message) -> str | None:
    match = _UNSUBSCRIBE_SUBJECT.match(str(message.get("Subject", "")))
    return match.group(1) if match else None


def _is_feedback_report(message: Message) -> bool:
    report_type = str(message.get_param("report-type", "")).lower()
    if message.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return True
    return any(part.get_content_type() == "message/feedback-report" for part in message.walk())


def _complaint_recipients(message: Message) -> list[str]:
    """Return the complaining recipients: Original-Rcpt-To, else the returned message's To."""
    found: list[str] = []
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields = part.get_payload()
        blocks = fields if isinstance(fields, list) else []
        for block in (b for b in blocks if isinstance(b, Message)):
            for value in block.get_all("Original-Rcpt-To", []):
                found.append(parseaddr(str(value))[1])
        if isinstance(fields, str):
            found.extend(re.findall(r"(?im)^Original-Rcpt-To:\s*<?([^\s<>]+@[^\s<>]+)", fields))
    if not found:
        original = _original_headers(message)
        if original is not None:
            found = [a for _, a in getaddresses(original.get_all("To", []))]
    return [a.lower() for a in dict.fromkeys(found) if "@" in a]


def _is_auto_reply(message: Message) -> bool:
    """Return whether a message without failures is an auto-reply (RFC 3834) to be ignored."""
    sender = str(message.get("From", ""))
    subject = str(message.get("Subject", ""))
    if _DAEMON_FROM.search(sender):
        return False
    auto = str(message.get("Auto-Submitted", "")).lower().startswith("auto-replied")
    flagged = any(message.get(name) for name in ("X-Autoreply", "X-Autorespond"))
    precedence = str(message.get("Precedence", "")).lower() == "auto_reply"
    return auto or flagged or precedence or bool(_AUTO_REPLY_SUBJECT.search(subject))
