"""Admission of every request before any route reads its body: key, rate, size.

FastAPI reads and parses a route's body model *before* it resolves the route's
dependencies, the API-key check included, so an unauthenticated client could make the
server buffer and parse a large body only to be told 401. This plain-ASGI middleware runs
first, on the headers alone:

1. **Key**: paths in :func:`is_public` answer without one; every other request needs a
   valid ``X-API-Key`` (``401`` otherwise, the body unread). Which *role* a route admits
   stays the route's own check (``403``, :mod:`bouquet.serving.deps`), which reuses the
   role found here.
2. **Rate**: the intake (``POST /v1/events``, ``PUT …/consent``) and the operator and admin
   API have a token bucket per key in Redis (:mod:`bouquet.serving.rate_limit`); an empty
   bucket is ``429`` with ``Retry-After``. Recommendations are not limited here: they are
   the hot path, read-only, and cheap.
3. **Size**: each route's body cap (:func:`body_cap`), ``413`` before the body is read.
"""

from __future__ import annotations

import math
import re
from typing import Any

from bouquet.core.settings import Settings
from bouquet.serving import metrics
from bouquet.serving.body_limit import forward_limited, refuse
from bouquet.serving.deps import ROLE_SCOPE_KEY, key_table
from bouquet.serving.rate_limit import RateLimiter

#: The only route that takes a body larger than this is the intake.
SMALL_BODY_BYTES = 1024
#: Paths answered without a key: probes, and the dashboard page and its assets, which hold
#: no data (the page asks for the operator key and sends it with each data call).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/dashboard"})
PUBLIC_PREFIXES = ("/dashboard/assets/", "/v1/_bench/bare-open/")
#: The API's own description and the Prometheus metrics: public on a laptop; production
#: keeps them for key holders (docs/security.md).
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/metrics"})

INTAKE, OPERATOR = "intake", "operator"
_CONSENT = re.compile(r"/v1/residents/[^/]+/consent")
_RESIDENT_ADMIN = re.compile(r"/v1/residents/[^/]+(?:/export)?")


def is_public(path: str, settings: Settings) -> bool:
    """Whether ``path`` answers without a key."""
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return True
    return path in DOCS_PATHS and settings.env != "production"


def rate_group(method: str, path: str) -> str | None:
    """The token bucket a request draws from (:data:`INTAKE`, :data:`OPERATOR`), or None."""
    if (path == "/v1/events" and method == "POST") or _CONSENT.fullmatch(path):
        return INTAKE
    if path.startswith(("/v1/operator/", "/v1/admin/")) or path == "/v1/operator":
        return OPERATOR
    if _RESIDENT_ADMIN.fullmatch(path) and (method == "DELETE" or path.endswith("/export")):
        return OPERATOR  # erasure and export: the admin API
    return None


def body_cap(method: str, path: str, settings: Settings) -> int:
    """The largest body a request may carry: a full batch for the intake (at most
    ``BOUQUET_SERVING_MAX_BATCH`` events of ``BOUQUET_MAX_EVENT_BYTES``), 1 KB elsewhere (the
    consent body is a few dozen bytes; other routes take none)."""
    if path == "/v1/events" and method == "POST":
        return settings.serving_max_batch * settings.max_event_bytes
    return SMALL_BODY_BYTES


class Admission:
    """The middleware (see the module docstring); ``bouquet_app`` is the FastAPI app whose
    settings, keys and Redis it uses."""

    def __init__(self, app: Any, bouquet_app: Any) -> None:
        self.app = app
        self.bouquet_app = bouquet_app
        self.settings: Settings = bouquet_app.state.settings
        self.limiter = RateLimiter(bouquet_app.state.redis, bouquet_app.state.keys,
                                   self.settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if is_public(path, self.settings):
            await forward_limited(self.app, scope, receive, send, SMALL_BODY_BYTES)
            return
        api_key = None
        for name, value in scope.get("headers", ()):
            if name == b"x-api-key":
                api_key = value.decode("latin-1")
                break
        role = key_table(self.bouquet_app).role(api_key)
        if role is None:
            metrics.ADMISSION.labels("unauthenticated").inc()
            await refuse(send, 401, "missing or unknown API key (header X-API-Key)",
                         [(b"www-authenticate", b"X-API-Key")])
            return
        scope[ROLE_SCOPE_KEY] = role
        group = rate_group(method, path)
        if group is not None:
            assert api_key is not None
            admitted, wait_s = await self.limiter.take(group, api_key)
            if not admitted:
                metrics.ADMISSION.labels(f"rate_limited_{group}").inc()
                await refuse(send, 429, f"too many requests for this key ({group}); retry "
                             "after the Retry-After seconds",
                             [(b"retry-after", str(max(1, math.ceil(wait_s))).encode())])
                return
        await forward_limited(self.app, scope, receive, send,
                              body_cap(method, path, self.settings))
