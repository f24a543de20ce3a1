"""Settings: environment first, TOML file second, local defaults last; production guards."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bouquet.core.settings import Settings

#: What `python -c "import secrets; print(secrets.token_urlsafe(32))"` prints.
STRONG = "Xq3v0J8kTz1bR7mWc2LpN5yHs9dFg4Ae6UoKiQwErTy"
STRONG_KEY = "kF2pZ7qL0xW9cV4bN8mR3tY6uJ1hG5sDaEoIkUyTrWq"


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
    with pytest.raises(ValidationError, match="API_KEYS: a key of role 'app' is shorter"):
        Settings()
    monkeypatch.setenv("BOUQUET_API_KEYS", f'{{"{STRONG_KEY}": "app"}}')
    with pytest.raises(ValidationError, match="PSEUDONYM_SECRET is the development secret"):
        Settings()
    monkeypatch.setenv("BOUQUET_PSEUDONYM_SECRET", STRONG)
    with pytest.raises(ValidationError, match="SERVER_SECRET is the development secret"):
        Settings()
    monkeypatch.setenv("BOUQUET_SERVER_SECRET", STRONG[::-1])
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


@pytest.mark.parametrize("variable", ["BOUQUET_PSEUDONYM_SECRET", "BOUQUET_SERVER_SECRET",
                                      "BOUQUET_API_KEYS"])
@pytest.mark.parametrize("weak, why", [("x" * 40, "fewer than 16 distinct"),
                                       ("abcdefghijklmnopqrstuvwxyz01234", "shorter than 32"),
                                       ("ab" * 20, "fewer than 16 distinct")])
def test_production_refuses_weak_keys_and_secrets(monkeypatch, variable, weak, why) -> None:
    monkeypatch.setenv("BOUQUET_ENV", "production")
    monkeypatch.setenv("BOUQUET_PSEUDONYM_SECRET", STRONG)
    monkeypatch.setenv("BOUQUET_SERVER_SECRET", STRONG[::-1])
    monkeypatch.setenv("BOUQUET_API_KEYS", f'{{"{STRONG_KEY}": "app"}}')
    value = weak if variable != "BOUQUET_API_KEYS" else f'{{"{weak}": "admin"}}'
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=why) as raised:
        Settings()
    assert weak not in str(raised.value)  # never echo a secret into a log


def test_development_credentials_are_named(monkeypatch) -> None:
    for name in ("BOUQUET_API_KEYS", "BOUQUET_PSEUDONYM_SECRET", "BOUQUET_SERVER_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().development_credentials == ["BOUQUET_API_KEYS",
                                                  "BOUQUET_PSEUDONYM_SECRET",
                                                  "BOUQUET_SERVER_SECRET"]
    assert Settings(api_keys={STRONG_KEY: "app"}, pseudonym_secret=STRONG,
                    server_secret=STRONG[::-1]).development_credentials == []
