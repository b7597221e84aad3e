"""Routes of `mailblast serve`: one-click unsubscribe (RFC 8058) and its confirmation page.

``POST <path>?token=T`` with the form body ``List-Unsubscribe=One-Click`` (URL-encoded or
multipart) suppresses the token's address for every campaign, with reason ``unsubscribed`` and
the token's campaign as origin, and returns 200 with an empty body. ``GET <path>?token=T`` only
shows a page whose button sends that same POST, because mail scanners follow links in messages.
A token that fails verification gets 400 and changes nothing. A replayed token gets 200 and
changes nothing more, because the store keeps the first entry.

Without a secret the path returns 503, so a misconfigured server can be distinguished from a
wrong URL.
Logs name the campaign and a masked address, never the token or the secret.
"""

from __future__ import annotations

import html
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from mailblast.recipients import normalise_address
from mailblast.store.base import EVERY_CAMPAIGN, LogRecord
from mailblast.unsubscribe import ONE_CLICK, InvalidToken, TokenSubject, verify_token

if TYPE_CHECKING:
    from mailblast.web.app import ServeContext

log = logging.getLogger("mailblast.web.unsubscribe")

# The confirmation page's form adds this field, so its POST gets a page back, not an empty body.
PAGE_FIELD = "confirmed-on-page"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_BODY_BYTES = 16_384  # a one-click body is 26 bytes; the page's form adds one field
# The page loads nothing from elsewhere and must not leak the token in a Referer header.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}
NOT_CONFIGURED = (
    "one-click unsubscribe is not configured on this server: start `mailblast serve` with the"
    " campaigns' unsubscribe secret in MAILBLAST_UNSUBSCRIBE_SECRET (or --secret-env,"
    " --secret-file)\n"
)
INVALID_LINK = (
    "This unsubscribe link is invalid or incomplete. Copy the whole link from the e-mail."
)


def routes(context: ServeContext) -> list[BaseRoute]:
    """Return the unsubscribe routes at the context's unsubscribe path."""
    path = context.unsubscribe_path
    if context.unsubscribe_secret is None:
        return [Route(path, _not_configured, methods=["GET", "POST"])]
    handler = UnsubscribeHandler(context, context.unsubscribe_secret)
    return [
        Route(path, handler.show_page, methods=["GET"]),
        Route(path, handler.unsubscribe, methods=["POST"]),
    ]


async def _not_configured(request: Request) -> Response:
    return PlainTextResponse(NOT_CONFIGURED, status_code=503)


class UnsubscribeHandler:
    """Verifies tokens and suppresses their addresses through the shared store."""

    def __init__(self, context: ServeContext, secret: bytes) -> None:
        self.context = context
        self._secret = secret

    async def show_page(self, request: Request) -> Response:
        """Show the confirmation page. A GET never unsubscribes."""
        token = request.query_params.get("token", "")
        try:
            subject = verify_token(self._secret, token)
        except InvalidToken:
            return _page("Invalid link", INVALID_LINK, status_code=400)
        address = html.escape(subject.address)
        form = (
            f'<form method="post" action="?token={quote(token, safe="")}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<input type="hidden" name="{PAGE_FIELD}" value="1">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        text = f"Stop sending mail to <b>{address}</b>?"
        return _page("Unsubscribe", text, form)

    async def unsubscribe(self, request: Request) -> Response:
        """Suppress the token's address and return 200, with an empty body for a one-click POST."""
        try:
            subject = verify_token(self._secret, request.query_params.get("token", ""))
            form = await _one_click_form(request)
            entry = _entry(subject)
        except (InvalidToken, ValueError) as error:
            return _rejected(request, str(error))

        from_page = form.get(PAGE_FIELD) is not None
        await self._suppress(subject, entry, from_page)
        if from_page:
            return _page("Unsubscribed", f"<b>{html.escape(entry[1])}</b> will get no more mail.")
        return Response(status_code=200, headers={"Cache-Control": "no-store"})

    async def _suppress(
        self, subject: TokenSubject, entry: tuple[str, str], from_page: bool
    ) -> None:
        key, address = entry
        now = time.time()
        channel = "confirmation page" if from_page else "one-click POST (RFC 8058)"
        record = LogRecord(
            type="unsubscribed", time=now, recipient=address, text=f"unsubscribed by {channel}"
        )
        added = await self.context.store.call(
            lambda store: store.add_suppression(
                key, address, "unsubscribed", EVERY_CAMPAIGN, now, subject.campaign, record
            )
        )
        state = "unsubscribed" if added else "already unsubscribed; unchanged"
        log.info(
            "campaign %s: %s %s by %s", subject.campaign, mask_address(address), state, channel
        )


async def _one_click_form(request: Request) -> FormData:
    """Read the form body, raising ValueError unless it contains List-Unsubscribe=One-Click."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type not in FORM_TYPES:
        raise ValueError(f"the body must be {' or '.join(FORM_TYPES)}, not {content_type!r}")
    # NOTE: a chunked body without Content-Length is not limited here, only multipart parts are.
    length = request.headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        raise ValueError(f"the body must be at most {MAX_BODY_BYTES} bytes, not {length}")
    try:
        form = await request.form(max_files=0, max_fields=10, max_part_size=4096)
    except HTTPException as error:
        raise ValueError(f"the form body cannot be read: {error.detail}") from error
    field, _, value = ONE_CLICK.partition("=")
    if form.get(field) != value:
        raise ValueError(f"the body must contain {ONE_CLICK} (RFC 8058)")
    return form


def _entry(subject: TokenSubject) -> tuple[str, str]:
    """Return (key, address) of the token's address, or raise ValueError when it is invalid."""
    address, key, _ = normalise_address(subject.address)
    return key, address


def _rejected(request: Request, reason: str) -> Response:
    log.warning("rejected an unsubscribe POST from %s: %s", _client(request), reason)
    return PlainTextResponse(f"invalid unsubscribe request: {reason}\n", status_code=400)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown client"


def mask_address(address: str) -> str:
    """Keep the first character of the local part and the domain: ``g***@example.com``."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"


def _page(title: str, text: str, form: str = "", status_code: int = 200) -> HTMLResponse:
    body = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;"
        "padding:0 1rem;line-height:1.5}button{font-size:1rem;padding:.5rem 1.5rem}</style>"
        f"</head><body><h1>{title}</h1><p>{text}</p>{form}</body></html>\n"
    )
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)
