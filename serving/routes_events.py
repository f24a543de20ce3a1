"""Event intake: ``POST /v1/events`` — one event or a batch, validated, then on Kafka.

* Validation is the consumer's own (:func:`parse_event` + :func:`check_against_catalog`),
  so an event the API accepts is never dead-lettered for a schema reason later.
* A batch is **all or nothing**: if any event is invalid the answer is ``422`` listing each
  bad event (index, reason code, detail) and *none* is produced, so a client never has to
  work out which half of a batch got in.
* ``202`` only after the broker acknowledged every event (``acks=all``, via
  :meth:`EventProducer.send_and_wait` in a worker thread so the event loop keeps serving).
  Broker unreachable or slow → ``503`` with ``Retry-After``; the client re-sends with the
  same ``event_id``s, and the consumer's de-duplication makes a partly delivered batch
  harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bouquet.core.events import (
    EventRejected,
    EventType,
    InteractionEvent,
    check_against_catalog,
    consent_purpose,
    parse_event,
)
from bouquet.core.settings import Settings
from bouquet.serving import metrics
from bouquet.serving.deps import CatalogDep, IntakeRole, SettingsDep
from bouquet.serving.runtime import Runtime, RuntimeDep, runtime_of
from bouquet.streaming.producer import EventProducer, ProduceFailed

log = logging.getLogger(__name__)
router = APIRouter(tags=["events"])
RETRY_AFTER_S = 5


#: What the messaging gateway reports: a nudge delivered, opened or dismissed.
GATEWAY_TYPES: frozenset[EventType] = frozenset({EventType.NOTIFY, EventType.OPEN,
                                                 EventType.DISMISS})


def gateway_may_send(event: InteractionEvent) -> bool:
    """A ``gateway`` key sends outreach outcomes and contact-consent withdrawals (an SMS
    "STOP", an unsubscribe link), nothing else: it cannot use, subscribe, grant consent
    or erase on a resident's behalf."""
    if event.type in GATEWAY_TYPES:
        return True
    return (event.type == EventType.CONSENT and event.value == 0
            and consent_purpose(event.context) == "contact")


class Accepted(BaseModel):
    accepted: int = Field(description="Events acknowledged by the broker (all of the request)")


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined: pydantic's ``#/$defs/…``
    references do not resolve inside an OpenAPI document (which has no root ``$defs``), so
    clients and schema-driven tools could not read the request body (issue 8)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_EVENT_SCHEMA = _inlined(InteractionEvent.model_json_schema())
_EXAMPLE = InteractionEvent.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {
        "schema": {"oneOf": [_EVENT_SCHEMA,
                             {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1}]},
        "examples": {
            "one": {"summary": "One event", "value": _EXAMPLE},
            "batch": {"summary": "A batch", "value": [
                _EXAMPLE,
                {**_EXAMPLE, "event_id": "app-7f3c9a2e-0002", "type": "use",
                 "service_id": "bike-share", "bundle_id": None, "recommendation_id": None},
            ]},
        },
    }},
}


def _problem(status: int, detail: str, problems: list[dict[str, Any]] | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"detail": detail}
    if problems is not None:
        content["problems"] = problems
    return JSONResponse(status_code=status, content=content, headers=headers)


def _new_producer(settings: Settings) -> EventProducer:
    timeout_ms = int(settings.serving_intake_timeout_s * 1000)
    return EventProducer(settings, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms,
                         delivery_timeout_ms=timeout_ms + 1000)


async def _producer(runtime: Runtime, settings: Settings) -> EventProducer:
    async with runtime.producer_lock:
        if runtime.producer is None:
            runtime.producer = await asyncio.to_thread(_new_producer, settings)
        return runtime.producer


async def _drop_producer(runtime: Runtime) -> None:
    """Forget a producer after a failure (its buffered records are the client's to re-send)."""
    producer, runtime.producer = runtime.producer, None
    if producer is not None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(producer.close, 0)


@router.post("/v1/events", status_code=202, response_model=Accepted,
             summary="Send one interaction event or a batch",
             openapi_extra={"requestBody": _REQUEST_BODY},
             responses={
                 401: {"description": "Missing or unknown API key"},
                 403: {"description": "The key's role may not send events, or a gateway "
                                      "key sent an event other than notify, open, dismiss "
                                      "or a contact-consent withdrawal (each listed); none "
                                      "was accepted"},
                 413: {"description": "Body larger than the batch limit allows"},
                 422: {"description": "Invalid JSON, or invalid events (each listed with its "
                                      "index and reason code); none was accepted"},
                 503: {"description": "Broker unavailable: nothing acknowledged; retry after "
                                      "`Retry-After` seconds with the same event ids"},
             })
async def post_events(request: Request, runtime: RuntimeDep, settings: SettingsDep,
                      catalog: CatalogDep, role: IntakeRole) -> JSONResponse:
    """Validate with the consumer's rules, produce with `acks=all`, answer `202` once the
    broker acknowledged every event. Apps (`app` keys) send any interaction; the messaging
    gateway (`gateway` keys) only `notify`, `open`, `dismiss` and contact-consent
    withdrawals."""
    limit = settings.serving_max_batch * settings.max_event_bytes
    raw = await request.body()
    if len(raw) > limit:
        metrics.EVENTS.labels("too_large").inc()
        return _problem(413, f"body of {len(raw)} bytes exceeds {limit} bytes "
                             f"({settings.serving_max_batch} events of at most "
                             f"{settings.max_event_bytes} bytes)")
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        metrics.EVENTS.labels("rejected").inc()
        return _problem(422, f"body is not valid JSON: {str(exc)[:200]}")
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        return _problem(422, "an empty batch: send one event object or a non-empty array")
    if len(items) > settings.serving_max_batch:
        metrics.EVENTS.labels("too_large").inc()
        return _problem(422, f"{len(items)} events in one batch; the limit is "
                             f"{settings.serving_max_batch} (BOUQUET_SERVING_MAX_BATCH)")
    events: list[InteractionEvent] = []
    problems: list[dict[str, Any]] = []
    skew = timedelta(seconds=settings.max_future_skew_s)
    for index, item in enumerate(items):
        try:
            if isinstance(item, dict) and len(json.dumps(item)) > settings.max_event_bytes:
                raise EventRejected("oversize", f"event is larger than "
                                                f"{settings.max_event_bytes} bytes")
            event = parse_event(item, max_bytes=settings.max_event_bytes)
            check_against_catalog(event, catalog, max_future_skew=skew)
            events.append(event)
        except EventRejected as exc:
            problems.append({"index": index, "reason": exc.reason, "detail": exc.detail})
    if problems:
        metrics.EVENTS.labels("rejected").inc(len(items))
        return _problem(422, f"{len(problems)} of {len(items)} events rejected; none was "
                             "accepted", problems)
    if role == "gateway":
        refused = [{"index": index, "reason": "not_for_gateway",
                    "detail": f"a gateway key may not send a {event.type.value!r} event"
                              + (" of this kind" if event.type == EventType.CONSENT else "")}
                   for index, event in enumerate(events) if not gateway_may_send(event)]
        if refused:
            metrics.EVENTS.labels("rejected").inc(len(items))
            return _problem(403, f"{len(refused)} of {len(items)} events are not outreach "
                                 "outcomes or contact withdrawals; none was accepted",
                            refused)
    try:
        producer = await _producer(runtime, settings)
        accepted = await asyncio.to_thread(producer.send_and_wait, events,
                                           settings.serving_intake_timeout_s)
    except ProduceFailed as exc:
        log.warning("intake: broker did not acknowledge %d events: %s", len(events), exc)
        metrics.EVENTS.labels("broker_unavailable").inc(len(events))
        await _drop_producer(runtime)
        return _problem(503, "the event broker is unavailable; nothing was accepted — retry "
                             "with the same event ids", headers={"Retry-After":
                                                                 str(RETRY_AFTER_S)})
    metrics.EVENTS.labels("accepted").inc(accepted)
    return JSONResponse(status_code=202, content={"accepted": accepted})


async def shutdown(app: FastAPI) -> None:
    """Flush and close the producer; never let a dead broker break the app's shutdown."""
    runtime = runtime_of(app)
    producer, runtime.producer = runtime.producer, None
    if producer is not None:
        try:
            await asyncio.wait_for(asyncio.to_thread(producer.close, 5), timeout=10)
        except Exception:  # the broker may be gone: nothing left to flush safely
            log.warning("intake producer did not close cleanly", exc_info=True)
