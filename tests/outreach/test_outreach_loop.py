"""The whole outreach loop against the real broker, Redis and consumer: residents' consent
and history ingested → a plan → messages on the real outreach topic → outcomes posted by the
gateway key → ingested → the operators' figures; then a withdrawal and an erasure honoured
at the next plan, and the export and erasure of a nudged resident."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.outreach import PlanExists, in_holdout
from bouquet.core.recommendation import RecommendationIds
from bouquet.localstack import ensure_topics
from bouquet.outreach.planner import Planner
from bouquet.serving.ranking import OfferRanker
from tests.privacy.helpers import (
    file_occurrences,
    ingest_until_idle,
    produce_events,
    redis_occurrences,
)
from tests.serving.support import (
    ADMIN,
    OPERATOR,
    client_for,
    publish,
    redis_client,
    small_model,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
CATALOG = load_catalog()
GATEWAY = {"X-API-Key": "dev-gateway-key"}
#: residents of the published model (``<prefix><i>``); ids of equal length, so that no id is
#: part of another when the erased one is looked for everywhere
PREFIX = f"o{uuid.uuid4().hex[:8]}x"
RESIDENTS = [f"{PREFIX}{i}" for i in range(10, 40)]


def event(rid: str, kind: str, ts: datetime, **fields) -> dict:
    base = {"schema_version": 1, "event_id": f"t-{uuid.uuid4().hex}", "resident_id": rid,
            "type": kind, "ts": ts.isoformat(), "channel": "app"}
    base.update(fields)
    return base


def history(now: datetime) -> list[dict]:
    """Contact consent six weeks ago (so the lift's window is after it), channels, and use
    of services over the last four weeks, in the evening, for every other resident."""
    out = []
    nbs = CATALOG.neighbourhood_ids
    for i, rid in enumerate(RESIDENTS):
        start = now - timedelta(weeks=6)
        out.append(event(rid, "profile", start, context={
            "neighbourhood": nbs[i % 3], "channels": ["push", "email"] if i % 2 else ["sms"]}))
        out.append(event(rid, "consent", start, value=1, context={"purpose": "contact"}))
        if i % 3:
            out.append(event(rid, "consent", start, value=1))  # personalisation too
        if i % 2 == 0:
            for week in range(4):
                when = (now - timedelta(days=2 + 7 * week)).replace(hour=18, minute=30)
                out.append(event(rid, "use", when, service_id="bike-share"))
    return out


def outreach_messages(settings, n: int) -> list[tuple[str, dict]]:
    consumer = KafkaConsumer(settings.topic_outreach,
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    out = [(r.key.decode(), json.loads(r.value)) for r in consumer]
    consumer.close()
    assert len(out) == n
    return out


async def test_plan_deliver_report_outcomes_and_see_them(make_settings) -> None:
    settings = make_settings(small_cell_k=1, outreach_quiet_hours="00:00-00:00",
                             outreach_holdout_share=0.25, outreach_holdout_salt="loop",
                             outreach_channel_budget={})
    ensure_topics(settings)
    publish(settings, small_model(CATALOG, prefix=PREFIX))
    now = datetime.now(UTC) - timedelta(minutes=1)
    produce_events(settings, history(now))
    ingest_until_idle(settings)
    client = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    assert client.scard(keys.contactable()) == len(RESIDENTS)
    planner = Planner(settings, CATALOG, OfferRanker(CATALOG), client=client)
    day = planner.today()
    report, plan = planner.plan(day)
    holdout = set(r for r, h in zip(RESIDENTS, in_holdout(RESIDENTS, "loop", 0.25),
                                     strict=True) if h)
    assert report.excluded["holdout"] == len(holdout) > 0
    assert report.planned == len(RESIDENTS) - len(holdout) == report.delivered
    with pytest.raises(PlanExists):
        planner.plan(day)

    # the messages: one per nudge, keyed by resident, attributable, on an accepted channel
    messages = outreach_messages(settings, report.planned)
    by_resident = {key: body for key, body in messages}
    assert set(by_resident) == set(RESIDENTS) - holdout
    for rid, body in by_resident.items():
        assert body["resident_id"] == rid
        minted = RecommendationIds.for_settings(settings).verify(body["recommendation_id"])
        assert minted is not None and minted.variant == "outreach"
        index = RESIDENTS.index(rid)
        assert body["channel"] in (("push", "email") if index % 2 else ("sms",))
        assert body["offer"]["kind"] in ("bundle", "service") and body["reason"]
        assert datetime.fromisoformat(body["send_at"]).date() == day

    # the gateway reports: delivered, opened, one dismissed, one contact withdrawal; the
    # app reports uses that follow the nudges
    ordered = sorted(by_resident)
    at = datetime.now(UTC).isoformat()
    target = {rid: ({"bundle_id": b["offer"]["id"]} if b["offer"]["kind"] == "bundle"
                    else {"service_id": b["offer"]["id"]}) for rid, b in by_resident.items()}

    def outcome(rid: str, kind: str) -> dict:
        body = by_resident[rid]
        return event(rid, kind, datetime.fromisoformat(at), channel=body["channel"],
                     recommendation_id=body["recommendation_id"], **target[rid])

    notified = [outcome(r, "notify") for r in ordered]
    opened = [outcome(r, "open") for r in ordered[:8]]
    used = [outcome(r, "use") for r in ordered[:3]]
    quitter = ordered[-1]
    withdrawal = event(quitter, "consent", datetime.fromisoformat(at), value=0,
                       channel="sms", context={"purpose": "contact"})
    async with client_for(settings) as c:
        posted = await c.post("/v1/events", json=[*notified, *opened,
                                                   outcome(ordered[8], "dismiss"), withdrawal],
                              headers=GATEWAY)
        assert posted.status_code == 202, posted.text
        assert (await c.post("/v1/events", json=used)).status_code == 202  # the app's key
        assert (await c.post("/v1/events", json=used, headers=GATEWAY)).status_code == 403
        ingest_until_idle(settings)
        figures = (await c.get("/v1/operator/outreach?weeks=1", headers=OPERATOR)).json()
        week = [r for r in figures["rows"] if r["dimension"] == "all"][-1]
        assert (week["planned"], week["sent"], week["opened"], week["converted"],
                week["dismissed"]) == (report.planned, report.planned, 8, 3, 1)
        assert week["opted_out"] == 1 and week["contactable"] == len(RESIDENTS)
        by_nb = (await c.get("/v1/operator/outreach?by=neighbourhood&weeks=1",
                             headers=OPERATOR)).json()["rows"]
        assert sum(r["planned"] for r in by_nb) == report.planned
        csv = await c.get("/v1/operator/outreach/export.csv?weeks=1", headers=OPERATOR)
        assert csv.status_code == 200 and csv.text.startswith("dimension,value,week")
        lift = (await c.get("/v1/operator/outreach/lift?weeks=1", headers=OPERATOR)).json()
        row = [r for r in lift["rows"] if r["dimension"] == "all"][-1]
        assert row["holdout_residents"] == len(holdout)
        assert row["nudged_residents"] + row["holdout_residents"] == len(RESIDENTS)
        weekly = {r for i, r in enumerate(RESIDENTS) if i % 2 == 0}
        assert row["holdout_weekly"] == len(weekly & holdout)
        assert row["nudged_weekly"] == len(weekly - holdout)
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]
        preview = await c.get(f"/v1/operator/outreach/plan?date={day + timedelta(days=1)}",
                              headers=OPERATOR)
        assert preview.status_code == 200, preview.text
        shown = preview.json()
        # aggregates only: everyone nudged today is within the 48 h gap tomorrow
        assert shown["planned"] == 0 and shown["excluded"]["rows"]
        assert not any(f'"{rid}"' in preview.text for rid in RESIDENTS)
        assert (await c.get("/v1/operator/outreach", headers=GATEWAY)).status_code == 403

        # the nudged resident's export shows their nudge; then they are erased
        erased = ordered[0]
        document = (await c.get(f"/v1/residents/{erased}/export", headers=ADMIN)).json()
        nudges = document["outreach"]["nudges"]
        assert [n["recommendation_id"] for n in nudges] == \
            [by_resident[erased]["recommendation_id"]]
        assert document["outreach"]["contact"] is True
        assert document["outreach"]["record"]["pending"]
        assert (await c.delete(f"/v1/residents/{erased}", headers=ADMIN)).status_code == 200

    # the next plan (past the 48 h gap): the withdrawal and the erasure are honoured
    later_day = day + timedelta(days=3)
    _, later = planner.plan(later_day, now=planner.plan_instant(later_day), deliver=False)
    planned = set(later.nudges["resident_id"])
    assert quitter not in planned and erased not in planned
    assert planned and planned <= set(RESIDENTS) - holdout
    # nothing of the erased resident is left in Redis or in the state folder (the ledger
    # names no resident; the log's copies are compacted away by `bouquet compact`)
    assert redis_occurrences(client, erased) == []
    assert [f for f in file_occurrences(settings.state_dir, erased)
            if "eventlog" not in f] == []
    client.close()
