"""Routes of `mailblast serve`: metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from mailblast.web.app import ServeContext


def routes(context: ServeContext) -> list[BaseRoute]:
    """Return this feature's routes."""
    return []
