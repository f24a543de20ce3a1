"""Operations: SIGTERM finishes and commits, an unreachable Redis commits nothing, a Redis
outage within the retry bound is ridden out, metrics are served."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import read_table
from bouquet.core.keys import Keys
from bouquet.localstack import free_port
from bouquet.streaming import metrics
from bouquet.streaming.consumer import IngestError
from bouquet.streaming.synthetic import StreamSpec, encode, stream
from tests.streaming.ingest_helpers import (
    ReferenceState,
    dump_state,
    produce,
    start_ingest,
    wait_for_text,
)
from tests.streaming.test_ingest_pipeline import (
    ASSIGNED,
    assert_log_exact,
    run_in_process,
    wait_for_files,
)

CATALOG = load_catalog()


def test_sigterm_writes_and_commits_what_was_read(make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    events = list(stream(CATALOG, StreamSpec(events=40_000, residents=2000, seed=5,
                                             resend_rate=0)))
    produce(settings, [encode(e) for e in events])
    log_path, first_stats = tmp_path / "first.log", tmp_path / "first.json"
    proc = start_ingest(settings, log_path, "--stats-json", str(first_stats),
                        batch_max_events=1000)
    try:
        assert wait_for_text(log_path, ASSIGNED)
        assert wait_for_files(settings.event_log_path, 1)  # mid-stream
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        proc.kill()
    first_run = json.loads(first_stats.read_text())
    first = first_run["received"]
    # every record read was written (once, but for late data of erased residents, dropped)
    # and committed: the next run starts after them
    assert read_table(settings.event_log_path).num_rows == first - first_run["erased_late"]
    second_stats = tmp_path / "second.json"
    rest = start_ingest(settings, tmp_path / "second.log", "--until-idle", "--idle-seconds",
                        "2", "--stats-json", str(second_stats))
    assert rest.wait(timeout=120) == 0
    second = json.loads(second_stats.read_text())["received"]
    assert 0 < first < len(events) and first + second == len(events)
    assert_log_exact(settings, events, drop_late=True)


def test_unreachable_redis_fails_without_committing(make_settings) -> None:
    settings = make_settings()
    events = list(stream(CATALOG, StreamSpec(events=3000, residents=300, seed=8)))
    produce(settings, [encode(e) for e in events])
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(IngestError, match="redis"):
        run_in_process(dead, retry_attempts=2, retry_base_s=0.05)
    # nothing was committed: a healthy run reads everything again, and the result is exact
    stats = run_in_process(settings)
    assert stats.received == len(events)
    assert_log_exact(settings, events)
    client = redis.Redis.from_url(settings.redis_url)
    expected = ReferenceState(CATALOG, settings.redis_key_prefix).apply_all(events).dump()
    assert dump_state(client, settings.redis_key_prefix) == expected
    client.close()


def _redis_server(port: int, data: Path) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                             "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def test_a_redis_outage_within_the_retry_bound_is_ridden_out(make_settings,
                                                            tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    server = _redis_server(port, tmp_path / "redis")
    try:
        events = list(stream(CATALOG, StreamSpec(events=20_000, residents=1500, seed=9)))
        produce(settings, [encode(e) for e in events[:5000]])
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(stats=run_in_process(
            settings, idle_seconds=4.0, retry_attempts=8, retry_base_s=0.25)))
        runner.start()
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 60
        while not client.exists(Keys(settings.redis_key_prefix).last_contact()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.send_signal(signal.SIGTERM)  # clean shutdown: AOF flushed
        server.wait(timeout=10)
        produce(settings, [encode(e) for e in events[5000:]])
        time.sleep(2.0)
        server = _redis_server(port, tmp_path / "redis")
        runner.join(timeout=120)
        assert "stats" in result, "the consumer did not survive the outage"
        assert result["stats"].retries > 0
        assert_log_exact(settings, events)
        expected = ReferenceState(CATALOG, settings.redis_key_prefix).apply_all(events).dump()
        assert dump_state(redis.Redis(port=port), settings.redis_key_prefix) == expected
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_metrics_are_served(settings) -> None:
    events = list(stream(CATALOG, StreamSpec(events=500, residents=50, seed=3)))
    produce(settings, [encode(e) for e in events] + [(b"x", b"{oops")])
    port = free_port()
    metrics.serve(port)
    run_in_process(settings)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'bouquet_ingest_events_total{outcome="received"}' in text
    assert 'bouquet_ingest_dead_letters_total{reason="bad_json"}' in text
    assert "bouquet_ingest_batch_seconds_bucket" in text


def test_max_events_stops_and_commits_exactly_there(settings) -> None:
    events = list(stream(CATALOG, StreamSpec(events=2000, residents=200, seed=12)))
    produce(settings, [encode(e) for e in events])
    first = run_in_process(settings, max_events=700, idle_seconds=None)
    assert first.received == 700
    rest = run_in_process(settings)
    assert rest.received == len(events) - 700
    assert_log_exact(settings, events)


def test_cli_ingest_until_idle(settings, tmp_path: Path) -> None:
    events = list(stream(CATALOG, StreamSpec(events=1000, residents=100, seed=13)))
    produce(settings, [encode(e) for e in events])
    stats_path = tmp_path / "stats.json"
    proc = start_ingest(settings, tmp_path / "cli.log", "--until-idle", "--idle-seconds", "1",
                        "--stats-json", str(stats_path))
    assert proc.wait(timeout=90) == 0, (tmp_path / "cli.log").read_text()
    stats = json.loads(stats_path.read_text())
    assert stats["received"] == len(events) and stats["commits"] >= 1
    assert "ingest done" in (tmp_path / "cli.log").read_text()
    assert_log_exact(settings, events, drop_late=True)
