"""A small simulation and a small replay go through the real broker and come back intact."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import pyarrow.compute as pc
from kafka import KafkaConsumer

from bouquet.core.catalog import load_catalog
from bouquet.core.events import check_against_catalog, parse_event
from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics
from bouquet.simulation.runner import replay_valleybike, simulate

END = date(2025, 6, 2)


def _read_back(settings: Settings, expected: int, timeout_s: float = 60) -> list:
    consumer = KafkaConsumer(settings.topic_events,
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             group_id=settings.consumer_group, auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=6000,
                             heartbeat_interval_ms=1000)
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_simulation_through_kafka_is_rate_limited_keyed_and_complete(settings: Settings,
                                                                      tmp_path: Path) -> None:
    ensure_topics(settings)
    reference, memory = simulate(settings, residents=250, weeks=3, seed=4, end=END,
                                 to="memory", progress=False, save_residents=False)
    rate = 2500.0
    started = time.monotonic()
    summary, _ = simulate(settings, residents=250, weeks=3, seed=4, end=END, to="kafka",
                          rate=rate, progress=False, residents_path=tmp_path / "r.parquet",
                          hidden_path=tmp_path / "h.npz")
    elapsed = time.monotonic() - started
    assert summary.events == reference.events > 1000
    assert elapsed >= 0.9 * summary.events / rate  # paced, not flooded
    records = _read_back(settings, summary.events)
    assert len(records) == summary.events
    catalog = load_catalog()
    events = []
    for record in records:
        event = parse_event(record.value)
        check_against_catalog(event, catalog)
        assert record.key.decode() == event.resident_id  # keyed by resident
        events.append((record.partition, record.offset, event))
    sent = set(memory.table()["event_id"].to_pylist())
    assert {e.event_id for _, _, e in events} == sent  # same seed, same events
    # one resident's events are in time order on its partition
    last: dict[str, object] = {}
    for _, _, event in sorted(events, key=lambda x: (x[0], x[1])):
        assert event.ts >= last.get(event.resident_id, event.ts)
        last[event.resident_id] = event.ts
    assert (tmp_path / "r.parquet").exists() and (tmp_path / "h.npz").exists()


def test_replay_through_kafka(settings: Settings, shared_data: Path) -> None:
    ensure_topics(settings)
    path = shared_data / "valleybike" / "trips.tsv.gz"
    summary, _ = replay_valleybike(settings, path, to="kafka", limit=1500, progress=False)
    records = _read_back(settings, summary.events)
    assert len(records) == summary.events == summary.uses + summary.profiles
    values = [json.loads(r.value) for r in records]
    uses = [v for v in values if v["type"] == "use"]
    assert len(uses) == summary.counts.kept
    assert {v["service_id"] for v in uses} == {"bike-share"}
    assert all(r.key.decode() == v["resident_id"] for r, v in zip(records, values, strict=True))
    # time compression: a speed-up paces the sends by the trips' own rhythm
    _, memory = replay_valleybike(settings, path, to="memory", limit=40, progress=False)
    table = memory.table()
    span_s = (pc.max(table["ts"]).as_py() - pc.min(table["ts"]).as_py()).total_seconds()
    speedup = span_s / 1.5  # the first 40 trips in about 1.5 s
    started = time.monotonic()
    replay_valleybike(settings, path, to="kafka", limit=40, speedup=speedup, progress=False)
    assert time.monotonic() - started >= 1.2
