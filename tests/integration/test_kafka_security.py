"""Kafka can be secured: the standard client security settings reach every producer,
consumer and admin client Bouquet makes, and the topics Bouquet creates carry an explicit
replication factor and ``retention.ms`` (the local broker keeps topics in memory, so
retention itself is not observable there; docs/security.md says what it supports)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import kafka
import pytest

from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics, kafka_ready
from bouquet.streaming import consumer as consumer_module
from bouquet.streaming import producer as producer_module

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("core", "streaming", "serving", "simulation", "benchmarks", "privacy", "pipelines",
         "analytics", "models", "bouquet")
CLIENTS = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
SECURE = dict(env="test", kafka_bootstrap_servers="broker-1:9093",
              kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
              kafka_sasl_username="bouquet", kafka_sasl_password="s3cret-password",
              kafka_ssl_cafile="/etc/bouquet/ca.pem", topic_replication_factor=3,
              topic_events_retention_ms=86_400_000, topic_dlq_retention_ms=3_600_000)
EXPECTED = {"bootstrap_servers": "broker-1:9093", "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "bouquet",
            "sasl_plain_password": "s3cret-password", "ssl_cafile": "/etc/bouquet/ca.pem",
            "ssl_check_hostname": True}


def test_every_kafka_client_in_the_code_gets_the_settings_options() -> None:
    """Static: every function that constructs a kafka-python client builds its options
    from ``settings.kafka_client_options()`` — a new call site cannot forget them."""
    calls = []
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            if any(p.is_symlink() for p in (path, *path.parents) if ROOT in p.parents):
                continue
            for function in ast.walk(ast.parse(path.read_text())):
                if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                inner = [n for n in ast.walk(function) if isinstance(n, ast.Call)]
                uses_options = any(getattr(n.func, "attr", "") == "kafka_client_options"
                                   for n in inner)
                calls += [(f"{path.relative_to(ROOT)}:{n.lineno}", uses_options)
                          for n in inner if getattr(n.func, "id", None) in CLIENTS]
    assert len(calls) >= 8
    assert [where for where, ok in calls if not ok] == []


class Recorder:
    """Stands in for a kafka-python client class: records the options it was given."""

    def __init__(self, seen: list[dict[str, Any]]) -> None:
        self.seen = seen

    def __call__(self, *args: Any, **options: Any) -> Any:
        self.seen.append(options)
        recorder = self

        class Client:
            def __getattr__(self, name: str) -> Any:
                return lambda *a, **k: recorder.seen.append({"call": name, "args": a,
                                                             "kwargs": k}) or []

        return Client()


def test_settings_reach_each_client_and_topics_get_their_configs(monkeypatch) -> None:
    settings = Settings(**SECURE)
    seen: list[dict[str, Any]] = []
    # the dead-letter producer is an EventProducer: the producer module's class serves both
    for module, name in ((producer_module, "KafkaProducer"), (consumer_module, "KafkaConsumer"),
                         (kafka, "KafkaAdminClient")):
        monkeypatch.setattr(module, name, Recorder(seen))
    producer_module.EventProducer(settings)
    ingest = consumer_module.IngestConsumer(settings)
    ingest._new_consumer()
    ingest._dlq_producer()
    kafka_ready(settings)
    ensure_topics(settings)
    clients = [options for options in seen if "call" not in options]
    assert len(clients) == 5  # producer, consumer, DLQ producer, two admin clients
    for options in clients:
        assert EXPECTED.items() <= options.items()
    created = next(c for c in seen if c.get("call") == "create_topics")["args"][0]
    assert {(t.name, t.replication_factor, tuple(t.topic_configs.items())) for t in created} \
        == {(settings.topic_events, 3, (("retention.ms", "86400000"),)),
            (settings.topic_dlq, 3, (("retention.ms", "3600000"),
                                     ("cleanup.policy", "compact,delete"))),
            (settings.topic_outreach, 3, (("retention.ms", "86400000"),))}
    assert "s3cret-password" not in repr(settings)


def test_sasl_needs_its_credentials() -> None:
    with pytest.raises(ValueError, match="KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME"):
        Settings(env="test", kafka_security_protocol="SASL_SSL")


def test_the_local_broker_accepts_the_topic_configs(settings) -> None:
    from kafka import KafkaAdminClient

    ensure_topics(settings)
    admin = KafkaAdminClient(**settings.kafka_client_options())
    try:
        assert {settings.topic_events, settings.topic_dlq} <= set(admin.list_topics())
    finally:
        admin.close()
