"""The human-readable side of returned messages: notification text and diagnostic phrases.

The phrase lists were built from the wording of common MTAs (Postfix, Sendmail, Exim, qmail,
Exchange, Gmail, Yahoo, and others) as seen in the test corpus under tests/data/bounces.
"""

from __future__ import annotations

import re
from email.message import Message

from mailblast.relay.classify import Command

# The receiver rejects the sender, the content or the sending host; the recipient exists.
BLOCK_TEXT = re.compile(
    # "they may be blacklisted" in a list of possible causes is no statement of a block.
    r"spam|(?<!may be )black ?list|block ?list|blocked|rbl|dnsbl|spamhaus|spamcop|reputation|"
    r"poor reputation|listed (at|in|on) (an? )?(rbl|dnsbl|spam|block|black)|policy|"
    r"not (permitted|authori[sz]ed|allowed) to send|sender (address )?(rejected|denied|"
    r"blocked|verify failed|unknown|domain)|domain of sender|sender domain|\bspf\b|dmarc|"
    r"\bdkim\b|relay(ing)? (access )?(denied|not permitted|prohibited)|not permitted to relay|"
    r"unable to relay|virus|malware|infected|content (rejected|filter)|access denied|"
    r"client host rejected|connection refused by|rate limit|too many (connections|messages|"
    r"recipients)|message (size|too (big|large))|too large|exceeds (the )?(maximum )?"
    r"(message )?size|banned|refused to accept|not accept(ed|ing)? mail from|denied by|"
    r"rejected by (the )?(recipient's )?(domain|filter)|authentication|"
    r"security (policy|reasons)|senders? (are )?not allowed|unauthenticated|refused due to|"
    r"\bptr\b|reverse (dns|lookup)|helo|junk|bulk mail|unsolicited|abuse|tls required|"
    r"encryption required|only accepts mail from",
    re.I,
)
# The recipient's domain accepts no mail at all (null MX, RFC 7505).
NOT_ACCEPTING_TEXT = re.compile(r"does not accept mail|indicated no smtp service|null mx", re.I)
# The SMTP command that a rejection replied to. Group 1 is DATA, MAIL, HELO/EHLO or RCPT.
_COMMAND = re.compile(
    r"(?:after|in reply to|in response to|command:?|>>>)\s*(?:the\s+)?(?:end of\s+)?"
    r"(data|mail from|mail|helo|ehlo|rcpt to|rcpt)\b",
    re.I,
)
_COMMANDS = {"data": "data", "mail": "mail", "mail from": "mail", "helo": "ehlo", "ehlo": "ehlo"}


def rejected_command(text: str) -> Command | None:
    """Return the SMTP command that the remote server rejected, when the text names it."""
    match = _COMMAND.search(text)
    if match is None:
        return None
    name = _COMMANDS.get(match.group(1).lower(), "rcpt")
    return Command(name)


# The mailbox exists but cannot take more mail now.
FULL_TEXT = re.compile(
    r"mailbox (is |was )?full|over ?quota|quota (exceeded|full)|exceeded (storage|(the )?quota)|"
    r"(mailbox|disk|storage) (size )?(limit|space)? ?exceeded|insufficient (storage|disk|"
    r"system storage)|mailbox size limit|not enough (storage|space)|full mailbox|"
    r"user'?s? mailbox is full|exceeds (his|her|their|the user's) (quota|storage)",
    re.I,
)
# The address or its domain does not exist.
HARD_TEXT = re.compile(
    r"user (is )?unknown|unknown (user|recipient|local[- ]part|address|mailbox)|"
    r"no such (user|mailbox|recipient|address|account|person)|"
    r"(user|mailbox|recipient|account|address|addressee)( name)? (does not|doesn't|did not) exist|"
    r"(user|mailbox|recipient|account|address|addressee) (not found|unknown|invalid)|"
    r"invalid (recipient|mailbox|address|user|account)|not a valid (mailbox|recipient|user)|"
    r"unrouteable address|no mailbox|mailbox (not found|unavailable|does not exist)|"
    r"host (or domain name )?not found|host unknown|unknown host|domain (not found|does not "
    r"exist|name not found)|(domain|host) (has no|without) (mx|mail exchanger)|no mx record|"
    r"name or service not known|nxdomain|not our customer|"
    r"bad destination (mailbox|system)|has moved|no longer (available|exists|valid)|"
    r"not listed in|unknown or illegal alias|recipient address rejected: (user|access) unknown|"
    r"(this|the) (account|user|mailbox) (has been|is) (deleted|removed|disabled|discontinued)|"
    r"undeliverable address|does not have an? (account|mailbox)|no account|"
    r"not have a mailbox|email account that you tried to reach does not exist|"
    r"address (is )?(not|no longer) (valid|in use)|recipient (rejected|not recogni[sz]ed)|"
    r"(?<!recipient )address rejected|no valid recipients|user not exist|invalid .{0,20}userid|"
    r"domain is not reachable|illegal (host|domain)|couldn't find a mail exchanger|"
    r"address couldn't be found|not listed in (the )?"
    r"(domino directory|public name)|"
    # Some Exim setups report an unroutable domain with this hedged text, as a permanent error.
    r"(account|address|mailbox|domain)( or (account|domain))? may not exist",
    re.I,
)
# Temporary conditions: the message may still arrive or a later one may.
SOFT_TEXT = re.compile(
    r"temporar|try again|delayed|deferred|expired|timed? ?out|retry|too long|"
    r"connection (refused|reset|lost)|could not be delivered for|giving up|"
    r"unable to deliver for|queue",
    re.I,
)

# Lines that start the returned copy of the original message in a plain-text bounce.
_RETURNED_COPY = re.compile(
    r"^\s*(-+\s*(original message|this is a copy|below this line|the header of the original|"
    r"original message headers?|undelivered message)|Content-Type: message/rfc822|"
    r"Return-Path: |Received: from |original (mail|message) (as follows|follows)|"
    r"From \S+ +(Mon|Tue|Wed|Thu|Fri|Sat|Sun) )",
    re.I | re.M,
)
# A line that ends a heading over a list of failed addresses, such as Exim's "The following
# address(es) failed:" or Lotus Domino's "was not delivered to:".
_FAILED_LIST_HEADING = re.compile(
    r"(failed|not (been )?delivered to|could not be delivered to|unable to deliver "
    r"(your message )?to the following addresses)\s*:\s*$",
    re.I,
)
_ADDRESS_LINE = re.compile(r"^\s*<?([\w.+=-]+@[\w-]+(?:\.[\w-]+)+)>?\s*$")
# A sentence naming the address whose delivery failed, as DragonFly Mail Agent writes it.
_NAMED_FAILURE = re.compile(
    r"error delivering your (?:mail|message) to\s+<?([\w.+=-]+@[\w-]+(?:\.[\w-]+)+)>?", re.I
)
_MAX_DIAGNOSTIC_LINES = 8
_LEADING_ADDRESS = re.compile(r"^\s*[\"<*]?\s*([\w.+=-]+@[\w-]+(?:\.[\w-]+)+)")
_STATUS = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b|(?<![\d.])[45]\d\d(?:[ -]|$)")


def has_signal(text: str) -> bool:
    """Return whether a diagnostic text contains anything that can classify it."""
    patterns = (BLOCK_TEXT, FULL_TEXT, HARD_TEXT, SOFT_TEXT)
    return any(pattern.search(text) for pattern in patterns) or bool(_STATUS.search(text))


def notification_text(message: Message) -> str:
    """Return the text a bounce addresses to a person, without the returned message."""
    if not message.is_multipart():
        return _cut_returned_copy(decoded_text(message))
    texts = []
    for part in _parts_outside_returned(message):
        # A multipart part left unsplit, because its boundary parameter could not be parsed,
        # still carries the notification text among its raw MIME lines.
        unsplit = part.get_content_maintype() == "multipart"
        if unsplit or part.get_content_type() in ("text/plain", "text/html"):
            text = decoded_text(part)
            if part.get_content_type() == "text/html":
                text = re.sub(r"<[^>]+>", " ", text)
            texts.append(_cut_returned_copy(text))
    return "\n\n".join(texts)


def diagnostic_near(text: str, address: str) -> str:
    """Return the lines of ``text`` about ``address``, or the start of ``text``.

    Bounces often name the address twice, in a summary of the returned message and next to
    the reason, so the first mention followed by a classifiable reason wins.
    """
    lines = text.splitlines()
    lowered = address.lower()
    mentions = [i for i, line in enumerate(lines) if lowered in line.lower()]
    if not mentions:
        return " ".join(" ".join(lines).split())[:1000]
    windows = [_window(lines, start, lowered) for start in mentions]
    return next((window for window in windows if has_signal(window)), windows[0])


def _window(lines: list[str], start: int, address: str) -> str:
    """Return the mention's line alone when it has a reason, else it and the lines after it."""
    first = lines[start]
    if has_signal(first.lower().replace(address, " ")):
        return first.strip()
    taken: list[str] = []
    blank_run = 0
    for index, line in enumerate(lines[start : start + _MAX_DIAGNOSTIC_LINES]):
        if index and _starts_with_other_address(line, address):
            break
        if not line.strip():
            blank_run += 1
            if blank_run > 1 or len(taken) > 1:
                break
            continue
        taken.append(line.strip())
    return " ".join(taken)


def paragraph_near(text: str, address: str) -> str:
    """Return the paragraph of ``text`` that first mentions ``address``, or an empty string."""
    lowered = address.lower()
    for paragraph in re.split(r"\n\s*\n", text):
        if lowered in paragraph.lower():
            return " ".join(paragraph.split())
    return ""


def listed_recipients(text: str) -> list[str]:
    """Return the addresses that ``text`` lists, one a line, under a failed-addresses heading.

    A list ends at the first line that is neither indented nor blank nor an address.
    """
    found: list[str] = []
    in_list = False
    for line in text.splitlines():
        if _FAILED_LIST_HEADING.search(line):
            in_list = True
            continue
        match = _ADDRESS_LINE.match(line)
        if in_list and match:
            found.append(match.group(1).lower())
        elif line.strip() and not line[:1].isspace():
            in_list = False
    return list(dict.fromkeys(found))


def named_failures(text: str) -> list[str]:
    """Return the addresses that a sentence of ``text`` names as the ones a delivery failed for."""
    return list(dict.fromkeys(address.lower() for address in _NAMED_FAILURE.findall(text)))


def inline_copy(message: Message) -> str | None:
    """Return the message that a single-part bounce quotes in its text, from its first line."""
    if message.is_multipart():
        return None
    text = decoded_text(message)
    match = _RETURNED_COPY.search(text)
    return text[match.start() :].lstrip() if match else None


def _starts_with_other_address(line: str, address: str) -> bool:
    match = _LEADING_ADDRESS.match(line)
    return match is not None and match.group(1).lower() != address


def _parts_outside_returned(message: Message) -> list[Message]:
    """Return the leaf parts of a bounce, leaving out any message/rfc822 it carries."""
    found: list[Message] = []
    stack = [message]
    while stack:
        part = stack.pop(0)
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            continue
        if part.is_multipart():
            payload = part.get_payload()
            assert isinstance(payload, list)
            stack = list(payload) + stack
        else:
            found.append(part)
    return found


def decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return str(part.get_payload())
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _cut_returned_copy(text: str) -> str:
    match = _RETURNED_COPY.search(text)
    return text[: match.start()] if match else text
