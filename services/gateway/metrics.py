"""The gateway's Prometheus metrics: requests counted and timed by route template and status, and
the unauthenticated `/metrics` endpoint that serves them (left out of the OpenAPI schema: it is
for Prometheus, not for API clients).

The route label is the template the request matched (`/v1/runs/{run_id}`), never the raw path, so
ids do not make new series; a request that matched no route is counted under `unmatched`. The
endpoint serves the process's default registry, which also holds prometheus_client's process
metrics (CPU, memory, open files) and anything shared/metrics.py recorded in this process.
"""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Module-level: one set per process, however many apps the tests build.
REQUESTS = Counter("autodidact_http_requests", "HTTP requests answered, by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("autodidact_http_request_seconds", "Seconds to answer an HTTP request, by method, route "
                    "template and status", ["method", "route", "status"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request. The router writes the matched route
    into the request's scope, which this middleware reads after the app answered; an exception
    that escapes the app is counted as the 500 the server answers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (scope["method"], route, str(status))
            REQUESTS.labels(*labels).inc()
            LATENCY.labels(*labels).observe(time.perf_counter() - start)


def metrics_endpoint(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
