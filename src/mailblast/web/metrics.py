"""Routes of `mailblast serve`: Prometheus metrics of every campaign in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailblast.metrics import StoreCollector
from mailblast.store.base import Store

if TYPE_CHECKING:
    from mailblast.web.app import ServeContext


def exposition(store: Store) -> bytes:
    """Return the metrics computed from the store in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return generate_latest(registry)


def routes(context: ServeContext) -> list[BaseRoute]:
    """Return this feature's routes."""

    async def metrics(request: Request) -> Response:
        body = await context.store.call(exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
