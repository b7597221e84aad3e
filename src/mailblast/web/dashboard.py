"""Routes of `mailblast serve`: the live dashboard at / and its control endpoints.

``GET /`` returns one HTML page with its script and styles inline, and the page polls
``GET /api/dashboard`` for the figures. Pause, resume and cancel are ``POST
/api/campaigns/{name}/{action}`` with the control token in the ``X-Mailblast-Token`` header.
They return 403 without a matching token or when none is configured, 404 for an unknown
campaign or action, and 409 when the campaign's status does not allow the action.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mailblast.control import ACTIONS, ControlError, apply_action
from mailblast.store.base import Store
from mailblast.web.snapshot import dashboard_snapshot

if TYPE_CHECKING:
    from mailblast.web.app import ServeContext

TOKEN_HEADER = "X-Mailblast-Token"
log = logging.getLogger("mailblast.web")


def routes(context: ServeContext) -> list[BaseRoute]:
    """Return the dashboard page, its JSON feed and the control endpoints."""
    page = resources.files("mailblast.web").joinpath("dashboard.html").read_text("utf-8")

    async def show_page(request: Request) -> Response:
        return page_response(page)

    async def show_figures(request: Request) -> Response:
        control = context.control_token is not None
        figures = await context.store.call(
            lambda store: dashboard_snapshot(store, time.time(), control)
        )
        return JSONResponse(figures, headers={"Cache-Control": "no-store"})

    async def control(request: Request) -> Response:
        return await handle_control(context, request)

    return [
        Route("/", show_page, methods=["GET"]),
        Route("/api/dashboard", show_figures, methods=["GET"]),
        Route("/api/campaigns/{name}/{action}", control, methods=["POST"]),
    ]


def page_response(page: str) -> HTMLResponse:
    """Serve the page with a fresh script nonce and a policy that blocks every other origin."""
    nonce = secrets.token_urlsafe(16)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline';"
        " connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(page.replace("{{nonce}}", nonce), headers=headers)


async def handle_control(context: ServeContext, request: Request) -> Response:
    """Check the token, then apply pause, resume or cancel to the named campaign."""
    name = request.path_params["name"]
    action = request.path_params["action"]
    rejection = token_rejection(context.control_token, request.headers.get(TOKEN_HEADER))
    if rejection is not None:
        log.warning("dashboard: %s of campaign %r rejected: %s", action, name, rejection)
        return error_response(403, rejection)
    if action not in ACTIONS:
        return error_response(404, f"unknown action {action!r}; use {', '.join(ACTIONS)}")

    def run(store: Store) -> dict[str, Any] | None:
        row = store.get_campaign(name)
        if row is None:
            return None
        apply_action(store, row, action, time.time())
        changed = store.get_campaign(name)
        return {"campaign": name, "action": action, "status": changed and changed.status}

    try:
        result = await context.store.call(run)
    except ControlError as error:
        log.warning("dashboard: %s rejected: %s", action, error)
        return error_response(409, str(error))
    if result is None:
        log.warning("dashboard: %s of campaign %r rejected: not found in the store", action, name)
        return error_response(404, f"campaign {name!r} not found in the store")
    log.info("dashboard: campaign %s: %s requested", name, action)
    return JSONResponse(result)


def token_rejection(expected: str | None, supplied: str | None) -> str | None:
    """Return why a request's token is not accepted, or None when it matches."""
    if expected is None:
        return "the dashboard is read-only: no control token is configured"
    if not supplied:
        return f"missing control token: send it in the {TOKEN_HEADER} header"
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        return "wrong control token"
    return None


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
