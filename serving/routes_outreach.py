"""Operator API for outreach (``operator`` role): the funnel, the lift, a plan's preview.

- ``GET /v1/operator/outreach`` — per ISO week: nudges planned, sent, opened, converted,
  dismissed, contactable residents and opt-outs (``?by=all|neighbourhood|domain``,
  ``?value=``, ``?weeks=``, ``?format=csv`` or ``…/export.csv``);
- ``GET /v1/operator/outreach/lift`` — the use-based weekly share of residents assigned to
  nudges against the holdout's, with a 95 % interval, same parameters;
- ``GET /v1/operator/outreach/plan?date=YYYY-MM-DD`` — what the planner would do that day
  (aggregates only: by channel, neighbourhood, domain, hour; why residents get none).

Figures come from :mod:`bouquet.analytics.outreach` (small cells suppressed); the preview
runs :class:`bouquet.outreach.planner.Planner` without recording or sending, in a worker
thread, one at a time, its answer cached for ``BOUQUET_ENGAGEMENT_CACHE_TTL_S``.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from bouquet.analytics.outreach import BadQuery, OutreachFigures, plan_preview
from bouquet.serving.deps import OperatorRole, close_sync_redis, sync_redis, table_response
from bouquet.serving.runtime import runtime_of

router = APIRouter(tags=["operator"])
By = Literal["all", "neighbourhood", "domain"]
Format = Literal["json", "csv"]
Weeks = Annotated[int | None, Query(ge=1, le=520)]


def figures_of(app: FastAPI) -> OutreachFigures:
    found = getattr(app.state, "outreach_figures", None)
    if found is None:
        settings = app.state.settings
        found = app.state.outreach_figures = OutreachFigures(
            settings.event_log_path, settings.outreach_ledger_path, app.state.catalog,
            salt=settings.outreach_holdout_salt, share=settings.outreach_holdout_share,
            k=settings.small_cell_k, ttl_s=settings.engagement_cache_ttl_s,
            recommendation_ids=runtime_of(app).recommendation_ids)
    return found


async def _figure(request: Request, name: str, by: str, value: str | None,
                  weeks: int | None, fmt: str) -> Response:
    figures = figures_of(request.app)
    build = figures.funnel if name == "funnel" else figures.lift
    try:
        table = await run_in_threadpool(build, by, value, weeks)
    except BadQuery as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return table_response(table, fmt)


@router.get("/v1/operator/outreach", summary="Outreach per week: planned, sent, opened, "
            "converted, opt-outs (JSON, or CSV with ?format=csv)")
async def outreach_funnel(request: Request, _: OperatorRole, by: By = "all",
                          value: str | None = None, weeks: Weeks = None,
                          format: Format = "json") -> Response:
    return await _figure(request, "funnel", by, value, weeks, format)


@router.get("/v1/operator/outreach/export.csv", summary="Outreach per week as CSV")
async def outreach_funnel_csv(request: Request, _: OperatorRole, by: By = "all",
                              value: str | None = None, weeks: Weeks = None) -> Response:
    return await _figure(request, "funnel", by, value, weeks, "csv")


@router.get("/v1/operator/outreach/lift", summary="Use-based weekly share, nudged vs "
            "holdout, with a 95% interval")
async def outreach_lift(request: Request, _: OperatorRole, by: By = "all",
                        value: str | None = None, weeks: Weeks = None,
                        format: Format = "json") -> Response:
    """Residents with contact consent before the four-week window, split by the holdout
    hash (intention to treat): share at a weekly-or-better **use** cadence in each group,
    difference and Newcombe 95 % interval, relative lift."""
    return await _figure(request, "lift", by, value, weeks, format)


@router.get("/v1/operator/outreach/lift/export.csv", summary="The lift as CSV")
async def outreach_lift_csv(request: Request, _: OperatorRole, by: By = "all",
                            value: str | None = None, weeks: Weeks = None) -> Response:
    return await _figure(request, "lift", by, value, weeks, "csv")


# --- the plan preview ------------------------------------------------------------------------
class _Previews:
    """One preview computed at a time; each day's answer kept ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.lock = threading.Lock()
        self.cache: dict[date, tuple[float, dict[str, Any]]] = {}


def _planner(app: FastAPI) -> Any:
    found = getattr(app.state, "outreach_planner", None)
    if found is None:
        from bouquet.outreach.planner import Planner

        found = app.state.outreach_planner = Planner(
            app.state.settings, app.state.catalog, runtime_of(app).ranker,
            client=sync_redis(app, "outreach_redis", socket_timeout=60))
    return found


def _preview(app: FastAPI, day: date | None) -> dict[str, Any]:
    from bouquet.outreach.planner import NothingPublished

    settings = app.state.settings
    previews = getattr(app.state, "outreach_previews", None)
    if previews is None:
        previews = app.state.outreach_previews = _Previews(settings.engagement_cache_ttl_s)
    planner = _planner(app)
    day = day or planner.today()
    with previews.lock:
        cached = previews.cache.get(day)
        if cached and time.monotonic() - cached[0] < previews.ttl_s:
            return cached[1]
        try:
            report, plan = planner.plan(day, now=planner.plan_instant(day), dry_run=True)
        except NothingPublished as exc:
            raise HTTPException(409, detail=str(exc)) from None
        except ValueError as exc:  # a day too far from today
            raise HTTPException(422, detail=str(exc)) from None
        nudges = plan.nudges.copy()
        zone = ZoneInfo(settings.outreach_timezone)
        nudges["hour"] = [f"{datetime.fromtimestamp(t, zone).hour:02d}"
                          for t in nudges["send_at"].to_numpy(np.float64)]
        body = plan_preview(nudges, report.excluded, report.residents, settings.small_cell_k,
                            day=day.isoformat(), model_version=report.model_version,
                            timezone=settings.outreach_timezone,
                            computed_at=datetime.now(zone).isoformat(timespec="seconds"))
        previews.cache[day] = (time.monotonic(), body)
        return body


@router.get("/v1/operator/outreach/plan", summary="Preview the outreach plan of a day "
            "(aggregates only)")
async def outreach_plan_preview(request: Request, _: OperatorRole,
                                date: Annotated[date | None, Query(
                                    description="Day to preview, YYYY-MM-DD, within a year "
                                                "of today (default: today, local)")] = None
                                ) -> JSONResponse:
    """What `bouquet outreach plan --date D` would do, computed now without recording or
    sending: nudges by channel, neighbourhood, domain and local send hour, and why the
    other contactable residents would get none. Nothing here names a resident."""
    return JSONResponse(await run_in_threadpool(_preview, request.app, date))


async def shutdown(app: FastAPI) -> None:
    close_sync_redis(app, "outreach_redis")
