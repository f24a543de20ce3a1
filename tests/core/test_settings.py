"""Settings: environment first, TOML file second, local defaults last; production guards."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bouquet.core.settings import Settings


def test_local_defaults_point_at_the_embedded_stack(tmp_path, monkeypatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(state_dir=tmp_path)
    assert s.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert s.redis_url.startswith("redis://127.0.0.1:")
    assert s.mlflow_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert s.event_log_path == tmp_path / "eventlog"


def test_standard_variable_names_configure_production_services(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("BOUQUET_TOPIC_PARTITIONS", "12")
    s = Settings()
    assert s.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.redis_url == "redis://cache:6379/2"
    assert s.mlflow_uri == "http://mlflow:5000"
    assert s.topic_partitions == 12


def test_toml_file_is_read_and_environment_wins(tmp_path, monkeypatch) -> None:
    config = tmp_path / "bouquet.toml"
    config.write_text('topic_events = "city.events"\nsmall_cell_k = 11\n'
                      '[event_weights]\nuse = 5.0\n')
    monkeypatch.setenv("BOUQUET_CONFIG_FILE", str(config))
    monkeypatch.setenv("BOUQUET_SMALL_CELL_K", "7")
    s = Settings()
    assert s.topic_events == "city.events"
    assert s.event_weights == {"use": 5.0}
    assert s.small_cell_k == 7


def test_unreadable_config_file_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BOUQUET_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="cannot read BOUQUET_CONFIG_FILE"):
        Settings()


def test_production_refuses_development_secrets(monkeypatch) -> None:
    monkeypatch.setenv("BOUQUET_ENV", "production")
    with pytest.raises(ValidationError, match="development keys"):
        Settings()
    monkeypatch.setenv("BOUQUET_API_KEYS", '{"k-0a9f8e7d6c5b4a39": "app"}')
    with pytest.raises(ValidationError, match="PSEUDONYM_SECRET"):
        Settings()
    monkeypatch.setenv("BOUQUET_PSEUDONYM_SECRET", "x" * 40)
    assert Settings().env == "production"
    monkeypatch.setenv("BOUQUET_SERVING_BENCH_ENDPOINTS", "true")  # one answers without a key
    with pytest.raises(ValidationError, match="benchmarks only"):
        Settings()


def test_negative_event_weight_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be >= 0"):
        Settings(event_weights={"use": -1.0})


def test_key_prefix_cannot_inject_key_syntax() -> None:
    with pytest.raises(ValidationError):
        Settings(redis_key_prefix="bq:*\r\n")
