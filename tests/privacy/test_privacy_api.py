"""Consent, erasure and access over HTTP, against the session's real broker and Redis, with
the real consumer and the training dataset builder closing the loop."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from kafka import KafkaConsumer

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.localstack import ensure_topics
from bouquet.pipelines.dataset import build_dataset, load_event_arrays, rule_from_settings
from tests.privacy.helpers import ingest_until_idle, produce_events, redis_occurrences
from tests.serving.support import (
    ADMIN,
    APP,
    OPERATOR,
    all_keys,
    client_for,
    publish,
    push_recent,
    redis_client,
    set_profile,
    small_model,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]
CATALOG = load_catalog()


def event(rid: str, kind: str = "use", ts: datetime | None = None, **fields) -> dict:
    base = {"schema_version": 1, "event_id": f"t-{uuid.uuid4().hex}", "resident_id": rid,
            "type": kind, "ts": (ts or datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "channel": "app"}
    if kind in ("use", "view", "click", "subscribe"):
        base["service_id"] = "bike-share"
    base.update(fields)
    return base


def topic_events(settings, timeout_s: float = 5) -> list[dict]:
    consumer = KafkaConsumer(settings.topic_events,
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000))
    out = [json.loads(r.value) for r in consumer]
    consumer.close()
    return out


def profile(settings, rid: str) -> dict[str, str]:
    client = redis_client(settings)
    raw = client.hgetall(Keys(settings.redis_key_prefix).profile(rid))
    client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_withdrawal_takes_effect_on_the_next_request_and_in_the_next_training(
        settings) -> None:
    ensure_topics(settings)
    publish(settings, small_model(CATALOG))
    past = datetime.now(UTC) - timedelta(days=30)
    # r1 (who will withdraw) and r2 (control) consented a month ago and used services
    history = []
    for rid in ("r1", "r2"):
        history.append(event(rid, "consent", past, value=1, channel="web"))
        history += [event(rid, "use", past + timedelta(days=d)) for d in range(1, 6)]
    produce_events(settings, history)
    ingest_until_idle(settings)
    # a consent=1 from a device whose clock runs ahead: received *before* the withdrawal
    # below, not yet ingested when it happens. Consent follows the order of receipt, so its
    # later time stamp must not undo the withdrawal, in Redis nor in training
    ahead = event("r1", "consent", datetime.now(UTC) + timedelta(minutes=2), value=1)
    produce_events(settings, [ahead])
    async with client_for(settings) as c:
        before = (await c.get("/v1/residents/r1/bundles")).json()
        assert before["personalised"] is True
        answer = await c.put("/v1/residents/r1/consent", json={"personalisation": False})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["effective"] is True and body["personalisation"] is False
        after = (await c.get("/v1/residents/r1/bundles")).json()
        assert after["personalised"] is False
        assert "not consented" in after["notice"] and after["fallback"]
        assert (await c.get("/v1/residents/r2/bundles")).json()["personalised"] is True
    # the consent event is on the topic with the time of receipt the profile carries
    produced = [e for e in topic_events(settings) if e["event_id"] == body["event_id"]]
    assert produced and produced[0]["value"] == 0 and produced[0]["type"] == "consent"
    stamp = profile(settings, "r1")["consent_ts"]
    assert profile(settings, "r1") == {"consent": "0", "consent_ts": stamp}
    assert abs(float(stamp) - datetime.fromisoformat(produced[0]["ts"]).timestamp()) < 0.002
    # the consumer applies the backlog (the device's consent, received earlier: no effect)
    # and the API's own event (same values)
    ingest_until_idle(settings)
    assert profile(settings, "r1") == {"consent": "0", "consent_ts": stamp}
    # ...and the next training leaves r1 out, keeps r2
    arrays = load_event_arrays(settings, CATALOG)
    trained = set(build_dataset(arrays, rule_from_settings(settings)).resident_ids)
    assert "r2" in trained and "r1" not in trained
    # a decision received after the withdrawal is the resident's latest: it stands
    produce_events(settings, [event("r1", "consent", past, value=1)])  # an old time stamp
    ingest_until_idle(settings)
    assert profile(settings, "r1")["consent"] == "1"


async def test_consent_requests_are_checked(settings) -> None:
    ensure_topics(settings)
    async with client_for(settings) as c:
        url = "/v1/residents/r7/consent"
        assert (await c.put(url, json={"personalisation": True},
                            headers=OPERATOR)).status_code == 403
        assert (await c.put(url, json={"personalisation": True},
                            headers={"X-API-Key": ""})).status_code == 401
        for bad in ({"personalisation": "yes"}, {"personalisation": 1}, {},
                    {"personalisation": True, "name": "Ada"}, [True], "true"):
            resp = await c.put(url, json=bad)
            assert resp.status_code == 422, (bad, resp.status_code)
        for rid in ("r7*", "a" * 65, "r7}:x", "..", "r 7"):
            resp = await c.put(f"/v1/residents/{quote(rid, safe='')}/consent",
                               json={"personalisation": True})
            assert resp.status_code in (404, 422), rid
        deep = b'{"personalisation":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        assert 400 <= (await c.put(url, content=deep,
                                   headers={"Content-Type": "application/json"})
                       ).status_code < 500
        ok = await c.put(url, json={"personalisation": True}, headers=ADMIN)
        assert ok.status_code == 200 and ok.json()["effective"] is True
    # only the accepted change is audited: by key fingerprint and keyed reference
    from bouquet.privacy.audit import AuditLog, api_actor, resident_ref

    records = AuditLog(settings).tail(5)
    assert [(r["action"], r["actor"], r["target"], r["detail"]["value"]) for r in records] \
        == [("consent", api_actor("admin", ADMIN["X-API-Key"], settings.server_secret),
             f"resident:{resident_ref('r7', settings.pseudonym_secret)[:16]}", 1)]


async def test_erasure_over_http_reaches_redis_and_every_published_version(settings) -> None:
    ensure_topics(settings)
    rid = "rEraseHttp9"
    model = small_model(CATALOG, prefix="rEraseHttp")  # residents rEraseHttp0 … 49
    publish(settings, model, model_version="v1")
    publish(settings, model, model_version="v2")  # v1 is kept as `previous`
    set_profile(settings, rid, consent="1", neighbourhood="gare")
    push_recent(settings, rid, ("use", "bike-share"), ("click", "tram"))
    produce_events(settings, [event(rid, "use"), event(rid, "subscribe")])
    ingest_until_idle(settings)  # real-time state, active sets, last contact
    client = redis_client(settings)
    assert redis_occurrences(client, rid)
    async with client_for(settings) as c:
        assert (await c.get(f"/v1/residents/{rid}/bundles")).json()["personalised"] is True
        exported = await c.get(f"/v1/residents/{rid}/export", headers=ADMIN)
        assert exported.status_code == 200
        document = exported.json()
        assert [e["type"] for e in document["events"]] == ["use", "subscribe"]
        assert document["realtime"]["profile"]["consent"] == "1"
        assert {r["pointer"] for r in document["recommendations"]} == {"current"}
        assert len(document["recommendations"][0]["bundles"]) > 0
        assert document["consent"]["personalisation"] is True
        assert document["realtime"]["counted_active_in"]
        assert (await c.get(f"/v1/residents/{rid}/export", headers=APP)).status_code == 403
        assert (await c.delete(f"/v1/residents/{rid}", headers=APP)).status_code == 403
        assert (await c.delete(f"/v1/residents/{rid}",
                               headers=OPERATOR)).status_code == 403

        erased = await c.delete(f"/v1/residents/{rid}", headers=ADMIN)
        assert erased.status_code == 200, erased.text
        report = erased.json()
        assert report["published_lists_deleted"] == 4  # b and s lists in v1 and v2
        after = (await c.get(f"/v1/residents/{rid}/bundles")).json()
        assert after["personalised"] is False and "nothing is known" in after["notice"]
        again = await c.delete(f"/v1/residents/{rid}", headers=ADMIN)  # idempotent
        assert again.status_code == 200 and again.json()["published_lists_deleted"] == 0
        audit = (await c.get("/v1/admin/audit", headers=OPERATOR)).json()
        assert [r["action"] for r in audit["records"][:3]] == ["erasure", "erasure", "export"]
        assert all(r["actor"].startswith("api:admin:key-") for r in audit["records"][:3])
        assert (await c.get("/v1/admin/audit", headers=APP)).status_code == 403
        empty = (await c.get(f"/v1/residents/{rid}/export", headers=ADMIN)).json()
    # Redis: nothing left that names the resident (the audit stream names a keyed reference)
    assert redis_occurrences(client, rid) == []
    assert empty["events"] == [] and empty["erasure"]["erased"] is True
    assert empty["realtime"]["profile"] == {} and empty["realtime"]["keys"] == []
    # the erase event is on its way to the log; once ingested, readers no longer see them
    assert any(e["type"] == "erase" and e["resident_id"] == rid for e in topic_events(settings))
    ingest_until_idle(settings)
    from bouquet.core.eventlog import read_events

    assert rid not in set(read_events(settings.event_log_path)["resident_id"])
    assert redis_occurrences(client, rid) == []
    client.close()


async def test_hostile_ids_never_reach_the_keyspace(settings) -> None:
    client = redis_client(settings)
    client.set(Keys(settings.redis_key_prefix).profile("victim"), "x")
    before = all_keys(client)
    async with client_for(settings) as c:
        for rid in ("*", "victim*", "v?ctim", "[a-z]*", "victim}:profile", "%2A", "{victim}",
                    "a" * 65, "r1\r\nFLUSHALL", "\u00e9"):
            path = quote(rid, safe="")
            for method, url in (("DELETE", f"/v1/residents/{path}"),
                                ("GET", f"/v1/residents/{path}/export")):
                resp = await c.request(method, url, headers=ADMIN)
                assert resp.status_code in (404, 405, 422), (rid, method, resp.status_code)
    # the admin key's token bucket (serving/rate_limit.py) is the only key the calls made
    bucket = list(client.scan_iter(match=f"{settings.redis_key_prefix}rl:*"))
    assert len(bucket) == 1
    assert all_keys(client) - before == set(bucket)
    assert client.exists(Keys(settings.redis_key_prefix).profile("victim"))
    client.close()


async def test_bodies_over_the_cap_are_refused_before_they_are_read(settings) -> None:
    small = settings.model_copy(update={"serving_max_batch": 2, "max_event_bytes": 512})
    async with client_for(small) as c:
        big = b"x" * 1025  # the consent body is a few dozen bytes: 1 KB is its cap
        resp = await c.put("/v1/residents/r1/consent", content=big,
                           headers={"Content-Type": "application/json"})
        assert resp.status_code == 413 and "1024" in resp.json()["detail"]

        async def chunks():
            for _ in range(100):
                yield b"y" * 1024

        chunked = await c.post("/v1/events", content=chunks(),
                               headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
