"""The ASGI application behind `mailblast serve`.

Each feature module (unsubscribe, dashboard, metrics) contributes its routes from a
``routes(context)`` function. Handlers reach the store through :class:`StoreAccess`, which runs
the store's synchronous calls in a worker thread, one at a time, because a store object never
runs two calls at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route

from mailblast.store import open_store
from mailblast.store.base import Store
from mailblast.web import dashboard, metrics, unsubscribe

T = TypeVar("T")


class StoreAccess:
    """One store connection shared by all requests, opened on first use."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._store: Store | None = None
        self._lock = threading.Lock()

    async def call(self, function: Callable[[Store], T]) -> T:
        """Run ``function(store)`` in a worker thread and return its result."""
        return await anyio.to_thread.run_sync(self._run, function)

    def _run(self, function: Callable[[Store], T]) -> T:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.location)
            return function(self._store)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


@dataclass(frozen=True)
class ServeContext:
    """State shared by the route handlers: the store and the secrets read at start-up."""

    store: StoreAccess
    unsubscribe_secret: bytes | None  # None: the unsubscribe path returns 503
    control_token: str | None  # None: the dashboard is read-only
    unsubscribe_path: str = "/unsubscribe"  # the path of the campaigns' [unsubscribe] url


async def _healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


def create_app(context: ServeContext) -> Starlette:
    """Build the application with every feature's routes."""
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET"]),
        *unsubscribe.routes(context),
        *dashboard.routes(context),
        *metrics.routes(context),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        context.store.close()

    return Starlette(routes=routes, lifespan=lifespan)
