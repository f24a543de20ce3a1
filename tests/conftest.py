"""Shared fixtures: real services started once per session on free ports.

``stack`` starts the Tansu broker and a private ``redis-server`` through the same
:class:`~bouquet.localstack.LocalStack` the CLI uses; ``settings`` gives each test its
own topics, Redis database keys prefix, event log folder and MLflow store, so tests do
not see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bouquet.core.settings import Settings
from bouquet.localstack import LocalStack, free_port

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the real services are integration tests, whether or not marked."""
    for item in items:
        if {"stack", "settings", "make_settings"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A running broker and Redis for the whole session; yields their base settings."""
    state = tmp_path_factory.mktemp("stack")
    base = Settings(
        env="test",
        state_dir=state,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        topic_partitions=2,
    )
    local = LocalStack(base)
    try:
        local.up(timeout_s=60)
        yield base
    finally:
        local.down()


@pytest.fixture
def make_settings(stack: Settings, tmp_path: Path) -> Callable[..., Settings]:
    """Settings against the session's services, isolated for one test: unique topics,
    key prefix, consumer group, event log and MLflow store. Overrides go as kwargs."""

    def build(**overrides: object) -> Settings:
        tag = uuid.uuid4().hex[:10]
        values: dict[str, object] = {
            "env": "test",
            "state_dir": tmp_path / "state",
            "kafka_bootstrap_servers": stack.kafka_bootstrap_servers,
            "redis_url": stack.redis_url,
            "topic_events": f"t{tag}.interactions",
            "topic_dlq": f"t{tag}.interactions.dlq",
            "topic_partitions": 2,
            "consumer_group": f"g{tag}",
            "redis_key_prefix": f"t{tag}:",
            # tests replay fixed-date histories (a year ago, last month) through Kafka, as a
            # backfill would: no past limit per channel unless a test sets one
            "max_past_skew_s": {},
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def shared_data() -> Path:
    """The public benchmark data (read in place, never copied into the repo)."""
    if not SHARED_DATA.exists():
        pytest.skip(f"public data not found at {SHARED_DATA}")
    return SHARED_DATA
