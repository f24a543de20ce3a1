"""Old time stamps: each channel has a past limit (people's devices a week; partners and
the system, which carry replays and history, none) and older events are dead-lettered with
``stale_timestamp``; a batch never spans more event dates (files) than its bound."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.events import EventRejected, check_against_catalog, parse_event
from bouquet.core.keys import Keys
from bouquet.core.settings import DEFAULT_MAX_PAST_SKEW_S, Settings
from bouquet.streaming.batch import Batch, BatchBuilder
from tests.privacy.helpers import ingest_until_idle, produce_events

CATALOG = load_catalog()
NOW = datetime.now(UTC)
LIMITS = Settings(env="test").past_skew_limits()  # the defaults


def event(channel: str, age: timedelta, **more: object) -> dict:
    return {"schema_version": 1, "event_id": f"e-{uuid.uuid4().hex}", "resident_id": "r1",
            "type": "use", "service_id": CATALOG.services[0].id,
            "ts": (NOW - age).isoformat(), "channel": channel, **more}


def test_default_limits_are_a_week_for_people_and_none_for_partners_and_the_system() -> None:
    assert set(DEFAULT_MAX_PAST_SKEW_S) == {"app", "web", "kiosk", "desk", "phone"}
    for channel in DEFAULT_MAX_PAST_SKEW_S:
        check_against_catalog(parse_event(event(channel, timedelta(days=6))), CATALOG,
                              max_past_skew=LIMITS)
        with pytest.raises(EventRejected) as refused:
            check_against_catalog(parse_event(event(channel, timedelta(days=8))), CATALOG,
                                  max_past_skew=LIMITS)
        assert refused.value.reason == "stale_timestamp"
    for channel in ("partner", "system"):
        check_against_catalog(parse_event(event(channel, timedelta(days=3000))), CATALOG,
                              max_past_skew=LIMITS)


@pytest.mark.parametrize("context", [None, {"screen": "home"}, {"nested": {"a": [1, 2]}}])
def test_the_consumer_dead_letters_stale_events_on_both_paths(context) -> None:
    """Plain events take the fast path, others the reference path: both refuse the same."""
    builder = BatchBuilder(CATALOG, Keys("t:"), max_past_skew=LIMITS)
    batch = Batch()
    extra = {"context": context} if context else {}
    records = [event("app", timedelta(days=8), **extra), event("app", timedelta(days=6), **extra),
               event("partner", timedelta(days=800), **extra),
               event("kiosk", timedelta(days=30), type="profile", service_id=None,
                     context={"neighbourhood": CATALOG.neighbourhood_ids[0]})]
    for offset, item in enumerate(records):
        assert builder.add(batch, _record(item, offset), NOW)
    assert [d.reason for d in batch.dead_letters] == ["stale_timestamp", "stale_timestamp"]
    assert [row[0] for row in batch.rows] == [records[1]["event_id"], records[2]["event_id"]]


def test_a_batch_holds_at_most_its_bound_of_event_dates() -> None:
    builder = BatchBuilder(CATALOG, Keys("t:"), max_dates=3)
    batch = Batch()
    days = [event("partner", timedelta(days=d)) for d in (1, 2, 1, 3, 4, 5)]
    records = [_record(item, offset) for offset, item in enumerate(days)]
    assert builder.add_records(batch, records, NOW) == 3 + 1  # day 1 again fits
    assert len(batch.days) == 3 and batch.offsets == {("t", 0): 4}
    second = Batch()
    assert builder.add_records(second, records[4:], NOW) == 2


def test_the_consumer_writes_scattered_dates_in_bounded_batches(make_settings) -> None:
    settings = make_settings(max_past_skew_s=DEFAULT_MAX_PAST_SKEW_S, ingest_batch_max_dates=4)
    old = [event("partner", timedelta(days=10 + d)) for d in range(20)]  # a partner replay
    stale = [event("web", timedelta(days=9))]
    produce_events(settings, old + stale)
    stats = ingest_until_idle(settings)
    assert stats.dead_letters == {"stale_timestamp": 1}
    logged = pq.read_table(settings.event_log_path)
    assert sorted(logged["event_id"].to_pylist()) == sorted(e["event_id"] for e in old)
    assert stats.batches >= 5  # 20 dates, at most 4 per batch: at most 4 files each


def _record(item: dict, offset: int):
    from types import SimpleNamespace

    return SimpleNamespace(value=json.dumps(item).encode(), offset=offset, topic="t",
                           partition=0, timestamp=1, key=b"r1")
