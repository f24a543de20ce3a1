"""Prometheus metrics of the API, and the ASGI middleware that records them.

Metrics are process-wide (prometheus_client's model). Under ``bouquet serve --workers N``
the command points ``PROMETHEUS_MULTIPROC_DIR`` at a private folder before the workers
start, and ``/metrics`` aggregates every worker's files, so a scrape sees the whole server,
not whichever worker answered.

The middleware is plain ASGI (no ``BaseHTTPMiddleware``): it costs a few microseconds a
request, which matters when the whole answer takes a millisecond.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05,
            0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("bouquet_http_requests_total", "HTTP requests by route and status",
                   ["route", "method", "status"])
LATENCY = Histogram("bouquet_http_request_duration_seconds",
                    "Time from request to the last byte of the answer, by route", ["route"],
                    buckets=_BUCKETS)
FALLBACKS = Counter("bouquet_fallbacks_total",
                    "Answers (or parts) not from the resident's personalised list, by kind",
                    ["kind"])
ANSWERS = Counter("bouquet_recommendations_total",
                  "Recommendation answers by kind, variant and whether personalised/re-ranked",
                  ["kind", "variant", "personalised", "reranked"])
EVENTS = Counter("bouquet_intake_events_total", "Events taken by POST /v1/events, by outcome",
                 ["outcome"])
ADMISSION = Counter("bouquet_http_refused_total", "Requests refused before routing, their "
                    "body unread: unauthenticated, or over a key's rate limit", ["reason"])
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR"


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of every worker in multi-process mode."""
    if os.environ.get(MULTIPROCESS):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not the raw path, so a
    resident id never becomes a label)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(path, scope.get("method", ""), str(status[0])).inc()
            LATENCY.labels(path).observe(time.perf_counter() - started)
