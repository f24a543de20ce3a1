"""The local stack is real: a consumer group round-trips through the broker, Redis answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import redis
from kafka import KafkaConsumer, KafkaProducer

from bouquet.core.keys import Keys
from bouquet.core.settings import Settings
from bouquet.localstack import LocalStack, StackError, ensure_topics, free_port


def test_consumer_group_round_trip(settings: Settings) -> None:
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    sent = [{"n": i} for i in range(50)]
    for i, message in enumerate(sent):
        producer.send(settings.topic_events, key=f"r{i % 7}".encode(),
                      value=json.dumps(message).encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    received: list[dict] = []
    deadline = time.monotonic() + 30
    while len(received) < len(sent) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend(json.loads(r.value) for r in records)
    consumer.commit()
    consumer.close()
    assert sorted(m["n"] for m in received) == list(range(50))

    # a second member of the same group resumes after the committed offsets: nothing left
    again = KafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    leftovers = []
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for records in again.poll(timeout_ms=500).values():
            leftovers.extend(records)
    again.close()
    assert leftovers == []


def test_redis_round_trip(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    key = Keys(settings.redis_key_prefix).profile("resident_1")
    client.hset(key, mapping={"neighbourhood": "north", "consent": 1})
    assert client.hgetall(key) == {b"neighbourhood": b"north", b"consent": b"1"}
    client.delete(key)


def test_status_reports_all_three_services(stack: Settings) -> None:
    statuses = {s.name: s for s in LocalStack(stack).status()}
    assert set(statuses) == {"kafka", "redis", "mlflow"}
    assert all(s.healthy for s in statuses.values()), statuses


def test_taken_port_gives_an_actionable_error(stack: Settings, tmp_path) -> None:
    taken = Settings(env="test", state_dir=tmp_path, redis_url=stack.redis_url,
                     kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    try:
        LocalStack(taken).up(timeout_s=5)
    except StackError as exc:
        assert "is taken" in str(exc) and "REDIS_URL" in str(exc)
    else:  # pragma: no cover - the assertion below documents the failure
        raise AssertionError("starting Redis on a taken port did not fail")
    finally:
        LocalStack(taken).down()


def test_cli_up_status_down_leaves_nothing_behind(tmp_path) -> None:
    env = {
        "BOUQUET_STATE_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PATH": "/usr/bin:/bin",
    }
    cli = [sys.executable, "-m", "bouquet"]
    up = subprocess.run([*cli, "stack", "up"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    # a normal start is quiet: no library warning (kafka-python, MLflow, Python's own)
    assert "warning" not in (up.stdout + up.stderr).lower(), up.stdout + up.stderr
    status = subprocess.run([*cli, "stack", "status"], env=env, capture_output=True, text=True,
                            timeout=60)
    pids = [json.loads(p.read_text())["pid"] for p in (tmp_path / "stack").glob("*.pid.json")]
    subprocess.run([*cli, "stack", "down"], env=env, check=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 3
    assert len(pids) == 2
    import psutil

    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
