"""Every HTTP request counted and timed by route template: an ASGI middleware around the whole HTTP app.

The label is the template of the route that serves the path (`/tasks/{id}`), one of BentoML's fixed
probe paths, or "unmatched" for anything else, so neither unique paths nor ids a client sends become
series of their own (each would live in `/metrics` and BentoML's metrics directory until a restart).
"""

from __future__ import annotations

import time

from starlette.routing import BaseRoute, Match

FIXED_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/docs"})
"""Paths BentoML serves itself (probes, metrics, the OpenAPI document)."""


def route_template(routes: list[BaseRoute], scope) -> str:
    """The template of the route that serves this request's path ("unmatched" when none does)."""
    for route in routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return getattr(route, "path", "unmatched")
    return scope["path"] if scope["path"] in FIXED_PATHS else "unmatched"


class RouteMetrics:
    """Count every HTTP request in `metrics.http_request` by route template, method and status."""

    def __init__(self, app, metrics, routes: list[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # an app that fails before answering: the HTTP server answers 500

        async def noted_send(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted_send)
        finally:
            self.metrics.http_request(route_template(self.routes, scope), scope["method"], code, started)
