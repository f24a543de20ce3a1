"""Operations: ``/readyz``, ``/metrics``, request metrics and the last-resort error handler.

``/readyz`` is what a load balancer asks before sending traffic. It answers 200 whenever a
published version is loaded in this process — ``ready`` when Redis answers too,
``degraded`` when Redis is down and answers come from the lists held in memory — and 503
(``not_ready``) only when there is no model to answer with. Pulling every instance out of
the balancer because the shared Redis blinked would turn a degraded service into an outage.
``/metrics`` is Prometheus text (no resident data): open on a laptop, behind a key in
production like ``/docs`` and ``/openapi.json`` (:mod:`bouquet.serving.admission`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from bouquet.serving import metrics
from bouquet.serving.admission import Admission
from bouquet.serving.runtime import RuntimeDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/readyz", summary="Readiness probe",
            responses={503: {"description": "No model loaded; `checks` says what is missing"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 ``ready`` / 200 ``degraded`` (Redis down, model loaded) / 503 ``not_ready``."""
    checks: dict[str, dict[str, object]] = {}
    try:
        await asyncio.wait_for(runtime.store.ping(), timeout=1.0)
        checks["redis"] = {"ok": True}
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = {"ok": False, "detail": f"{exc.__class__.__name__}: {exc}"}
    holder = runtime.holder
    loaded = {name: {"keyspace_version": m.version, "model_version": m.model_version,
                     "published_at": m.published_at} for name, m in holder.models.items()}
    current = holder.get("current")
    checks["model"] = {"ok": current is not None, "loaded": loaded}
    if current is None:
        checks["model"]["detail"] = (holder.last_error or
                                     "no published version yet: run `bouquet publish`")
    missing = sorted(p for p in holder.pointer_names if p not in holder.models)
    if missing:
        checks["experiment"] = {"ok": True, "detail": "variants without a published version "
                                f"serve the champion: {', '.join(missing)}"}
    if not checks["model"]["ok"]:
        status = "not_ready"
    elif all(c["ok"] for c in checks.values()):
        status = "ready"
    else:
        status = "degraded"
    return JSONResponse(status_code=503 if status == "not_ready" else 200,
                        content={"status": status, "checks": checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A true bug: log it with an id the client can quote, answer a clean JSON 500. The log
    names the route's template (``/v1/residents/{resident_id}/bundles``), never the path,
    which carries the resident's id."""
    error_id = secrets.token_hex(6)
    route = getattr(request.scope.get("route"), "path", None) or "unmatched route"
    log.error("unhandled error %s on %s %s", error_id, request.method, route, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "internal error",
                                                  "error_id": error_id})


def configure(app: FastAPI) -> None:
    app.add_middleware(metrics.MetricsMiddleware)
    # added last, so outermost: key, rate and body size are checked before anything reads
    # the body
    app.add_middleware(Admission, bouquet_app=app)
    app.add_exception_handler(Exception, _unexpected)
