"""The routes of an app with their full paths, through included routers (which FastAPI keeps nested)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.routing import Route


def routes_with_paths(routes: list[Any], prefix: str = "") -> Iterator[tuple[Route, str]]:
    """(route, full path) of every concrete route, included routers walked."""
    for route in routes:
        if isinstance(route, Route):
            yield route, prefix + route.path
        elif hasattr(route, "original_router"):
            yield from routes_with_paths(route.original_router.routes, prefix + route.include_context.prefix)
