"""The FastAPI application: built once per process from the settings.

Routers are listed in :data:`ROUTE_MODULES`, in the order Starlette tries them (the hot
path first), so grep finds where a route is mounted. Shared objects (settings,
catalog, Redis pool, key names) are put on ``app.state`` and reached through
:mod:`bouquet.serving.deps`. Routers that need start-up work (loading a model, say)
expose ``async def startup(app)`` / ``async def shutdown(app)``; those that add middleware
or exception handlers expose ``configure(app)``, called once when the app is built.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from bouquet import __version__
from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.redisclient import async_redis_client
from bouquet.core.settings import Settings, get_settings
from bouquet.serving import (
    routes_catalog,
    routes_events,
    routes_health,
    routes_operator,
    routes_ops,
    routes_outreach,
    routes_privacy,
    routes_recommend,
)

log = logging.getLogger(__name__)

DESCRIPTION = """
Tailored bundles of urban services for residents, in real time.

* **Front-end apps** (`app` key): send interactions (`POST /v1/events`), ask for bundles
  (`GET /v1/residents/{id}/bundles`).
* **Operators** (`operator` key): engagement frequency, funnel, outreach, dashboard.
* **The messaging gateway** (`gateway` key): outreach outcomes (`notify`, `open`,
  `dismiss`) and contact-consent withdrawals through `POST /v1/events`, nothing else.
* **Administrators** (`admin` key): erasure, export, model promotion.

Authenticate with the `X-API-Key` header.
"""


#: Every group of endpoints, in the order Starlette tries their routes: the hot path
#: (recommendations, then the intake) first, so its requests do not first test every
#: other route.
ROUTE_MODULES: tuple[ModuleType, ...] = (
    routes_recommend, routes_events, routes_catalog, routes_privacy, routes_operator,
    routes_outreach, routes_health, routes_ops,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    modules = ROUTE_MODULES

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for module in modules:
            if hasattr(module, "startup"):
                await module.startup(app)
        try:
            yield
        finally:
            for module in reversed(modules):
                if hasattr(module, "shutdown"):
                    await module.shutdown(app)
            await app.state.redis.aclose()

    app = FastAPI(title="Bouquet", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.catalog = load_catalog(settings.catalog_path)
    app.state.keys = Keys(settings.redis_key_prefix)
    app.state.redis = async_redis_client(settings.redis_url, socket_timeout=2,
                                         socket_connect_timeout=2, max_connections=64)

    @app.exception_handler(RequestValidationError)
    async def _clear_422(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"where": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]}
                    for err in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": "invalid request",
                                                      "problems": problems})

    for module in modules:
        app.include_router(module.router)
        if hasattr(module, "configure"):  # middleware, exception handlers
            module.configure(app)
    return app
