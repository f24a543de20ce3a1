"""End to end against the real broker and Redis: exactly once, dead letters, rebalance,
and SIGKILL at random moments."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import COLUMNS, read_events, read_table
from bouquet.core.events import parse_event
from bouquet.core.keys import Keys
from bouquet.core.settings import Settings
from bouquet.privacy.erasure import ErasureCascade
from bouquet.streaming.consumer import IngestConsumer, IngestOptions, IngestStats
from bouquet.streaming.synthetic import StreamSpec, encode, stream
from tests.streaming.ingest_helpers import (
    ReferenceState,
    dump_state,
    late_event_ids,
    produce,
    start_ingest,
    wait_for_text,
)
from tests.streaming.test_ingest_batch import MALFORMED

CATALOG = load_catalog()
COMPARED = [c for c in COLUMNS if c != "ingested_at"]
ASSIGNED = "assigned ['"  # the log line of a non-empty assignment


def wait_for_files(root: Path, count: int, timeout_s: float = 60) -> bool:
    """Wait until the event log under ``root`` holds at least ``count`` Parquet files."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(list(root.rglob("*.parquet"))) >= count:
            return True
        time.sleep(0.02)
    return False


def run_in_process(settings: Settings, erasure_hooks: bool = False,
                   **options: object) -> IngestStats:
    """The consumer in this process; ``erasure_hooks``: wired as ``bouquet ingest`` wires
    it (register, published lists, late events dropped)."""
    opts = IngestOptions.from_settings(settings, idle_seconds=2.0, session_timeout_ms=6000,
                                       heartbeat_interval_ms=1000, log_every_s=0,
                                       install_signal_handlers=False)
    for name, value in options.items():
        setattr(opts, name, value)
    if not erasure_hooks:
        return IngestConsumer(settings, CATALOG, opts).run()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return IngestConsumer(settings, CATALOG, opts,
                              erasure=ErasureCascade(settings, client)).run()
    finally:
        client.close()


def expected_log(events: list[dict]) -> pd.DataFrame:
    """What read_events must return: first copy of each event_id, erasures applied by the
    rule of core.eventlog (an erased resident's events up to the erasure vanish)."""
    rows, seen = [], set()
    for event in events:
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            rows.append(parse_event(json.dumps(event)).to_record())
    frame = pd.DataFrame(rows)
    erased = frame[frame["type"] == "erase"].groupby("resident_id")["ts"].max()
    if erased.empty:
        return frame
    cutoff = frame["resident_id"].map(erased)
    return frame[(cutoff.isna() | (frame["ts"] > cutoff)).to_numpy()]


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[COMPARED].sort_values("event_id").reset_index(drop=True)
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["schema_version"] = out["schema_version"].astype("int64")
    return out.astype({c: object for c in COMPARED if c not in ("ts", "value",
                                                                  "schema_version")})


def assert_log_exact(settings: Settings, events: list[dict], drop_late: bool = False) -> None:
    """Readers see exactly the expected events; the raw rows hold every event once or more
    (erased rows included: compaction removes them) — but for the late events of erased
    residents when the consumer ran with erasure hooks (``drop_late``: ``bouquet ingest``)."""
    got = canonical(read_events(settings.event_log_path))
    want = canonical(expected_log(events))
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    raw = read_table(settings.event_log_path, columns=["event_id"])["event_id"].to_pylist()
    unique = {e["event_id"] for e in events}
    if drop_late:
        unique -= late_event_ids(events)
    assert set(raw) == unique  # counting raw rows: nothing lost
    assert len(raw) >= len(unique)


@pytest.fixture
def client(settings: Settings):
    c = redis.Redis.from_url(settings.redis_url)
    yield c
    c.close()


def test_hundred_thousand_events_each_once_and_counters_exact(settings: Settings,
                                                              client) -> None:
    events = list(stream(CATALOG, StreamSpec(events=100_000, residents=5000, days=3)))
    produce(settings, [encode(e) for e in events])
    stats = run_in_process(settings)
    unique = len({e["event_id"] for e in events})
    assert stats.received == 100_000
    assert stats.applied == unique and stats.duplicates == 100_000 - unique
    assert stats.dead_letters == {}
    raw_rows = read_table(settings.event_log_path, columns=["event_id"]).num_rows
    # re-sent copies may reach the log when they fall in another batch (readers dedup)
    assert unique <= raw_rows <= 100_000
    assert_log_exact(settings, events)
    expected = ReferenceState(CATALOG, settings.redis_key_prefix).apply_all(events).dump()
    assert dump_state(client, settings.redis_key_prefix) == expected


def test_each_malformed_input_lands_in_the_dlq_with_its_reason(settings: Settings,
                                                              client) -> None:
    valid = list(stream(CATALOG, StreamSpec(events=len(MALFORMED) + 1, residents=5,
                                            resend_rate=0)))
    messages, expected = [], []
    for i, (_, raw, reason) in enumerate(MALFORMED):
        messages.append(encode(valid[i]))
        messages.append((b"r-bad", raw))
        expected.append((reason, raw))
    messages.append(encode(valid[-1]))
    produce(settings, messages)
    stats = run_in_process(settings)
    assert stats.received == len(messages)
    assert stats.dead_letters == dict(Counter(r for r, _ in expected))

    letters = []
    dlq = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                        auto_offset_reset="earliest", enable_auto_commit=False)
    parts = [TopicPartition(settings.topic_dlq, p) for p in range(settings.topic_partitions)]
    dlq.assign(parts)
    deadline = time.monotonic() + 20
    while len(letters) < len(expected) and time.monotonic() < deadline:
        for records in dlq.poll(timeout_ms=500).values():
            letters.extend(records)
    dlq.close()
    assert len(letters) == len(expected)
    source = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                           enable_auto_commit=False)
    got = []
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["source_topic"] == settings.topic_events and headers["detail"]
        tp = TopicPartition(settings.topic_events, int(headers["source_partition"]))
        source.assign([tp])
        source.seek(tp, int(headers["source_offset"]))
        original = []
        while not original:
            original = source.poll(timeout_ms=1000).get(tp, [])
        assert (original[0].value or b"") == letter.value  # the original bytes, untouched
        got.append((headers["reason"], original[0].value))
    source.close()
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    counts = {k.decode(): int(v) for k, v in
              client.hgetall(Keys(settings.redis_key_prefix).dlq_counts()).items()}
    assert counts == dict(Counter(r for r, _ in expected))
    assert_log_exact(settings, valid)


@pytest.mark.slow
def test_a_second_consumer_joining_mid_stream_loses_and_doubles_nothing(
        make_settings, tmp_path: Path) -> None:
    settings = make_settings(topic_partitions=4)
    # erasures with late events after them: the CLI's erasure hooks drop those mid-rebalance
    events = list(stream(CATALOG, StreamSpec(events=40_000, residents=3000, seed=21,
                                             erase_rate=0.03)))
    assert late_event_ids(events)
    produce(settings, [encode(e) for e in events[:20_000]])
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    stats_files = [tmp_path / "a.json", tmp_path / "b.json"]
    # A idles out later than B so that it is still there when B joins, even on a busy box
    a = start_ingest(settings, logs[0], "--until-idle", "--idle-seconds", "8",
                     "--stats-json", str(stats_files[0]), batch_max_events=1000)
    try:
        assert wait_for_text(logs[0], ASSIGNED), logs[0].read_text()
        b = start_ingest(settings, logs[1], "--until-idle", "--idle-seconds", "4",
                         "--stats-json", str(stats_files[1]), batch_max_events=1000)
        try:
            # the join waits for A to rejoin at its next poll: two minutes on a loaded machine
            assert wait_for_text(logs[1], ASSIGNED, timeout_s=120), logs[1].read_text()
            produce(settings, [encode(e) for e in events[20_000:]])
            assert b.wait(timeout=120) == 0, logs[1].read_text()
        finally:
            b.kill()
        assert a.wait(timeout=120) == 0, logs[0].read_text()
    finally:
        a.kill()
    first, second = (json.loads(p.read_text()) for p in stats_files)
    assert first["rebalances"] >= 1 and second["received"] > 0 and first["received"] > 0
    assert first["received"] + second["received"] >= len(events)
    assert_log_exact(settings, events, drop_late=True)
    client = redis.Redis.from_url(settings.redis_url)
    expected = ReferenceState(CATALOG, settings.redis_key_prefix,
                              drop_late=True).apply_all(events).dump()
    assert dump_state(client, settings.redis_key_prefix) == expected
    client.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_restart_equals_a_clean_run(
        make_settings, tmp_path: Path) -> None:
    rng = random.Random(4)
    clean = make_settings(event_log_dir=tmp_path / "clean-log")
    # erasures with late events after them: dropped alike by the clean and the killed runs
    events = list(stream(CATALOG, StreamSpec(events=40_000, residents=3000, seed=33,
                                             erase_rate=0.03)))
    assert late_event_ids(events)
    produce(clean, [encode(e) for e in events])
    run_in_process(clean, erasure_hooks=True)  # as the CLI the crashy runs use

    crashy = make_settings(topic_events=clean.topic_events, topic_dlq=clean.topic_dlq,
                           event_log_dir=tmp_path / "crash-log",
                           state_dir=tmp_path / "crash-state")  # its own erasure register
    log_path = tmp_path / "ingest.log"
    kills = 4
    for _ in range(kills):
        written = len(list(crashy.event_log_path.rglob("*.parquet")))
        proc = start_ingest(crashy, log_path, batch_max_events=rng.choice((500, 1000, 2000)),
                            session_timeout_ms=3000)
        try:
            # kill at a random moment once this run has written something (so every kill
            # lands mid-replay even on a busy machine)
            assert wait_for_files(crashy.event_log_path, written + 1), log_path.read_text()
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            proc.kill()
    stats_path = tmp_path / "final.json"
    final = start_ingest(crashy, log_path, "--until-idle", "--idle-seconds", "3",
                         "--stats-json", str(stats_path), session_timeout_ms=3000)
    assert final.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    resumed = json.loads(stats_path.read_text())["received"]
    assert resumed < len(events), "the killed runs made no progress"

    pd.testing.assert_frame_equal(canonical(read_events(crashy.event_log_path)),
                                  canonical(read_events(clean.event_log_path)))
    assert_log_exact(crashy, events, drop_late=True)
    client = redis.Redis.from_url(clean.redis_url)
    clean_state = dump_state(client, clean.redis_key_prefix)
    assert dump_state(client, crashy.redis_key_prefix) == clean_state
    assert clean_state == ReferenceState(CATALOG, clean.redis_key_prefix,
                                         drop_late=True).apply_all(events).dump()
    client.close()
