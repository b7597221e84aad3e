"""Assemble each message's RFC 5322 bytes from a skeleton that is built once per campaign.

Building an ``email.message.EmailMessage`` per recipient is too slow for a blast of a million
messages, so :class:`Composer` keeps every constant header and MIME frame as bytes and per
message only renders, encodes and joins. :func:`compose_slow` builds the same message with the
``email`` package; the tests parse both and require the same headers, content types and bodies.

Every header line written here is at most 78 characters where the content allows and always at
most 998 octets. Every line ends in CRLF, and no CR or LF appears outside such a pair.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage

import idna

from mailblast.config import Campaign
from mailblast.dkim import DkimSigner
from mailblast.errors import TemplateError
from mailblast.render import CompiledTemplates, Rendered
from mailblast.unsubscribe import ONE_CLICK, RecipientLinks, UnsubscribeLinks

CRLF = b"\r\n"
MAX_LINE = 78  # RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters
MAX_LINE_OCTETS = 998  # RFC 5322 section 2.1.1: lines MUST be at most 998 octets
MAX_ENCODED_WORD = 75  # RFC 2047 section 2: an encoded-word is at most 75 characters

_ENCODED_WORD_OVERHEAD = len("=?utf-8?b??=")
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, which
# str.splitlines and the email package treat as line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Header text written without encoding: printable ASCII words separated by runs of spaces,
# both short enough that folding at the spaces keeps every line within 78 characters, even
# when quoting doubles a display name's characters. Other text is written as encoded-words.
_PLAIN_SUBJECT = re.compile(r"[!-~]{1,60}(?: {1,8}[!-~]{1,60})*")
_PLAIN_NAME = re.compile(r"[!-~]{1,30}(?: [!-~]{1,30})*")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")  # RFC 5322 atext and spaces
_WORDS = re.compile(r" *[^ ]+")
_TOKEN = re.compile(r"[A-Za-z0-9_=+-]+(?:\.[A-Za-z0-9_=+-]+)*")  # a valid dot-atom fragment
# Characters that would end the address or start another one in the To header. Quoted local
# parts, which could contain them, are not supported.
_ADDRESS_FORBIDDEN = re.compile(r'[\x00-\x20\x7f<>(),;"\\]')
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TEXT_TYPE = b'Content-Type: text/plain; charset="utf-8"\r\n'
_HTML_TYPE = b'Content-Type: text/html; charset="utf-8"\r\n'
_ONE_CLICK_LINE = f"List-Unsubscribe-Post: {ONE_CLICK}\r\n".encode("ascii")
SEVEN_BIT = "7bit"
EIGHT_BIT = "8bit"
QUOTED_PRINTABLE = "quoted-printable"
_ENCODINGS = (SEVEN_BIT, EIGHT_BIT, QUOTED_PRINTABLE)


@dataclass(frozen=True, slots=True)
class Composed:
    """One message ready for a relay: its bytes and its envelope."""

    data: bytes  # the full message, CRLF line ends
    message_id: str  # "<...@domain>" with angle brackets
    envelope_sender: str  # MAIL FROM addr-spec
    recipient: str  # RCPT TO addr-spec
    smtputf8: bool  # True if the recipient address needs SMTPUTF8


class Composer:
    """Render and assemble the messages of one campaign.

    ``hostname`` replaces the From domain on the right of the Message-ID. ``unsubscribe``
    makes the recipient's unsubscribe URL, the value of the template variable
    ``unsubscribe_url``, and the List-Unsubscribe and List-Unsubscribe-Post headers (RFC 2369,
    RFC 8058). ``dkim`` signs each finished message as the last step of :meth:`compose`.
    """

    def __init__(
        self,
        campaign: Campaign,
        templates: CompiledTemplates,
        *,
        hostname: str | None = None,
        unsubscribe: UnsubscribeLinks | None = None,
        dkim: DkimSigner | None = None,
    ) -> None:
        if unsubscribe is None:
            _require_no_unsubscribe_url(templates)
        self._campaign = campaign
        self._templates = templates
        self._unsubscribe = unsubscribe
        self._dkim = dkim
        self._message_id_domain = _ascii_domain(hostname or campaign.from_domain)
        self._from_line = _fold_with_library("From", campaign.from_header)

        self._reply_to = (
            _fold_with_library("Reply-To", campaign.reply_to) if campaign.reply_to else b""
        )
        self._text_headers = {name: _part_headers(_TEXT_TYPE, name) for name in _ENCODINGS}
        self._html_headers = {name: _part_headers(_HTML_TYPE, name) for name in _ENCODINGS}
        self._boundary = "=_" + hashlib.sha256(campaign.name.encode()).hexdigest()[:24]
        self._frame = _MultipartFrame(self._boundary)
        self._date_second = -1
        self._date_line = b""

    def compose(
        self,
        message_key: str,
        address: str,
        fields: Mapping[str, str],
        smtputf8: bool,
        token: str,
        now: float | None = None,
        eight_bit: bool = False,
    ) -> Composed:
        """Render the templates for one recipient and assemble the message.

        ``address`` is the recipient's addr-spec and ``message_key`` its de-duplication key,
        from which the Message-ID is derived. ``token`` replaces ``{token}`` in the envelope
        sender (VERP). ``now`` is the Date in seconds since the epoch, by default the current
        time. ``eight_bit`` says that the relay takes 8bit bodies (8BITMIME): non-ASCII parts
        then go as UTF-8 octets instead of quoted-printable, unless the message is signed.
        Raises TemplateError when a template fails for this recipient, and ValueError
        when the address or the token cannot be written into the message.
        """
        timestamp = int(time.time() if now is None else now)
        utf8 = needs_smtputf8(address, smtputf8)
        message_id = message_id_for(self._campaign.name, message_key, self._message_id_domain)
        envelope_sender = self.envelope_sender(token)
        links = self._unsubscribe.for_recipient(address) if self._unsubscribe else None
        extra = _builtin_values(self._campaign, address, message_id, links)
        rendered = self._templates.render(fields, extra)

        data = b"".join(
            (
                self._from_line,
                encode_to(address, rendered.to_name),
                encode_subject(rendered.subject),
                self._date(timestamp),
                b"Message-ID: " + message_id.encode("ascii") + CRLF,
                self._reply_to,
                _list_unsubscribe(links),
                b"MIME-Version: 1.0\r\n",
                # A signature covers the body octets, and a later hop without 8BITMIME would
                # re-encode an 8bit body and break it (RFC 6376 section 5.3), so signed
                # messages keep quoted-printable for non-ASCII parts.
                self._content(rendered, eight_bit and self._dkim is None),
            )
        )
        if self._dkim is not None:
            data = self._dkim.sign(data, timestamp)
        return Composed(data, message_id, envelope_sender, address, utf8)

    def envelope_sender(self, token: str) -> str:
        """Return the MAIL FROM address with ``token`` (VERP).

        Raises ValueError when the token cannot be part of an address.
        """
        return _envelope_sender(self._campaign.envelope_sender, token)

    def _date(self, second: int) -> bytes:
        # The Date line changes once a second, so one formatting serves a whole batch.
        if second != self._date_second:
            self._date_line = b"Date: " + format_date(second).encode("ascii") + CRLF
            self._date_second = second
        return self._date_line

    def _content(self, rendered: Rendered, eight_bit: bool) -> bytes:
        if rendered.html is None:
            text, text_encoding = encode_body(rendered.text or "", eight_bit=eight_bit)
            return self._text_headers[text_encoding] + text
        if rendered.text is None:
            html, html_encoding = encode_body(rendered.html, eight_bit=eight_bit)
            return self._html_headers[html_encoding] + html

        text, text_encoding = encode_body(rendered.text, eight_bit=eight_bit)
        html, html_encoding = encode_body(rendered.html, eight_bit=eight_bit)
        frame = self._frame
        if frame.collides(text) or frame.collides(html):
            frame = _MultipartFrame(_free_boundary(self._boundary, text, html))
        return frame.join(text, text_encoding, html, html_encoding)


class _MultipartFrame:
    """The constant lines of a multipart/alternative body around its text and HTML parts."""

    def __init__(self, boundary: str) -> None:
        delimiter = b"--" + boundary.encode("ascii")
        self.boundary = boundary.encode("ascii")
        self.header = (
            b'Content-Type: multipart/alternative;\r\n boundary="' + self.boundary + b'"\r\n\r\n'
        )
        self.text_open = {
            name: delimiter + CRLF + _part_headers(_TEXT_TYPE, name) for name in _ENCODINGS
        }
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1), so
        # each part keeps its own final line break.
        self.html_open = {
            name: CRLF + delimiter + CRLF + _part_headers(_HTML_TYPE, name) for name in _ENCODINGS
        }
        self.close = CRLF + delimiter + b"--" + CRLF

    def collides(self, body: bytes) -> bool:
        """Return whether the boundary occurs in an encoded part body."""
        return self.boundary in body

    def join(self, text: bytes, text_encoding: str, html: bytes, html_encoding: str) -> bytes:
        """Return the Content-Type header, a blank line and both parts."""
        return b"".join(
            (
                self.header,
                self.text_open[text_encoding],
                text,
                self.html_open[html_encoding],
                html,
                self.close,
            )
        )


def _part_headers(content_type: bytes, encoding: str) -> bytes:
    """Return a part's Content-Type and Content-Transfer-Encoding lines and the blank line."""
    return content_type + b"Content-Transfer-Encoding: " + encoding.encode("ascii") + CRLF + CRLF


def _free_boundary(boundary: str, *bodies: bytes) -> str:
    """Return the first of boundary.1, boundary.2, ... that occurs in none of the bodies."""
    number = 1
    while True:
        candidate = f"{boundary}.{number}"
        if not any(candidate.encode("ascii") in body for body in bodies):
            return candidate
        number += 1


def needs_smtputf8(address: str, smtputf8: bool) -> bool:
    """Return whether a message to ``address`` must go with SMTPUTF8 (a non-ASCII address)."""
    return smtputf8 or not address.isascii()


def message_id_for(campaign_name: str, message_key: str, domain: str) -> str:
    """Return the Message-ID of a recipient's message, the same on every attempt.

    The left part is 26 base32 characters (130 bits) of SHA-256 over the campaign name, a NUL
    and the message key. An internationalised domain is written as its A-label (xn--).
    """
    digest = hashlib.sha256(f"{campaign_name}\0{message_key}".encode()).digest()
    # The first 26 base32 characters depend only on the first 20 octets (32 characters).
    # base64.b32encode is pure Python in Python 3.11, so encoding fewer octets saves time.
    local = base64.b32encode(digest[:20])[:26].decode("ascii").lower()
    return f"<{local}@{_ascii_domain(domain)}>"


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    encoded: bytes = idna.encode(domain, uts46=True)
    return encoded.decode("ascii")


def format_date(seconds: int) -> str:
    """Format a time as an RFC 5322 date in UTC, such as ``Mon, 20 May 2024 10:00:00 +0000``.

    Written by hand because time.strftime names days and months in the current locale.
    """
    t = time.gmtime(seconds)
    day = f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d}"
    return f"{day} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def _envelope_sender(template: str, token: str) -> str:
    if "{token}" not in template:
        return template
    if not _TOKEN.fullmatch(token):
        raise ValueError(
            f"token {token!r} cannot be part of an address; use letters, digits, _ = + -"
            " and single dots between them"
        )
    return template.replace("{token}", token)


def _builtin_values(
    campaign: Campaign, address: str, message_id: str, links: RecipientLinks | None
) -> dict[str, str]:
    values = {"email": address, "campaign": campaign.name, "message_id": message_id}
    if links is not None:
        values["unsubscribe_url"] = links.url
    return values


def _list_unsubscribe(links: RecipientLinks | None) -> bytes:
    if links is None:
        return b""
    return encode_list_unsubscribe(links.header) + _ONE_CLICK_LINE


def _require_no_unsubscribe_url(templates: CompiledTemplates) -> None:
    # Without this check every message of the campaign would fail at render time.
    labels = templates.templates_using("unsubscribe_url")
    if labels:
        raise TemplateError(
            [
                f"{label}: uses unsubscribe_url, but no unsubscribe URL is configured;"
                " remove the variable from the template"
                for label in labels
            ]
        )


def _fold_with_library(name: str, value: str) -> bytes:
    """Fold a constant header with the email package, encoding non-ASCII display names."""
    policy = email.policy.SMTP
    header = policy.header_factory(name, value)
    return header.fold(policy=policy).encode("ascii")


def clean_header_text(value: str) -> str:
    """Replace each control character and line separator by a space and strip the ends.

    This is what keeps a rendered value from starting a new header line.
    """
    return _CONTROL.sub(" ", value).strip()


def display_name_text(value: str) -> str:
    """Clean a rendered display name and collapse each run of whitespace into one space.

    RFC 5322 section 3.2.2 reads a run of whitespace between the words of a phrase as one
    space, so this is the name that a mail program shows.
    """
    return " ".join(_CONTROL.sub(" ", value).split())


def encode_subject(subject: str) -> bytes:
    """Return the folded ``Subject`` header line for a rendered subject."""
    text = clean_header_text(subject)
    prefix = "Subject: "
    if not text:
        return b"Subject: \r\n"
    if _PLAIN_SUBJECT.fullmatch(text) and "=?" not in text:
        return _fold(prefix, _WORDS.findall(text))
    return _fold(prefix, _encoded_words(text, MAX_LINE - len(prefix)))


def encode_to(address: str, name: str | None) -> bytes:
    """Return the folded ``To`` header line: the address, with a display name when it is set.

    A non-ASCII address is written as raw UTF-8 (RFC 6532), so the message needs SMTPUTF8. A
    display name longer than one encoded-word (45 UTF-8 octets) takes several. NOTE: the email
    parser of Python 3.11.7 keeps the space between them, contrary to RFC 2047 section 6.2, so
    it shows such a name with extra spaces. Mail programs that follow the RFC do not.
    """
    if _ADDRESS_FORBIDDEN.search(address) or address.count("@") != 1:
        raise ValueError(
            f"recipient address {address!r} cannot be written into the To header; expected"
            " one addr-spec without spaces, quotes or brackets, such as ann@example.com"
        )

    text = display_name_text(name) if name is not None else ""
    prefix = "To: "
    if not text:
        return _fold(prefix, [address])
    if _PLAIN_NAME.fullmatch(text) and "=?" not in text:
        phrase = text if _ATOM_PHRASE.fullmatch(text) else _quote(text)
        words = _WORDS.findall(phrase)
    else:
        words = _encoded_words(text, MAX_LINE - len(prefix))
    return _fold(prefix, [*words, f" <{address}>"])


def encode_list_unsubscribe(value: str) -> bytes:
    """Return the folded ``List-Unsubscribe`` header line for its value.

    The only fold point is after the comma between the two URIs, because RFC 2369 gives no
    way to fold inside one. Raises ValueError when a line would pass 998 octets, which a long
    URL base together with a long campaign name and address can cause.
    """
    words = [f"{uri}," for uri in value.split(", ")]
    words[-1] = words[-1][:-1]
    words[1:] = [" " + word for word in words[1:]]
    line = _fold("List-Unsubscribe: ", words)
    if max(map(len, line.split(CRLF))) > MAX_LINE_OCTETS:
        raise ValueError(
            f"the List-Unsubscribe header would pass {MAX_LINE_OCTETS} octets on one line;"
            " shorten the unsubscribe URL base or the campaign name"
        )
    return line


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _encoded_words(text: str, first_room: int) -> list[str]:
    """Encode text as RFC 2047 B encoded-words split between characters, never inside one.

    The first word fits in ``first_room`` characters, the others in 75. Every word after the
    first starts with a space, which RFC 2047 decoders drop between adjacent encoded-words.
    """
    data = text.encode("utf-8")
    words = []
    start = 0
    room = first_room
    while start < len(data):
        end = min(start + _payload_octets(room), len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a UTF-8 continuation octet
            end -= 1
        encoded = base64.b64encode(data[start:end]).decode("ascii")
        words.append(f" =?utf-8?b?{encoded}?=")
        start = end
        room = MAX_ENCODED_WORD
    words[0] = words[0][1:]
    return words


def _payload_octets(room: int) -> int:
    # Base64 writes 3 octets as 4 characters. The floor of 6 octets fits any UTF-8 character
    # (at most 4 octets), so the loop in _encoded_words always advances.
    width = min(room, MAX_ENCODED_WORD)
    return max((width - _ENCODED_WORD_OVERHEAD) // 4 * 3, 6)


def _fold(prefix: str, words: list[str]) -> bytes:
    """Join words into a header line, folding before a word that would pass 78 characters.

    Every word after the first starts with whitespace, so a fold only inserts CRLF and
    unfolding restores the text (RFC 5322 section 3.2.2).
    """
    lines = []
    line = prefix + words[0]
    for word in words[1:]:
        if len(line) + len(word) > MAX_LINE:
            lines.append(line)
            line = word
        else:
            line += word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def encode_body(text: str, *, eight_bit: bool = False) -> tuple[bytes, str]:
    """Return a body part as CRLF-terminated bytes and its Content-Transfer-Encoding.

    Line ends become CRLF and a final one is added. A part without NUL whose lines are at
    most 998 octets goes unchanged: 7bit when it is ASCII, 8bit UTF-8 when it is not and
    ``eight_bit`` allows it. Otherwise it is the quoted-printable form of its UTF-8 octets,
    whose lines are at most 76 characters.
    """
    # Line ends are rewritten in the UTF-8 octets, which is cheaper than in a str that contains
    # non-ASCII text. No multi-octet UTF-8 sequence contains a CR or LF octet.
    data = text.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    data = data.replace(b"\n", b"\r\n")
    ascii_only = data.isascii()
    if (ascii_only or eight_bit) and b"\0" not in data and not _has_long_line(data):
        return data, SEVEN_BIT if ascii_only else EIGHT_BIT
    # b2a_qp writes CRLF soft line breaks because the data's first line end is CRLF.
    return binascii.b2a_qp(data, istext=True), QUOTED_PRINTABLE


def _has_long_line(data: bytes) -> bool:
    """Return whether a line of ``data`` is longer than MAX_LINE_OCTETS; each line ends in CRLF.

    Each step jumps to the last LF within one longest line's reach, so it looks at a few
    positions per kilobyte instead of splitting the part into lines.
    """
    reach = MAX_LINE_OCTETS + len(CRLF)  # the octets of a longest line and its CRLF
    start = 0
    while len(data) - start > reach:
        end = data.rfind(b"\n", start, start + reach)
        if end < 0:
            return True
        start = end + 1
    return False


def compose_slow(
    campaign: Campaign,
    templates: CompiledTemplates,
    message_key: str,
    address: str,
    fields: Mapping[str, str],
    smtputf8: bool,
    token: str,
    now: float | None = None,
    *,
    hostname: str | None = None,
    unsubscribe: UnsubscribeLinks | None = None,
    eight_bit: bool = False,
) -> bytes:
    """Build the message that Composer.compose builds, with email.message.EmailMessage.

    This is the reference for tests. It renders and cleans the header values as the fast path
    does and leaves all MIME and header encoding to the email package.
    """
    utf8 = needs_smtputf8(address, smtputf8)
    message_id = message_id_for(campaign.name, message_key, hostname or campaign.from_domain)
    links = unsubscribe.for_recipient(address) if unsubscribe else None
    extra = _builtin_values(campaign, address, message_id, links)
    rendered = templates.render(fields, extra)
    timestamp = int(time.time() if now is None else now)

    message = EmailMessage(policy=email.policy.SMTPUTF8 if utf8 else email.policy.SMTP)
    message["From"] = campaign.from_header
    name = display_name_text(rendered.to_name) if rendered.to_name is not None else ""
    # Address(addr_spec=...) rejects a non-ASCII local part even under SMTPUTF8, but accepts
    # the same address given as username and domain.
    local_part, _, domain = address.rpartition("@")
    message["To"] = Address(display_name=name, username=local_part, domain=domain)
    message["Subject"] = clean_header_text(rendered.subject)
    message["Date"] = datetime.fromtimestamp(timestamp, UTC)
    message["Message-ID"] = message_id
    if campaign.reply_to:
        message["Reply-To"] = campaign.reply_to
    if links is not None:
        message["List-Unsubscribe"] = links.header
        message["List-Unsubscribe-Post"] = ONE_CLICK
    message["MIME-Version"] = "1.0"
    _set_slow_content(message, rendered, eight_bit)
    return message.as_bytes()


def _set_slow_content(message: EmailMessage, rendered: Rendered, eight_bit: bool) -> None:
    # The fast path's rule chooses the transfer encoding, so that both messages can be compared
    # header by header. The encoding itself is done by the email package.
    if rendered.text is not None:
        cte = encode_body(rendered.text, eight_bit=eight_bit)[1]
        message.set_content(rendered.text, cte=cte)
    if rendered.html is not None:
        cte = encode_body(rendered.html, eight_bit=eight_bit)[1]
        if rendered.text is not None:
            message.add_alternative(rendered.html, subtype="html", cte=cte)
        else:
            message.set_content(rendered.html, subtype="html", cte=cte)
