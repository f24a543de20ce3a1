"""Event intake: ``POST /v1/events`` — one event or a batch, validated, then on Kafka.

* Validation is the consumer's own (:func:`parse_event` + :func:`check_against_catalog`),
  so an event the API accepts is never dead-lettered for a schema reason later. A body
  larger than :data:`INLINE_BODY_BYTES` is parsed and validated in a worker thread, so a
  large batch (or a crafted one) never holds the event loop that serves everyone else.
* A batch is **all or nothing**: if any event is invalid the answer is ``422`` listing each
  bad event (index, reason code, detail) and *none* is produced, so a client never has to
  work out which half of a batch got in.
* ``erase`` events need an ``admin`` key (``403`` otherwise, for the whole batch): apps
  erase through ``DELETE /v1/residents/{id}``, which needs admin too. ``consent`` and
  ``profile`` events (what a resident declares in an app) are open to ``app`` keys and each
  one is audited, like ``PUT /v1/residents/{id}/consent``.
* ``gateway`` keys (the city's messaging gateway) send only outreach outcomes (``notify``,
  ``open``, ``dismiss``) and contact-consent withdrawals (``403`` for the whole batch
  otherwise): the gateway reports what happened to a nudge, never acts for the resident.
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
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bouquet.core.catalog import Catalog
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
from bouquet.serving.auditing import actor, audit_log, declaration_entries
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
    clients and schema-driven tools could not read the request body."""
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


#: Bodies up to this size are parsed and validated on the event loop (a thread hop costs
#: more than validating a few events); larger ones in a worker thread, so that one large
#: batch — up to ``BOUQUET_SERVING_MAX_BATCH`` events of context to screen — never stalls
#: the other requests of the process.
INLINE_BODY_BYTES = 16 * 1024


class IntakeRefused(Exception):
    """A request body the intake refuses as a whole (nothing of it is produced)."""

    def __init__(self, status: int, outcome: str, detail: str, events: int = 1,
                 problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.outcome, self.detail = status, outcome, detail
        self.events, self.problems = events, problems


def validate_body(raw: bytes, settings: Settings, catalog: Catalog) -> list[InteractionEvent]:
    """The events of a request body, validated with the consumer's rules, all or nothing;
    raises :class:`IntakeRefused`. Pure CPU work: safe to run in a worker thread."""
    try:  # the body's size was capped before it was read (serving.admission.body_cap)
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IntakeRefused(422, "rejected", f"body is not valid JSON: {str(exc)[:200]}") \
            from None
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise IntakeRefused(422, "rejected", "an empty batch: send one event object or a "
                            "non-empty array", events=0)
    if len(items) > settings.serving_max_batch:
        raise IntakeRefused(422, "too_large", f"{len(items)} events in one batch; the limit "
                            f"is {settings.serving_max_batch} (BOUQUET_SERVING_MAX_BATCH)")
    events: list[InteractionEvent] = []
    problems: list[dict[str, Any]] = []
    skew = timedelta(seconds=settings.max_future_skew_s)
    past_skew = settings.past_skew_limits()
    for index, item in enumerate(items):
        try:
            if isinstance(item, dict) and len(json.dumps(item)) > settings.max_event_bytes:
                raise EventRejected("oversize", f"event is larger than "
                                                f"{settings.max_event_bytes} bytes")
            event = parse_event(item, max_bytes=settings.max_event_bytes)
            check_against_catalog(event, catalog, max_future_skew=skew,
                                  max_past_skew=past_skew)
            events.append(event)
        except EventRejected as exc:
            problems.append({"index": index, "reason": exc.reason, "detail": exc.detail})
    if problems:
        raise IntakeRefused(422, "rejected", f"{len(problems)} of {len(items)} events "
                            "rejected; none was accepted", events=len(items),
                            problems=problems)
    return events


def refuse_erasures_without_admin(events: list[InteractionEvent], role: str) -> None:
    """An ``erase`` event forgets a resident everywhere: only an ``admin`` key may send one
    (apps erase through ``DELETE /v1/residents/{id}``, which needs admin too and is
    audited). Raises :class:`IntakeRefused` (403) for the whole batch otherwise."""
    if role == "admin":
        return
    erasures = [i for i, e in enumerate(events) if e.type is EventType.ERASE]
    if erasures:
        raise IntakeRefused(403, "forbidden", "erase events need the 'admin' role (erase a "
                            "resident with DELETE /v1/residents/{id}); none was accepted",
                            events=len(events), problems=[
                                {"index": i, "reason": "forbidden",
                                 "detail": "an erase event needs the admin role"}
                                for i in erasures])


def refuse_beyond_gateway(events: list[InteractionEvent], role: str) -> None:
    """A ``gateway`` key may send only what :func:`gateway_may_send` admits; raises
    :class:`IntakeRefused` (403) for the whole batch otherwise, each refused event listed."""
    if role != "gateway":
        return
    refused = [{"index": index, "reason": "not_for_gateway",
                "detail": f"a gateway key may not send a {event.type.value!r} event"
                          + (" of this kind" if event.type == EventType.CONSENT else "")}
               for index, event in enumerate(events) if not gateway_may_send(event)]
    if refused:
        raise IntakeRefused(403, "forbidden", f"{len(refused)} of {len(events)} events are "
                            "not outreach outcomes or contact withdrawals; none was accepted",
                            events=len(events), problems=refused)


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
                 403: {"description": "The key's role may not send events, the batch "
                                      "holds an `erase` event and the key is not `admin`, "
                                      "or a gateway key sent an event other than notify, "
                                      "open, dismiss or a contact-consent withdrawal (each "
                                      "listed); none was accepted"},
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
    raw = await request.body()
    try:
        if len(raw) > INLINE_BODY_BYTES:
            events = await run_in_threadpool(validate_body, raw, settings, catalog)
        else:
            events = validate_body(raw, settings, catalog)
        refuse_erasures_without_admin(events, role)
        refuse_beyond_gateway(events, role)
    except IntakeRefused as exc:
        metrics.EVENTS.labels(exc.outcome).inc(exc.events)
        return _problem(exc.status, exc.detail, exc.problems)
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
    entries = declaration_entries(events, actor(request, role), settings.pseudonym_secret)
    if entries:
        try:
            await run_in_threadpool(audit_log(request.app).record_many, entries)
        except OSError:  # the events are durable already: say so loudly, answer as done
            log.exception("intake: %d declaration(s) accepted but not audited", len(entries))
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
