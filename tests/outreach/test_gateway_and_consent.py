"""Contact consent over the consent API, and the messaging gateway's key at the intake."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaConsumer

from bouquet.core.keys import Keys
from bouquet.localstack import ensure_topics
from bouquet.privacy.audit import AuditLog, api_actor
from tests.serving.support import client_for, redis_client

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
GATEWAY = {"X-API-Key": "dev-gateway-key"}


def event(rid: str = "r1", **fields) -> dict:
    base = {"schema_version": 1, "event_id": f"t-{uuid.uuid4().hex}", "resident_id": rid,
            "type": "open", "bundle_id": "maas-urban", "channel": "push",
            "recommendation_id": "v1.outreach.0a1b2c3d4e5f",
            "ts": (datetime.now(UTC) - timedelta(seconds=5)).isoformat()}
    base.update(fields)
    return base


def produced(settings, n: int) -> list[dict]:
    consumer = KafkaConsumer(settings.topic_events,
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    out = [json.loads(r.value) for r in consumer][:n]
    consumer.close()
    return out


async def test_gateway_key_sends_outcomes_and_contact_withdrawals_only(settings) -> None:
    ensure_topics(settings)
    withdrawal = event(type="consent", value=0, bundle_id=None, recommendation_id=None,
                       context={"purpose": "contact"}, channel="sms")
    allowed = [event(type="notify"), event(), event(type="dismiss"), withdrawal]
    async with client_for(settings) as c:
        ok = await c.post("/v1/events", json=allowed, headers=GATEWAY)
        assert ok.status_code == 202, ok.text
        forbidden = [event(type="use", bundle_id=None, service_id="bike-share"),
                     event(type="consent", value=1, bundle_id=None, recommendation_id=None,
                           context={"purpose": "contact"}),
                     event(type="consent", value=0, bundle_id=None, recommendation_id=None),
                     event(type="erase", bundle_id=None, recommendation_id=None)]
        for bad in forbidden:
            refused = await c.post("/v1/events", json=[event(), bad], headers=GATEWAY)
            assert refused.status_code == 403, (bad, refused.text)
            assert [p["index"] for p in refused.json()["problems"]] == [1]
        # the gateway key reads nothing: recommendations and operator figures are closed
        assert (await c.get("/v1/residents/r1/bundles", headers=GATEWAY)).status_code == 403
        assert (await c.get("/v1/operator/engagement", headers=GATEWAY)).status_code == 403
        # an app key still sends anything
        assert (await c.post("/v1/events", json=forbidden[0])).status_code == 202
    assert [e["event_id"] for e in produced(settings, 5)] == \
        [e["event_id"] for e in allowed] + [forbidden[0]["event_id"]]
    # the withdrawal is audited like every consent, with its purpose and the gateway's key
    (record,) = [r for r in AuditLog(settings).tail(10) if r["action"] == "consent"]
    assert record["detail"]["purpose"] == "contact" and record["detail"]["value"] == 0
    assert record["actor"] == api_actor("gateway", "dev-gateway-key", settings.server_secret)


async def test_contact_consent_through_the_consent_api(settings) -> None:
    ensure_topics(settings)
    keys = Keys(settings.redis_key_prefix)
    client = redis_client(settings)
    try:
        async with client_for(settings) as c:
            url = "/v1/residents/r9/consent"
            given = await c.put(url, json={"contact": True, "personalisation": True})
            assert given.status_code == 200, given.text
            body = given.json()
            assert body["effective"] and body["contact"] is True and len(body["event_ids"]) == 2
            assert client.hget(keys.profile("r9"), "contact") == b"1"
            assert client.hget(keys.profile("r9"), "consent") == b"1"
            assert client.sismember(keys.contactable(), "r9")
            withdrawn = await c.put(url, json={"contact": False})
            assert withdrawn.json()["personalisation"] is None
            assert client.hget(keys.profile("r9"), "contact") == b"0"
            assert client.hget(keys.profile("r9"), "consent") == b"1"  # untouched
            assert not client.sismember(keys.contactable(), "r9")
            assert (await c.put(url, json={})).status_code == 422
            assert (await c.put(url, json={"contact": "yes"})).status_code == 422
    finally:
        client.close()
    events = produced(settings, 3)
    assert [(e["value"], e.get("context")) for e in events] == [
        (1, None), (1, {"purpose": "contact"}), (0, {"purpose": "contact"})]


def test_the_records_script_drops_the_nudge_of_a_resident_who_withdrew_meanwhile(
        settings) -> None:
    from bouquet.core.outreach import ResidentRecord, decode_record
    from bouquet.outreach.store import OutreachStore

    keys = Keys(settings.redis_key_prefix)
    client = redis_client(settings)
    try:
        for rid, contact in (("still", "1"), ("gone", "0")):
            client.hset(keys.profile(rid), mapping={"contact": contact})
        nudge = ResidentRecord(sent=[1.79e9], pending=[(1.79e9, "v1.outreach.000000000001")])
        settled = ResidentRecord(streak=1)
        dropped = OutreachStore(client, keys).write_records(
            {"still": nudge, "gone": nudge, "erased": nudge, "quiet": settled},
            {"still", "gone", "erased"}, 3600)
        assert sorted(dropped) == ["erased", "gone"]  # no profile: erased meanwhile
        assert decode_record(client.hgetall(keys.outreach("still"))) == nudge
        assert not client.exists(keys.outreach("gone"), keys.outreach("erased"),
                                 keys.outreach("quiet"))  # quiet has no profile either
        assert 0 < client.ttl(keys.outreach("still")) <= 3600
    finally:
        client.close()
