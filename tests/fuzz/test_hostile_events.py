"""Generated hostile events, through the real broker and the real consumer: each one ends in
the dead-letter topic with the contract's reason, the consumer never stops, and the valid
events around them are all logged and applied.

And the same generated inputs at the HTTP intake: never a 5xx, never a ``202`` for one of
them, nothing produced from a batch that contains one."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer

from bouquet.core.eventlog import read_events
from bouquet.localstack import ensure_topics
from bouquet.serving.app import create_app
from bouquet.streaming.producer import EventProducer
from tests.fuzz.strategies import hostile_events, oracle, valid_events
from tests.privacy.helpers import ingest_until_idle
from tests.serving.support import APP

SLOW_EXAMPLES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                 HealthCheck.data_too_large, HealthCheck.large_base_example]


@given(st.lists(hostile_events(), min_size=1, max_size=400))
@hsettings(max_examples=300, deadline=None, suppress_health_check=SLOW_EXAMPLES)
def test_every_hostile_mutation_is_refused_by_the_contract(inputs) -> None:
    """No generated mutation slips through validation (the contract itself holds)."""
    for raw, mutation in inputs:
        assert oracle(raw) is not None, (mutation, raw[:300] if raw else raw)


def dead_letters(settings, timeout_s: float = 6) -> list[tuple[bytes, dict[str, str]]]:
    consumer = KafkaConsumer(settings.topic_dlq, bootstrap_servers=settings
                             .kafka_bootstrap_servers, auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000))
    out = [(r.value, {k: v.decode() for k, v in r.headers}) for r in consumer]
    consumer.close()
    return out


@pytest.mark.timeout(120)
def test_invalid_utf8_inside_a_json_string_is_a_dead_letter_not_a_crash(settings) -> None:
    """Found by the property test below: the consumer's fast path let UnicodeDecodeError
    escape, so one such message stopped ingestion at every restart (fixed in d1408b7)."""
    poison = (b'{"schema_version":1,"event_id":"p1","resident_id":"r1","type":"use",'
              b'"service_id":"bike-share","ts":"2026-01-01T00:00:00Z","ch\xffannel":"app"}')
    good = {"schema_version": 1, "event_id": "ok-after-poison", "resident_id": "r2",
            "type": "use", "service_id": "bike-share", "ts": "2026-01-01T00:00:00+00:00",
            "channel": "app"}
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        producer.send_raw(poison, key=b"r1")
        producer.send(good)
        producer.flush(30)
    stats = ingest_until_idle(settings)
    assert stats.dead_letters == {"bad_encoding": 1}
    assert [h["reason"] for _, h in dead_letters(settings)] == ["bad_encoding"]
    assert set(read_events(settings.event_log_path)["event_id"]) == {"ok-after-poison"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hostile_events_end_in_the_dlq_and_valid_neighbours_are_unaffected(
        make_settings) -> None:
    checked = {"bad": 0, "good": 0, "mutations": set()}
    hostile = hostile_events()

    # at least 40 of each per example, interleaved by the seed: three examples always try
    # more than 100 hostile messages (a mixed list drawn by one_of may hold few)
    @given(st.lists(valid_events(), min_size=40, max_size=100),
           st.lists(hostile, min_size=40, max_size=100), st.integers(0, 2**32 - 1))
    # no shrinking: every example is a whole pipeline run; a failure prints its inputs
    @hsettings(max_examples=3, deadline=None, suppress_health_check=SLOW_EXAMPLES,
               phases=[Phase.explicit, Phase.generate], print_blob=True)
    def run(valid: list, hostile_items: list, seed: int) -> None:
        items = [("ok", e) for e in valid] + [("bad", h) for h in hostile_items]
        random.Random(seed).shuffle(items)
        settings = make_settings()  # fresh topics, group, key prefix, log for each example
        settings = settings.model_copy(update={
            "event_log_dir": settings.state_dir / f"log-{settings.topic_events}"})
        ensure_topics(settings)
        good, bad = [], []
        with EventProducer(settings) as producer:
            for label, item in items:
                if label == "ok":
                    producer.send(item)
                    good.append(item)
                else:
                    raw, mutation = item
                    producer.send_raw(raw, key=random.Random(seed).randbytes(4))
                    bad.append((raw, mutation))
            producer.send_raw(None, key=b"tombstone")  # kafka-python sends a null value
            bad.append((None, "tombstone"))
            producer.flush(30)
        stats = ingest_until_idle(settings)  # returns normally: no crash
        letters = dead_letters(settings)
        assert len(letters) == len(bad) == sum(stats.dead_letters.values())
        by_bytes: dict[bytes, list[str]] = {}
        for value, headers in letters:
            by_bytes.setdefault(value or b"", []).append(headers["reason"])
            assert headers["detail"] and headers["source_offset"].isdigit()
        for raw, mutation in bad:
            reasons = by_bytes.get(raw or b"")
            assert reasons, (mutation, raw)
            assert oracle(raw) in reasons, (mutation, raw[:200] if raw else raw, reasons)
        logged = set(read_events(settings.event_log_path)["event_id"])
        assert logged == {e["event_id"] for e in good}
        assert stats.applied == len(good)
        checked["bad"] += len(bad)
        checked["good"] += len(good)
        checked["mutations"] |= {m for _, m in bad}

    run()
    assert checked["bad"] > 100 and len(checked["mutations"]) >= 15, checked


@pytest.fixture
def client(settings):
    ensure_topics(settings)
    with TestClient(create_app(settings), headers=APP, raise_server_exceptions=False) as c:
        yield c


def test_hostile_events_at_the_http_intake_are_refused_and_nothing_is_produced(
        client, settings) -> None:
    @given(st.lists(hostile_events(), min_size=1, max_size=3), valid_events())
    @hsettings(max_examples=150, deadline=None, suppress_health_check=SLOW_EXAMPLES)
    def check(bad, good) -> None:
        for raw, mutation in bad:
            alone = client.post("/v1/events", content=raw or b"",
                                headers={"Content-Type": "application/json"})
            assert 400 <= alone.status_code < 500, (mutation, alone.status_code, alone.text)
        items = [raw for raw, _ in bad if raw and _is_json_object(raw)]
        if items:  # a batch of one good event and the bad ones, bytes as generated
            body = b"[" + b",".join([json.dumps(good).encode(), *items]) + b"]"
            mixed = client.post("/v1/events", content=body,
                                headers={"Content-Type": "application/json"})
            assert mixed.status_code in (413, 422), (mixed.status_code, mixed.text[:300])
            if mixed.status_code == 422 and "problems" in mixed.json():
                assert {p["index"] for p in mixed.json()["problems"]} == \
                    set(range(1, len(items) + 1))

    check()
    consumer = KafkaConsumer(settings.topic_events, bootstrap_servers=settings
                             .kafka_bootstrap_servers, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)
    assert list(consumer) == []  # no batch holding a bad event was produced, even in part
    consumer.close()


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
