"""Shared fixtures: real services started once per session on free ports.

Under ``make test`` (pytest-xdist) every worker process is a session of its own, with its
own broker and Redis.

``stack`` starts the Tansu broker and a private ``redis-server`` through the same
:class:`~bouquet.localstack.LocalStack` the CLI uses; ``settings`` gives each test its
own topics, Redis database keys prefix, event log folder and MLflow store, so tests do
not see each other's data.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
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
            "topic_outreach": f"t{tag}.outreach",
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


@pytest.fixture
def messy_log() -> Callable[[Path, int], None]:
    """Writes a generated event log with what real logs hold and readers must undo:
    re-delivered copies (some ingested earlier than the original, one in the same file),
    erasure requests (with events after them), events sharing a time stamp, unknown and
    missing items, consent changes and profiles, recommendations echoed (every third view,
    click and subscribe carries a recommendation id), spread over several files per date."""
    from bouquet.core.catalog import load_catalog
    from bouquet.core.eventlog import EventLog

    catalog = load_catalog()

    def write(root: Path, seed: int = 5) -> None:
        rng = random.Random(seed)
        start = datetime(2026, 3, 1, 21, tzinfo=UTC)
        kinds = ["use"] * 6 + ["view"] * 4 + ["click", "pay", "subscribe", "unsubscribe",
                                               "dismiss", "rate", "consent", "consent",
                                               "profile", "erase"]
        events: list[dict] = []
        for n in range(1500):
            kind = rng.choice(kinds)
            ts = events[-1]["ts"] if events and rng.random() < 0.1 else \
                start + timedelta(seconds=rng.randrange(9 * 86_400))
            service = bundle = value = context = None
            pick = rng.random()
            if kind not in ("consent", "profile", "erase"):
                if pick < 0.5:
                    service = rng.choice([*catalog.service_ids, "retired-service"])
                elif pick < 0.8:
                    bundle = rng.choice([*catalog.bundle_ids, "retired-bundle"])
                else:
                    bundle = rng.choice(catalog.bundle_ids)
                    service = rng.choice(catalog.bundle_by_id[bundle].services)
            if kind == "consent":
                value = float(rng.random() < 0.8)
            elif kind == "rate":
                value = float(rng.randint(1, 5))
            elif kind == "profile":
                context = json.dumps({"neighbourhood": rng.choice(catalog.neighbourhood_ids),
                                      "student": rng.random() < 0.3})
            events.append({
                "event_id": f"m{n}", "resident_id": f"r{rng.randrange(70):02d}", "type": kind,
                "service_id": service, "bundle_id": bundle, "ts": ts, "channel": "app",
                "value": value, "context": context, "schema_version": 1,
                "recommendation_id": f"rec-{n}" if kind in ("view", "click", "subscribe")
                and n % 3 == 0 else None,
                "ingested_at": ts + timedelta(seconds=rng.randrange(1, 600))})
        rng.shuffle(events)
        log = EventLog(root)
        for first in range(0, len(events), 250):
            log.append(events[first:first + 250])
        copies = []
        for event in rng.sample(events, 150):
            # a copy ingested earlier than the original wins; later or equal, it loses
            shift = timedelta(seconds=rng.choice([-30, 0, 45]))
            copies.append({**event, "channel": f"copy{shift.total_seconds():+.0f}",
                           "ingested_at": event["ingested_at"] + shift})
        copies.append({**copies[0], "channel": "copy-in-same-file"})
        log.append(copies)

    return write
