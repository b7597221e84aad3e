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


# Non-standard notices in the formats of several MTAs, each with the recipient lines that
# only its text carries. The key names the format.
NOTICES = {
    "exim text and header differ": """\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: sender@example.com
Subject: Mail delivery failed: returning message to sender
Message-Id: <exim-1@mx.example.net>
X-Failed-Recipients: alias@example.org

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  person@example.org
    SMTP error from remote mail server after RCPT TO:<person@example.org>:
    host mx.example.org [192.0.2.1]: 550 5.1.1 User unknown

------ This is a copy of the message, including all the headers. ------

From: sender@example.com
To: person@example.org
Subject: Spring sale
""",
    "exim unroutable domain": """\
From: Mail Delivery System <Mailer-Daemon@mx.example.net>
To: sender@example.com
Subject: Mail delivery failed: returning message to sender
Message-Id: <exim-2@mx.example.net>
X-Failed-Recipients: person@example.org

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  person@example.org
    The mail server could not deliver mail to person@example.org.  The account or domain \
may not exist, they may be blacklisted, or missing the proper dns entries.
""",
    "domino text names the address sent to": """\
From: Postmaster@mx.example.net
To: sender@example.com
Subject: DELIVERY FAILURE: User person not listed in Domino Directory
Message-ID: <domino-1@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Your message

  Subject: Spring sale

was not delivered to:

  person@example.org

because:

  User person (person@example.org) not listed in Domino Directory

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns;mx.example.net

Final-Recipient: rfc822;person@mail.example.org
Action: failed
Status: 5.0.0
Diagnostic-Code: X-Notes; User person (person@example.org) not listed in Domino Directory

--b1--
""",
    "rcpt to line from post_master": """\
From: post_master@example.net
To: sender@example.com
Subject: Re:Spring sale
Message-ID: <james-1@example.net>

Error: Invalid user address

Error message below:
550 - Requested action not taken: no such user here

Message details:
  Subject: Spring sale
  MAIL FROM: campaign@example.com
  RCPT TO: person@example.net
  From: other@example.com
""",
    "multipart with unparsed boundary": """\
From: MAILER-DAEMON@example.net
To: sender@example.com
Subject: Undeliverable message
Message-ID: <james-2@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative;
boundary="inner"

--inner
Content-Type: text/plain

550 - Requested action not taken: no such user here
  RCPT TO: person@example.net

--inner--

--outer--
""",
    "dsn quoted in plain text": """\
From: MAILER-DAEMON@mx.example.net
To: sender@example.com
Subject: Undelivered Mail Returned to Sender
Message-Id: <forwarded-1@mx.example.net>
Content-Type: text/plain; charset=us-ascii

The message returned below could not be delivered to one or more destinations.
For further assistance, please contact <support@example.net>.

---------------------------------
From MAILER-DAEMON  Thu Apr 29 23:34:45 2025
Return-Path: <>
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: admin@example.net
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b2"

--b2
Content-Type: text/plain

<final@example.org> (expanded from <person@example.org>): delivery temporarily
    suspended: connect to mx.example.org[192.0.2.2]: 421 Service not available

--b2
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; final@example.org
Original-Recipient: rfc822; person@example.org
Action: failed
Status: 4.0.0
Diagnostic-Code: X-Postfix; delivery temporarily suspended: 421 Service not available

--b2--
""",
    "headers quoted without indentation": """\
From: mailer-daemon@mail.example.net
To: sender@example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <zoho-1@mail.example.net>

This message was created automatically by mail delivery software.
A message that you sent could not be delivered to one or more of its recipients. \
This is a permanent error.

person@example.org Invalid Address, ERROR_CODE :550, ERROR_CODE :Requested action not taken: \
mailbox unavailable


Message-ID:<1418381365.12345@mail.example.net>
From:Sender <sender@example.com>
Subject:Spring sale
To:<person@example.org>
""",
    "mailing list loop alert": """\
From: list-admin@example.org
To: list-admin@example.org
Subject: Loop Alert: Duplicated Message-ID (list)
Message-Id: <loop-1@example.org>

Duplicated Message-ID in <list@example.org>.

Original mail as follows:

   From owner-list@example.org  Thu Apr 29 23:34:45 2025
   Return-Path: <owner-list@example.org>
   To: <list@example.org>
   From: <sender@example.com>
   Subject: Spring sale
""",
}
