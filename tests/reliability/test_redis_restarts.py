"""Redis killed (SIGKILL, not a clean shutdown) and restarted from its AOF, twice:

* during ingestion — the consumer retries within its bound and the final log and Redis
  state equal an independent recomputation (nothing lost, nothing counted twice);
* during serving — every request is still answered (popular lists loaded in the process,
  ``notice`` says the answer is degraded), ``/readyz`` says what is missing, and
  personalisation comes back by itself once Redis does.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from bouquet.core.catalog import load_catalog
from bouquet.localstack import free_port
from bouquet.streaming.synthetic import StreamSpec, encode, stream
from tests.reliability.support import kill, start_redis
from tests.serving.support import client_for, publish, set_profile, small_model

CATALOG = load_catalog()


def _streaming_helpers():
    """The ingestion tests' independent reference (tests/streaming is not a package)."""
    folder = Path(__file__).resolve().parents[1] / "streaming"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("ingest_helpers", folder / "ingest_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def visible_ids(events: list[dict]) -> list[str]:
    """Event ids ``read_events`` must show: each once, an erased resident's events up to
    (and including) their erasure request hidden — computed without the library."""
    from datetime import datetime

    first: dict[str, dict] = {}
    for e in events:
        first.setdefault(e["event_id"], e)
    erased: dict[str, datetime] = {}
    for e in first.values():
        if e["type"] == "erase":
            ts = datetime.fromisoformat(e["ts"])
            erased[e["resident_id"]] = max(ts, erased.get(e["resident_id"], ts))
    return sorted(eid for eid, e in first.items()
                  if e["resident_id"] not in erased
                  or datetime.fromisoformat(e["ts"]) > erased[e["resident_id"]])


@pytest.mark.timeout(240)
def test_ingestion_survives_redis_sigkills_without_loss(make_settings, tmp_path: Path) -> None:
    from bouquet.core.eventlog import read_events, read_table
    from bouquet.streaming.consumer import IngestConsumer, IngestOptions

    helpers = _streaming_helpers()
    rng = random.Random(11)
    port = free_port()
    data = tmp_path / "redis"
    server = start_redis(port, data)
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0")
    events = list(stream(CATALOG, StreamSpec(events=30_000, residents=2000, seed=12)))
    helpers.produce(settings, [encode(e) for e in events])
    options = IngestOptions.from_settings(settings, idle_seconds=4.0, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, log_every_s=0,
                                          batch_max_events=1000, retry_attempts=8,
                                          retry_base_s=0.25, install_signal_handlers=False)
    consumer = IngestConsumer(settings, CATALOG, options)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(stats=consumer.run()))
    runner.start()
    try:
        client = redis.Redis(port=port)
        for _ in range(2):
            deadline = time.monotonic() + 60
            applied = consumer.stats.applied
            while consumer.stats.applied <= applied:  # let it write a little first
                assert time.monotonic() < deadline and runner.is_alive()
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))
            kill(server)  # SIGKILL: no clean shutdown, no final AOF flush
            time.sleep(rng.uniform(0.5, 2.0))
            server = start_redis(port, data)
        runner.join(timeout=180)
        assert "stats" in result, "the consumer did not survive the restarts"
        assert result["stats"].retries > 0
        assert result["stats"].received >= len(events)
        logged = read_events(settings.event_log_path)
        assert sorted(logged["event_id"]) == visible_ids(events)
        raw = set(read_table(settings.event_log_path, columns=["event_id"])["event_id"]
                  .to_pylist())
        assert raw == {e["event_id"] for e in events}  # every event in the files
        expected = helpers.ReferenceState(CATALOG, settings.redis_key_prefix).apply_all(
            events).dump()
        assert helpers.dump_state(client, settings.redis_key_prefix) == expected
        client.close()
    finally:
        consumer.stop()
        runner.join(timeout=30)
        kill(server)


@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_serving_degrades_while_redis_is_down_and_recovers(make_settings,
                                                                 tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis"
    server = start_redis(port, data)
    settings = make_settings(redis_url=f"redis://127.0.0.1:{port}/0", serving_pointer_poll_ms=100)
    publish(settings, small_model(CATALOG))
    set_profile(settings, "r1", consent="1", neighbourhood="gare")
    try:
        async with client_for(settings) as c:
            assert (await c.get("/v1/residents/r1/bundles")).json()["personalised"] is True
            assert (await c.get("/readyz")).status_code == 200
            for outage in range(2):
                kill(server)
                for rid in ("r1", "r2", "never-seen"):
                    for kind in ("bundles", "services"):
                        started = time.monotonic()
                        resp = await c.get(f"/v1/residents/{rid}/{kind}")
                        assert resp.status_code == 200, resp.text
                        assert time.monotonic() - started < 3
                        body = resp.json()
                        assert body["personalised"] is False
                        assert body["notice"].startswith("degraded")
                        assert body["fallback"] == "popular_city" and body[kind]
                        assert body["keyspace_version"]  # the version loaded in the process
                ready = await c.get("/readyz")
                # still serving from memory: stay in the balancer, say it is degraded
                assert ready.status_code == 200 and ready.json()["status"] == "degraded"
                checks = ready.json()["checks"]
                assert checks["redis"]["ok"] is False and checks["model"]["ok"] is True
                consent = await c.put("/v1/residents/r9/consent",
                                      json={"personalisation": True})
                assert consent.status_code in (202, 503), consent.text  # never a 500
                server = start_redis(port, data)  # from its AOF
                deadline = time.monotonic() + 15
                while (await c.get("/readyz")).json()["status"] != "ready":
                    assert time.monotonic() < deadline, f"not ready after outage {outage}"
                    time.sleep(0.1)
                deadline = time.monotonic() + 5
                while not (await c.get("/v1/residents/r1/bundles")).json()["personalised"]:
                    assert time.monotonic() < deadline, "personalisation did not come back"
                    time.sleep(0.1)
    finally:
        kill(server)
