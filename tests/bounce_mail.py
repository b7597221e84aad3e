"""Build returned messages for tests: DSNs (RFC 3464), ARF reports (RFC 5965), auto-replies."""

from __future__ import annotations

import hashlib

BOUNDARY = "=_bounce_boundary"


def dsn(
    envelope_to: str,
    recipient: str,
    status: str,
    diagnostic: str,
    original: bytes = b"",
    *,
    action: str = "failed",
    message_id: str | None = None,
) -> bytes:
    """Return a multipart/report DSN for one recipient, addressed to ``envelope_to``."""
    message_id = message_id or _message_id(envelope_to, recipient, status, diagnostic)
    original_part = original.decode("utf-8", "replace").replace("\r\n", "\n")
    text = f"""\
Return-Path: <>
Delivered-To: {envelope_to}
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: {envelope_to}
Subject: Undelivered Mail Returned to Sender
Message-ID: {message_id}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain; charset=us-ascii

The mail system could not deliver your message.

<{recipient}>: host mx.example.net said: {diagnostic}

--{BOUNDARY}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--{BOUNDARY}
Content-Type: message/rfc822

{original_part}
--{BOUNDARY}--
"""
    return text.encode("utf-8")


def arf(envelope_to: str, recipient: str, original: bytes = b"") -> bytes:
    """Return an abuse feedback report (ARF) about a message to ``recipient``."""
    original_part = original.decode("utf-8", "replace").replace("\r\n", "\n")
    message_id = _message_id(envelope_to, recipient, "arf", "")
    text = f"""\
From: feedback@example.net
To: {envelope_to}
Subject: Complaint about a message
Message-ID: {message_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"

--{BOUNDARY}
Content-Type: text/plain

This is an e-mail abuse report.

--{BOUNDARY}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: <{recipient}>

--{BOUNDARY}
Content-Type: message/rfc822

{original_part}
--{BOUNDARY}--
"""
    return text.encode("utf-8")


def auto_reply(envelope_to: str, sender: str) -> bytes:
    """Return an out-of-office reply (RFC 3834) from ``sender``."""
    return (
        f"From: {sender}\nTo: {envelope_to}\nSubject: Out of office\n"
        f"Message-ID: {_message_id(envelope_to, sender, 'away', '')}\n"
        "Auto-Submitted: auto-replied\n\nI am away until Monday.\n"
    ).encode()


def plain_mail(envelope_to: str, subject: str, sender: str = "person@example.org") -> bytes:
    """Return a plain message, such as an unsubscribe request by mail."""
    return (
        f"From: {sender}\nTo: {envelope_to}\nSubject: {subject}\n"
        f"Message-ID: {_message_id(envelope_to, sender, subject, '')}\n\nPlease.\n"
    ).encode()


def _message_id(*parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    return f"<{digest}@mx.example.net>"
