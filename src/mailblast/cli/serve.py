"""`mailblast serve`: the one-click unsubscribe endpoint, the dashboard and /metrics."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mailblast.cli.status import add_store_option
from mailblast.config import DEFAULT_UNSUBSCRIBE_SECRET_ENV, check_unsubscribe_secret, read_secret

DEFAULT_CONTROL_TOKEN_ENV = "MAILBLAST_CONTROL_TOKEN"
log = logging.getLogger("mailblast.web")


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve one-click unsubscribe, the dashboard and /metrics over HTTP",
        description="Serve the HTTP endpoints of the campaigns in one store: the one-click"
        " unsubscribe URL (RFC 8058), the dashboard at / and Prometheus metrics at /metrics."
        " Bound to 127.0.0.1 unless --host says otherwise; put a TLS-terminating proxy in"
        " front of it for the public unsubscribe URL.",
    )
    add_store_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8025, help="TCP port (default 8025)")
    serve.add_argument(
        "--secret-env",
        default=DEFAULT_UNSUBSCRIBE_SECRET_ENV,
        metavar="NAME",
        help="environment variable holding the unsubscribe token secret, the campaigns' own"
        f" (default {DEFAULT_UNSUBSCRIBE_SECRET_ENV})",
    )
    serve.add_argument(
        "--secret-file", metavar="PATH", help="file holding the secret, instead of --secret-env"
    )
    serve.add_argument(
        "--unsubscribe-path",
        type=_url_path,
        default="/unsubscribe",
        metavar="PATH",
        help="URL path of the one-click unsubscribe endpoint: the path of the campaigns'"
        " [unsubscribe] url (default /unsubscribe)",
    )
    serve.add_argument(
        "--control-token-env",
        default=DEFAULT_CONTROL_TOKEN_ENV,
        metavar="NAME",
        help="environment variable holding the token that the dashboard's pause, resume and"
        f" cancel buttons require (default {DEFAULT_CONTROL_TOKEN_ENV}); unset: read-only",
    )
    serve.add_argument(
        "--control-token-file", metavar="PATH", help="file holding the control token instead"
    )
    serve.set_defaults(handler=run_serve)


def _url_path(text: str) -> str:
    if not text.startswith("/") or "?" in text or "#" in text:
        raise argparse.ArgumentTypeError(
            f"invalid path {text!r}; give a URL path such as /unsubscribe, without query"
        )
    return text


def read_serve_secrets(arguments: argparse.Namespace) -> tuple[bytes | None, str | None]:
    """Read the unsubscribe secret and the control token; None for each one not configured."""
    secret_env = None if arguments.secret_file else arguments.secret_env
    if secret_env and secret_env not in os.environ:
        log.warning(
            "environment variable %s is not set: one-click unsubscribe is not served", secret_env
        )
        secret = None
    else:
        value = read_secret(secret_env, arguments.secret_file, "serve", "secret")
        secret = None if value is None else check_unsubscribe_secret(value, "serve")

    token_env = None if arguments.control_token_file else arguments.control_token_env
    control_token = None
    if not token_env or token_env in os.environ:
        control_token = read_secret(token_env, arguments.control_token_file, "serve", "token")
    if control_token is None:
        log.info("no control token: the dashboard is read-only")
    return secret, control_token


def run_serve(arguments: argparse.Namespace) -> int:
    # Imported here so that commands other than serve do not pay for the web stack.
    import uvicorn

    from mailblast.web.app import ServeContext, StoreAccess, create_app

    secret, control_token = read_serve_secrets(arguments)
    context = ServeContext(
        store=StoreAccess(arguments.store),
        unsubscribe_secret=secret,
        control_token=control_token,
        unsubscribe_path=arguments.unsubscribe_path,
    )
    app = create_app(context)
    log.info("serving store %s on http://%s:%d/", arguments.store, arguments.host, arguments.port)
    # No access log: request lines carry unsubscribe tokens in their query strings.
    uvicorn.run(
        app, host=arguments.host, port=arguments.port, log_level="warning", access_log=False
    )
    return 0
