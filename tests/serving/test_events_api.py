"""POST /v1/events: the consumer's validation, acks=all, 503 when the broker is gone, and
the whole loop — intake → broker → consumer → Redis → the next answer changes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer

from bouquet.core.catalog import load_catalog
from bouquet.localstack import LocalStack, ensure_topics, free_port, kafka_ready
from bouquet.localstack import resolve_broker_binary as broker_binary
from tests.serving.support import client_for, ids, publish, set_profile, small_model

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
CATALOG = load_catalog()


def event(rid: str = "r1", **fields) -> dict:
    base = {"schema_version": 1, "event_id": f"t-{uuid.uuid4().hex}", "resident_id": rid,
            "type": "use", "service_id": "bike-share",
            "ts": datetime.now(UTC).isoformat(), "channel": "app"}
    base.update(fields)
    return base


def consumed(settings, n: int, timeout_s: float = 15) -> list[dict]:
    consumer = KafkaConsumer(settings.topic_events, bootstrap_servers=settings
                             .kafka_bootstrap_servers, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000))
    out = []
    for record in consumer:
        out.append(json.loads(record.value))
        if len(out) >= n:
            break
    consumer.close()
    return out


async def test_valid_events_are_produced_and_acknowledged(settings) -> None:
    ensure_topics(settings)
    one, batch = event("r1"), [event("r2", type="click", service_id=None,
                                     bundle_id="maas-urban"), event("r3")]
    async with client_for(settings) as c:
        single = await c.post("/v1/events", json=one)
        many = await c.post("/v1/events", json=batch)
    assert single.status_code == 202 and single.json() == {"accepted": 1}
    assert many.status_code == 202 and many.json() == {"accepted": 2}
    seen = consumed(settings, 3)
    assert {e["event_id"] for e in seen} == {one["event_id"], *(e["event_id"] for e in batch)}


async def test_invalid_events_are_refused_with_reasons_and_none_is_produced(settings) -> None:
    small = settings.model_copy(update={"serving_max_batch": 3})
    async with client_for(small) as c:
        bad = await c.post("/v1/events", json=[event(), event(service_id="teleporter"),
                                                event(type="launch"), event(resident_id="a b")])
        assert bad.status_code == 422 and "limit is 3" in bad.json()["detail"]
        bad = await c.post("/v1/events", json=[event(), event(service_id="teleporter"),
                                                event(context={"email": "a@b.example"})])
        body = bad.json()
        assert bad.status_code == 422 and "none was accepted" in body["detail"]
        assert [(p["index"], p["reason"]) for p in body["problems"]] == [
            (1, "unknown_service"), (2, "personal_data")]
        assert (await c.post("/v1/events", content=b"{not json")).status_code == 422
        assert (await c.post("/v1/events", json=[])).status_code == 422
        huge = await c.post("/v1/events", content=b"[" + b" " * (3 * 8192 + 10) + b"]")
        assert huge.status_code == 413
        future = await c.post("/v1/events", json=event(ts="2099-01-01T00:00:00+00:00"))
        assert future.json()["problems"][0]["reason"] == "future_timestamp"


@pytest.fixture
def private_broker(make_settings):
    """A broker of this test's own, to stop while the API is running."""
    port = free_port()
    proc = subprocess.Popen([broker_binary(), "broker", "--listener-url",
                             f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
                             f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{port}",
                             serving_intake_timeout_s=2.0)
    deadline = time.monotonic() + 30
    while not kafka_ready(settings, 1.0)[0]:
        assert time.monotonic() < deadline, "private broker did not start"
        time.sleep(0.2)
    ensure_topics(settings)
    try:
        yield settings, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_broker_down_answers_503_with_retry_after(private_broker) -> None:
    settings, broker = private_broker
    async with client_for(settings) as c:
        assert (await c.post("/v1/events", json=event())).status_code == 202
        broker.kill()
        broker.wait(timeout=10)
        started = time.monotonic()
        down = await c.post("/v1/events", json=[event(), event()])
        assert down.status_code == 503
        assert down.headers["Retry-After"].isdigit()
        assert "nothing was accepted" in down.json()["detail"]
        assert time.monotonic() - started < 15
        # The API itself stays up, and recommendations are unaffected by the broker.
        assert (await c.get("/healthz")).status_code == 200


async def test_an_event_sent_over_http_changes_the_next_answer(settings) -> None:
    """Intake → Kafka → the real consumer → Redis → fold-in: the loop, end to end."""
    from bouquet.streaming.consumer import IngestConsumer, IngestOptions

    LocalStack(settings)  # nothing to start: the session stack runs; topics below
    ensure_topics(settings)
    publish(settings, small_model(CATALOG))
    set_profile(settings, "r6", consent="1", neighbourhood="centre")
    options = IngestOptions.from_settings(settings, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, batch_min_ms=20,
                                          batch_max_ms=100, install_signal_handlers=False)
    consumer = IngestConsumer(settings, CATALOG, options)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        async with client_for(settings) as c:
            before = (await c.get("/v1/residents/r6/bundles", params={"k": 24})).json()
            target = CATALOG.bundle_by_id[ids(before)[-1]]
            service = target.services[0]
            sent = await c.post("/v1/events", json=[event("r6", service_id=service)
                                                    for _ in range(4)])
            assert sent.status_code == 202
            deadline = time.monotonic() + 30
            while True:
                after = (await c.get("/v1/residents/r6/bundles", params={"k": 24})).json()
                if after["reranked"] or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    finally:
        consumer.stop()
        thread.join(timeout=30)
    assert after["reranked"], "the events never reached the resident's recent list"
    assert ids(after).index(target.id) < ids(before).index(target.id)


async def test_a_large_batch_is_validated_off_the_event_loop(settings, monkeypatch) -> None:
    """Screening a large batch is CPU work: it must not run on the thread of the event loop,
    which would stall every other request of the process meanwhile."""
    from bouquet.serving import routes_events

    threads: set[int] = set()
    real = routes_events.parse_event

    def recording(*args, **kwargs):
        threads.add(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(routes_events, "parse_event", recording)
    batch = [event(f"r{i}", context={"note": "x" * 200}) for i in range(100)]
    batch[-1]["service_id"] = "teleporter"  # refused: nothing is produced
    async with client_for(settings) as c:
        answer = await c.post("/v1/events", json=batch)
    assert answer.status_code == 422
    assert threads and threading.get_ident() not in threads


async def test_an_app_key_cannot_erase_and_its_declarations_are_audited(settings) -> None:
    """An ``erase`` event forgets a resident everywhere: from an ``app`` key the batch is
    refused (403) and nothing is produced or erased; an ``admin`` key may send it. Consent
    and profile events stay open to apps, and each is audited with the key's fingerprint."""
    from bouquet.core.keys import Keys
    from bouquet.privacy.audit import AuditLog, api_actor, resident_ref
    from tests.serving.support import ADMIN, redis_client

    ensure_topics(settings)
    set_profile(settings, "r7", neighbourhood="centre", consent="1")
    erase = event("r7", type="erase", service_id=None, channel="system")
    async with client_for(settings) as c:
        refused = await c.post("/v1/events", json=[event("r8"), erase])
        assert refused.status_code == 403
        assert [p["index"] for p in refused.json()["problems"]] == [1]
        declared = await c.post("/v1/events", json=[
            event("r7", type="consent", service_id=None, value=1),
            event("r9", type="profile", service_id=None, context={"age_band": "26-40"})])
        assert declared.status_code == 202
        assert (await c.post("/v1/events", json=erase, headers=ADMIN)).status_code == 202
    produced = consumed(settings, 3)
    assert sorted(e["type"] for e in produced) == ["consent", "erase", "profile"]  # no use
    client = redis_client(settings)
    assert client.hget(Keys(settings.redis_key_prefix).profile("r7"), "consent") == b"1"
    client.close()
    records = AuditLog(settings).tail(10)
    assert [(r["action"], r["target"]) for r in records] == [
        ("consent", f"resident:{resident_ref('r7', settings.pseudonym_secret)[:16]}"),
        ("profile", f"resident:{resident_ref('r9', settings.pseudonym_secret)[:16]}")]
    assert {r["actor"] for r in records} == {api_actor("app", "dev-app-key",
                                                       settings.server_secret)}
    assert records[1]["detail"]["attributes"] == ["age_band"]


async def test_the_intake_refuses_events_older_than_their_channels_limit(settings) -> None:
    from datetime import timedelta

    from bouquet.core.settings import DEFAULT_MAX_PAST_SKEW_S

    limited = settings.model_copy(update={"max_past_skew_s": DEFAULT_MAX_PAST_SKEW_S})
    old = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    async with client_for(limited) as c:
        refused = await c.post("/v1/events", json=[event(ts=old), event(ts=old,
                                                                         channel="partner")])
    assert refused.status_code == 422
    assert [(p["index"], p["reason"]) for p in refused.json()["problems"]] == [
        (0, "stale_timestamp")]
