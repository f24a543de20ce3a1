"""Operator API (``operator`` role) and the engagement dashboard.

Every figure of :mod:`bouquet.analytics` as JSON, or as CSV with ``?format=csv`` (or the
``…/export.csv`` form), already small-cell suppressed:

- ``GET /v1/operator/engagement`` — headline of the latest week, dimension values,
  definitions' parameters and the live counters;
- ``GET /v1/operator/engagement/{figure}`` — ``cadence``, ``stickiness``, ``contacts``
  (weekly: ``?weeks=``), ``monthly``, ``cohorts`` (``?months=``), ``daily`` (``?days=``),
  ``lifetime`` (contacts per resident over the whole log);
  ``?by=all|neighbourhood|domain|factor|channel`` and ``?value=`` to keep one value;
- ``GET /v1/operator/funnel``, ``/funnel/weekly``, ``/funnel/uplift?baseline=`` — the
  recommendation funnel per model version and variant, and uplift with its 95 % interval;
- ``GET /v1/operator/live`` and ``/live/{active|contacts|funnel|rolling}`` — today and this
  week from the Redis counters.

History figures are computed from the event log in a worker thread and cached in process
(:class:`bouquet.analytics.service.EngagementService`), so the dashboard stays fast.

``GET /dashboard`` serves the dashboard page and ``/dashboard/assets/*`` its scripts and
styles — all from ``serving/static``, no CDN. The page itself holds no data and is public;
its data calls send the operator key in the ``X-API-Key`` header, which the page asks for
and keeps in ``sessionStorage``. ``/dashboard#key=…`` pre-fills it for the local demo (the
development key: a fragment never reaches the server, and the page then removes it from the
address bar); a key is never taken from, or sent in, a query string.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from bouquet.analytics.figures import FIGURES, BadQuery
from bouquet.analytics.service import EngagementService
from bouquet.analytics.tables import Table
from bouquet.privacy.erasure import ErasureRegister
from bouquet.serving.deps import OperatorRole, close_sync_redis, sync_redis, table_response

log = logging.getLogger(__name__)
router = APIRouter()

Figure = Literal["cadence", "stickiness", "contacts", "monthly", "cohorts", "daily",
                 "lifetime"]
By = Literal["all", "neighbourhood", "domain", "factor", "channel"]
Events = Literal["use", "response", "exposure"]
Format = Literal["json", "csv"]
LiveTable = Literal["active", "contacts", "funnel", "rolling"]
Count = Annotated[int | None, Query(ge=1, le=5200)]

#: Dashboard assets: name → media type (nothing else under static/ is served).
ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: The page may only load what the project serves: a CDN reference would be refused.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def service_of(app: FastAPI) -> EngagementService:
    """The app's engagement service (built on first use, one per app)."""
    found = getattr(app.state, "engagement_service", None)
    if found is None:
        settings = app.state.settings
        found = EngagementService(settings, app.state.catalog,
                                  erasures=ErasureRegister.for_settings(settings))
        app.state.engagement_service = found
    return found


def _sync_redis(app: FastAPI) -> redis.Redis:
    """A synchronous client for the live figures, which run in a worker thread."""
    return sync_redis(app, "operator_redis", socket_timeout=2)


async def shutdown(app: FastAPI) -> None:
    close_sync_redis(app, "operator_redis")


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except BadQuery as exc:
        raise HTTPException(422, detail=str(exc)) from None


def _last(figure: str, weeks: int | None, months: int | None, days: int | None) -> int | None:
    period = FIGURES[figure].period
    return {"week": weeks, "month": months, "cohort": months, "day": days,
            "none": None}[period]


@router.get("/v1/operator/engagement", tags=["operator"],
            summary="Headline engagement, filters' values and live counters")
async def engagement_summary(request: Request, _: OperatorRole) -> JSONResponse:
    svc = service_of(request.app)
    try:
        body = await run_in_threadpool(svc.summary, _sync_redis(request.app))
    except (RedisError, OSError) as exc:
        log.warning("live counters unavailable: %s", exc)
        body = await run_in_threadpool(svc.summary, None)
        body["live"] = {"error": f"Redis unavailable: {exc.__class__.__name__}"}
    return JSONResponse(body)


async def _figure(request: Request, figure: str, by: str, value: str | None,
                  weeks: int | None, months: int | None, days: int | None, fmt: str,
                  events: str) -> Response:
    svc = service_of(request.app)
    table = await _run(svc.figure, figure, by=by, value=value,
                       last=_last(figure, weeks, months, days), events=events)
    return table_response(table, fmt)


@router.get("/v1/operator/engagement/{figure}", tags=["operator"],
            summary="One engagement figure (JSON, or CSV with ?format=csv)")
async def engagement_figure(request: Request, _: OperatorRole, figure: Figure,
                            by: By = "all", value: str | None = None,
                            weeks: Count = None, months: Count = None, days: Count = None,
                            format: Format = "json", events: Events = "use") -> Response:
    """``by`` breaks the figure down by a dimension (every value, or one with ``value``);
    ``weeks`` / ``months`` / ``days`` keep the latest periods only; ``events`` is the
    cadence class counted (``use``: the headline; ``response``, ``exposure``)."""
    return await _figure(request, figure, by, value, weeks, months, days, format, events)


@router.get("/v1/operator/engagement/{figure}/export.csv", tags=["operator"],
            summary="One engagement figure as CSV")
async def engagement_figure_csv(request: Request, _: OperatorRole, figure: Figure,
                                by: By = "all", value: str | None = None,
                                weeks: Count = None, months: Count = None,
                                days: Count = None, events: Events = "use") -> Response:
    return await _figure(request, figure, by, value, weeks, months, days, "csv", events)


@router.get("/v1/operator/funnel", tags=["operator"],
            summary="Recommendation funnel per model version and variant")
async def funnel(request: Request, _: OperatorRole, weeks: Count = None, by: By = "all",
                 value: str | None = None, format: Format = "json") -> Response:
    """Stages shown → opened → subscribed → used, in residents and events, attributed
    through ``recommendation_id``; ``weeks`` keeps the latest ISO weeks of the log; ``by``
    breaks each arm down by a dimension."""
    return table_response(await _run(service_of(request.app).funnel, weeks, by, value), format)


@router.get("/v1/operator/funnel/weekly", tags=["operator"],
            summary="Recommendation funnel per arm and ISO week")
async def funnel_weekly(request: Request, _: OperatorRole, weeks: Count = None,
                        format: Format = "json") -> Response:
    return table_response(await _run(service_of(request.app).funnel_weekly, weeks), format)


@router.get("/v1/operator/funnel/uplift", tags=["operator"],
            summary="Uplift of each arm over a baseline, with a 95% interval")
async def funnel_uplift(request: Request, _: OperatorRole, baseline: str | None = None,
                        weeks: Count = None, by: By = "all", value: str | None = None,
                        format: Format = "json") -> Response:
    """Difference of conversion rates (residents shown → stage) between each arm and the
    baseline (``<model_version>:<variant>`` or a variant name; default: a ``control`` /
    ``popular`` variant, else the largest arm), Newcombe hybrid-score interval."""
    return table_response(await _run(service_of(request.app).uplift, baseline, weeks, by, value),
                   format)


@router.get("/v1/operator/live", tags=["operator"],
            summary="Today and this week from the Redis counters")
async def live_all(request: Request, _: OperatorRole) -> JSONResponse:
    tables = await _live(request)
    return JSONResponse({name: t.to_json() for name, t in tables.items()})


@router.get("/v1/operator/live/{table}", tags=["operator"],
            summary="One live table (JSON, or CSV with ?format=csv)")
async def live_one(request: Request, _: OperatorRole, table: LiveTable,
                   format: Format = "json") -> Response:
    tables = await _live(request)
    return table_response(tables[table], format)


async def _live(request: Request) -> dict[str, Table]:
    svc = service_of(request.app)
    try:
        return await run_in_threadpool(svc.live, _sync_redis(request.app))
    except (RedisError, OSError) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"Redis unavailable: {exc.__class__.__name__}",
                            headers={"Retry-After": "5"}) from None


# --- the dashboard -------------------------------------------------------------------------
def _static(name: str) -> bytes:
    return resources.files("bouquet.serving").joinpath("static", name).read_bytes()


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return Response(_static("dashboard.html"), media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                             "Referrer-Policy": "no-referrer"})


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such asset")
    return Response(_static(name), media_type=ASSETS[name],
                    headers={"Cache-Control": "no-cache",
                             "X-Content-Type-Options": "nosniff"})
