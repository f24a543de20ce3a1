"""The broker stops answering and MLflow goes away.

* Broker paused (SIGSTOP: connections stay open, nothing answers — the hard case) while
  clients keep sending: answers are ``503`` + ``Retry-After``, and afterwards every event
  that got a ``202`` is on the topic — nothing was acknowledged that was not written.
* A producer closed while the broker is paused (the intake dropping it after a failure)
  stops for good: its I/O thread ends and its unacknowledged records fail, rather than a
  half-closed producer retrying until the garbage collector's close times out too.
* MLflow unreachable: serving keeps answering with its loaded model (it loads models from
  Redis, never from MLflow); ``bouquet publish`` and ``bouquet train`` fail with one clear
  line and the published version keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from typer.testing import CliRunner

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.localstack import ensure_topics, free_port
from bouquet.streaming.producer import EventProducer
from tests.reliability.support import kill, start_broker
from tests.serving.support import client_for, redis_client, set_profile

#: A producer left half-closed shows up only as this warning when it is collected.
pytestmark = [pytest.mark.anyio,
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]
CATALOG = load_catalog()


def event(rid: str) -> dict:
    return {"schema_version": 1, "event_id": f"b-{uuid.uuid4().hex}", "resident_id": rid,
            "type": "use", "service_id": "bike-share", "ts": datetime.now(UTC).isoformat(),
            "channel": "app"}


def topic_ids(settings, timeout_s: float = 6) -> set[str]:
    consumer = KafkaConsumer(settings.topic_events,
                             bootstrap_servers=settings.kafka_bootstrap_servers,
                             auto_offset_reset="earliest",
                             consumer_timeout_ms=int(timeout_s * 1000))
    found = {json.loads(r.value)["event_id"] for r in consumer}
    consumer.close()
    return found


@pytest.mark.timeout(180)
async def test_a_paused_broker_gets_503s_and_nothing_unwritten_is_acknowledged(
        make_settings) -> None:
    port = free_port()
    broker = start_broker(port)
    settings = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{port}",
                             serving_intake_timeout_s=1.5)
    ensure_topics(settings)
    acked: set[str] = set()
    refused: set[str] = set()
    statuses: list[int] = []
    stop = asyncio.Event()
    try:
        async with client_for(settings) as c:
            async def sender(n: int) -> None:
                while not stop.is_set():
                    batch = [event(f"r{n}") for _ in range(5)]
                    resp = await c.post("/v1/events", json=batch)
                    statuses.append(resp.status_code)
                    ids = {e["event_id"] for e in batch}
                    if resp.status_code == 202:
                        acked.update(ids)
                    else:
                        assert resp.status_code == 503, resp.text
                        assert resp.headers["Retry-After"].isdigit()
                        refused.update(ids)
                    await asyncio.sleep(0.01)

            senders = [asyncio.create_task(sender(n)) for n in range(4)]
            await asyncio.sleep(1.5)
            broker.send_signal(signal.SIGSTOP)
            await asyncio.sleep(5.0)
            refused_while_paused = len(refused)
            broker.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 30
            while statuses[-1] != 202 or statuses.count(202) <= len(statuses) // 3:
                assert time.monotonic() < deadline, "intake did not recover"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*senders)
        assert refused_while_paused > 0 and 503 in statuses
        on_topic = topic_ids(settings)
        assert acked <= on_topic, f"{len(acked - on_topic)} acknowledged events are missing"
        assert on_topic <= acked | refused  # and nothing appeared from nowhere
        print(f"paused broker: {len(acked)} events acknowledged (all on the topic), "
              f"{len(refused)} refused with 503 ({len(refused & on_topic)} of them written "
              f"anyway, harmless: re-sent ids are de-duplicated)")
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGCONT)
        kill(broker)


@pytest.mark.timeout(120)
def test_a_producer_closed_while_the_broker_is_paused_stops_and_fails_its_records(
        make_settings) -> None:
    port = free_port()
    broker = start_broker(port)
    settings = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    ensure_topics(settings)
    try:
        producer = EventProducer(settings)
        producer.send_and_wait([event("r-before")])  # metadata known, connection open
        broker.send_signal(signal.SIGSTOP)
        pending = producer.send(event("r-during"))
        started = time.monotonic()
        producer.close(0)
        assert time.monotonic() - started < 15
        sender = producer._producer._sender
        assert not sender.is_alive(), "the producer's I/O thread kept running"
        assert pending.is_done and pending.failed()
        with pytest.raises(KafkaError):
            pending.get(timeout=1)
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGCONT)
        kill(broker)


@pytest.mark.timeout(180)
async def test_mlflow_down_serving_keeps_its_model_and_commands_fail_clearly(
        make_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bouquet.cli import app
    from bouquet.core import settings as settings_module
    from bouquet.pipelines.publish import Publisher, load_registered
    from bouquet.pipelines.train import TrainOptions, train
    from bouquet.simulation.runner import simulate

    settings = make_settings(state_dir=tmp_path / "state")
    simulate(settings, residents=400, weeks=8, seed=3, end=date(2025, 6, 2), progress=False,
             save_residents=False)
    train(settings, TrainOptions(params={"factors": 8}, baselines=(), refit=False,
                                 progress=False, candidates=("als",), force=True))
    model, version, run_id = load_registered(settings)
    report = Publisher(settings, neighbourhoods=CATALOG.neighbourhood_ids).publish(
        model, model_version=version, run_id=run_id)
    rid = model.resident_ids[0]
    set_profile(settings, rid, consent="1")

    dead = f"http://127.0.0.1:{free_port()}"
    (settings.state_dir / "mlflow.db").rename(settings.state_dir / "mlflow.db.away")
    down = settings.model_copy(update={"mlflow_tracking_uri": dead})
    async with client_for(down) as c:
        answer = (await c.get(f"/v1/residents/{rid}/bundles")).json()
        assert answer["personalised"] is True and answer["model_version"] == version
        assert (await c.get("/readyz")).status_code == 200

    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    for name, value in {"BOUQUET_ENV": "test", "BOUQUET_STATE_DIR": str(settings.state_dir),
                        "REDIS_URL": settings.redis_url,
                        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                        "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix}.items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    try:
        runner = CliRunner()
        published = runner.invoke(app, ["publish", "--no-progress"])
        assert published.exit_code == 1 and "publish failed" in published.output
        assert "still serving" in published.output and "Traceback" not in published.output
        trained = runner.invoke(app, ["train", "--no-progress"])
        assert trained.exit_code == 1 and trained.output.startswith("error: MLflow")
        assert dead in trained.output and "Traceback" not in trained.output
    finally:
        settings_module.get_settings.cache_clear()
    client = redis_client(settings)
    current = client.get(Keys(settings.redis_key_prefix).current_version()).decode()
    client.close()
    assert current == report.version  # the pointer never moved
