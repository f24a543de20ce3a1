"""Residents' rights over HTTP: consent, erasure, access — plus the audit trail and a body cap.

* ``PUT /v1/residents/{id}/consent`` (``app`` or ``admin``): personalisation consent, contact
  consent (outreach), or both, given or withdrawn. One ``consent`` event per purpose is
  produced first (``acks=all``: durable, and the next training reads it) with the time of
  receipt as its Kafka time stamp, then the resident's profile in Redis is updated with that
  receipt time under the consumer's rule (the later receipt wins, ``consent_ts`` /
  ``contact_ts``), so the very next recommendation request and the next outreach plan
  already obey it. Broker down: ``503`` + ``Retry-After`` and nothing changed.
* ``DELETE /v1/residents/{id}`` (``admin``): erasure. Register, real-time state and every
  published list at once (:func:`bouquet.privacy.erasure.cascade`), then an ``erase``
  event (the event log hides the resident from every reader as soon as it is ingested;
  ``bouquet compact`` removes the bytes). Any step failing: ``503`` + ``Retry-After`` —
  every step is idempotent, so the client simply repeats the request.
* ``GET /v1/residents/{id}/export`` (``admin``): everything held about the resident
  (:func:`bouquet.privacy.export.export_resident`).
* ``GET /v1/admin/audit`` (``operator`` or ``admin``): the latest audit records (the Redis
  stream; the file when Redis is down). Records name residents by keyed reference only.

Erasures, exports and consent changes are audited (:mod:`bouquet.privacy.audit`) with the
calling key's role and fingerprint. (Keys, rate limits and body caps are checked before any
body is read, by :class:`bouquet.serving.admission.Admission`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import RedisError

from bouquet.core.events import Channel, parse_event
from bouquet.core.settings import Settings
from bouquet.privacy.audit import read_stream, resident_ref
from bouquet.serving import auditing
from bouquet.serving.auditing import actor, audit_log, declaration_entries, privacy_redis
from bouquet.serving.deps import AdminRole, AppRole, OperatorRole, ResidentId, SettingsDep
from bouquet.serving.runtime import Runtime, RuntimeDep
from bouquet.streaming.producer import EventProducer, ProduceFailed

log = logging.getLogger(__name__)
router = APIRouter(tags=["privacy"])
RETRY_AFTER_S = 5



class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"personalisation": False}, {"contact": True}]})

    personalisation: bool | None = Field(
        default=None, strict=True, description="true: the resident opts in to personalised "
        "recommendations; false: withdraws (objects)")
    contact: bool | None = Field(
        default=None, strict=True, description="true: the resident opts in to being "
        "contacted by outreach (nudges on the channels their profile accepts); false: "
        "withdraws — no nudge from the next plan on")
    channel: Channel = Field(default=Channel.APP, description="Where the resident said so")

    @model_validator(mode="after")
    def _some_purpose(self) -> ConsentBody:
        if self.personalisation is None and self.contact is None:
            raise ValueError("give personalisation, contact or both")
        return self

    def decisions(self) -> list[tuple[str, bool]]:
        """(purpose, given) of each purpose the body decides, personalisation first."""
        return [(purpose, given) for purpose, given in
                (("personalisation", self.personalisation), ("contact", self.contact))
                if given is not None]


class ConsentAnswer(BaseModel):
    resident_id: str
    personalisation: bool | None = Field(description="The decision on personalisation, if "
                                         "the request made one")
    contact: bool | None = Field(description="The decision on outreach contact, if the "
                                 "request made one")
    effective: bool = Field(description="True when the real-time profile now says so for "
                            "every purpose decided (the next request and the next outreach "
                            "plan obey it); false when a newer consent decision was already "
                            "recorded, or Redis was unavailable (see notice)")
    event_id: str = Field(description="The first consent event produced")
    event_ids: list[str] = Field(description="One consent event per purpose decided")
    ts: str
    notice: str | None = None


class ErasureAnswer(BaseModel):
    resident_id: str
    erased: bool
    reference: str = Field(description="Keyed reference in the erasure register and audit log")
    published_lists_deleted: int
    versions_checked: int
    event_id: str
    next_steps: list[str]


def _problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(status_code=status, content={"detail": detail, **extra},
                        headers=headers)


async def _produce(runtime: Runtime, settings: Settings, events: list[dict[str, Any]],
                   timestamp_ms: int | None = None) -> None:
    """Produce events through the app's intake producer and wait for the broker's acks
    (``timestamp_ms``: the records' time stamp, default now); raises
    :class:`ProduceFailed` (the producer is then rebuilt on the next call)."""
    async with runtime.producer_lock:
        if runtime.producer is None:
            timeout_ms = int(settings.serving_intake_timeout_s * 1000)
            runtime.producer = await asyncio.to_thread(
                EventProducer, settings, max_block_ms=timeout_ms, request_timeout_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms + 1000)
        producer = runtime.producer
    try:
        await asyncio.to_thread(producer.send_and_wait, events,
                                settings.serving_intake_timeout_s, timestamp_ms)
    except ProduceFailed:
        stale, runtime.producer = runtime.producer, None
        if stale is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stale.close, 0)
        raise


# --- consent -------------------------------------------------------------------------------
@router.put("/v1/residents/{resident_id}/consent", response_model=ConsentAnswer,
            summary="Give or withdraw consent: personalisation, outreach contact",
            responses={401: {"description": "Missing or unknown API key"},
                       403: {"description": "The key's role may not change consent"},
                       422: {"description": "Invalid resident id or body"},
                       503: {"description": "Broker unavailable: nothing changed; retry"}})
async def put_consent(resident_id: ResidentId, request: Request, runtime: RuntimeDep,
                      settings: SettingsDep, role: AppRole,
                      body: Annotated[ConsentBody, Body()]) -> JSONResponse:
    """Takes effect on the next request (non-personalised answers that say why, after a
    withdrawal) and excludes the resident from the next training; contact consent takes
    effect at the next outreach plan."""
    from bouquet.streaming.producer import new_event_id

    # received now: the Kafka records carry this time (ms) and the profile gets it too,
    # so the consumer applying the events later writes the same values
    received_ms = time.time_ns() // 1_000_000
    now = datetime.fromtimestamp(received_ms / 1000, UTC)
    events = []
    for purpose, given in body.decisions():
        event = {"schema_version": 1, "event_id": new_event_id("consent"),
                 "resident_id": resident_id, "type": "consent", "ts": now.isoformat(),
                 "channel": body.channel.value, "value": 1 if given else 0}
        if purpose != "personalisation":
            event["context"] = {"purpose": purpose}
        events.append(event)
    try:
        await _produce(runtime, settings, events, received_ms)
    except ProduceFailed as exc:
        log.warning("consent for a resident not recorded, broker unavailable: %s", exc)
        return _problem(503, "the event broker is unavailable; consent was not changed — "
                             "retry")
    entries = declaration_entries([parse_event(e) for e in events], actor(request, role),
                                  settings.pseudonym_secret)
    await asyncio.to_thread(audit_log(request.app).record_many, entries)
    answer = {"resident_id": resident_id, "personalisation": body.personalisation,
              "contact": body.contact, "effective": False,
              "event_id": events[0]["event_id"], "event_ids": [e["event_id"] for e in events],
              "ts": now.isoformat(), "notice": None}
    try:
        applied = [await runtime.store.set_consent(resident_id, given, now, purpose)
                   for purpose, given in body.decisions()]
        answer["effective"] = all(applied)
        if not answer["effective"]:
            answer["notice"] = ("a more recent consent decision is already recorded; it "
                                "stands")
    except (RedisError, OSError) as exc:
        log.warning("consent recorded but the real-time profile was not updated: %s", exc)
        answer["notice"] = ("recorded durably; real-time state unavailable, so it takes "
                            "effect when ingestion applies the event")
        return JSONResponse(status_code=202, content=answer)
    return JSONResponse(answer)


# --- erasure -------------------------------------------------------------------------------
@router.delete("/v1/residents/{resident_id}", response_model=ErasureAnswer,
               summary="Erase a resident everywhere",
               responses={401: {"description": "Missing or unknown API key"},
                          403: {"description": "Needs the admin role"},
                          422: {"description": "Invalid resident id"},
                          503: {"description": "A store was unavailable; what could be done "
                                                "was done; repeat the request"}})
async def delete_resident(resident_id: ResidentId, request: Request, runtime: RuntimeDep,
                          settings: SettingsDep, role: AdminRole) -> JSONResponse:
    """Real-time state and published recommendations are gone when this returns; the event
    log hides the resident from every reader once the `erase` event is ingested and loses
    the bytes at the next `bouquet compact`; the next training and publish leave them out."""
    from bouquet.privacy.erasure import cascade, erase_event

    app = request.app
    now = datetime.now(UTC)
    report = await asyncio.to_thread(cascade, settings, privacy_redis(app), resident_id,
                                     at=now, source="api")
    event = erase_event(resident_id, datetime.fromtimestamp(report.cutoff, UTC))
    problems = list(report.errors)
    try:
        await _produce(runtime, settings, [event])
    except ProduceFailed as exc:
        problems.append(f"broker: {exc}")
    outcome = "partial" if problems else "ok"
    await asyncio.to_thread(audit_log(app).record, "erasure", actor=actor(request, role),
                            target=f"resident:{report.ref[:16]}", outcome=outcome,
                            published_lists_deleted=report.published_lists_deleted,
                            event_id=event["event_id"], problems=problems)
    if problems:
        return _problem(503, "erasure incomplete: " + "; ".join(problems)[:300] +
                        " — what could be erased was; repeat the request",
                        reference=report.ref[:16])
    return JSONResponse({
        "resident_id": resident_id, "erased": True, "reference": report.ref[:16],
        "published_lists_deleted": report.published_lists_deleted,
        "versions_checked": report.versions_checked, "event_id": event["event_id"],
        "next_steps": [
            "event log: hidden from every reader once the erase event is ingested; bytes "
            "removed by the next `bouquet compact`",
            "models: left out of the next training and publish; `bouquet compact --models` "
            "removes the resident's row from models registered before now",
        ]})


# --- access --------------------------------------------------------------------------------
@router.get("/v1/residents/{resident_id}/export", summary="Everything held about a resident",
            responses={401: {"description": "Missing or unknown API key"},
                       403: {"description": "Needs the admin role"},
                       422: {"description": "Invalid resident id"},
                       503: {"description": "Redis unavailable; retry"}})
async def export_resident(resident_id: ResidentId, request: Request, settings: SettingsDep,
                          role: AdminRole) -> JSONResponse:
    """Events from the log (erasures applied), real-time state, current recommendations,
    consent and erasure status, as one JSON document."""
    from bouquet.privacy.export import export_resident as build

    app = request.app
    try:
        document = await asyncio.to_thread(build, settings, privacy_redis(app), resident_id)
    except (RedisError, OSError) as exc:
        return _problem(503, f"Redis unavailable ({exc.__class__.__name__}); retry")
    reference = resident_ref(resident_id, settings.pseudonym_secret)[:16]
    await asyncio.to_thread(audit_log(app).record, "export", actor=actor(request, role),
                            target=f"resident:{reference}", events=len(document["events"]))
    return JSONResponse(document)


@router.get("/v1/admin/audit", summary="Latest audit records (newest first)",
            responses={401: {"description": "Missing or unknown API key"},
                       403: {"description": "Needs the operator or admin role"}})
async def audit_records(request: Request, _: OperatorRole,
                        count: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONResponse:
    app = request.app
    try:
        records = await asyncio.to_thread(read_stream, privacy_redis(app), app.state.keys,
                                          count)
        source = "redis stream"
    except (RedisError, OSError):
        records = list(reversed(await asyncio.to_thread(audit_log(app).tail, count)))
        source = "audit file (Redis unavailable)"
    return JSONResponse({"source": source, "records": records})


async def shutdown(app: FastAPI) -> None:
    auditing.close(app)
