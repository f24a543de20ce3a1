"""History (event log) and now (Redis counters) agree on their overlap.

Events go the real way: the producer library → the Kafka-protocol broker → the ingestion
consumer (``bouquet.streaming.consumer.IngestConsumer``), which writes both the event log
and the Redis counters. Then every active-resident SET the consumer wrote, every contact
counter and every funnel counter is compared with the same quantity computed by the
analytics module from the event log.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import redis

from bouquet.analytics.engagement import FUNNEL_STAGES
from bouquet.analytics.live import active_counts, contact_counts, funnel_counts
from bouquet.analytics.logdb import CLASSES
from bouquet.analytics.service import EngagementService
from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import development_ids
from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics
from bouquet.streaming.consumer import IngestConsumer, IngestOptions
from bouquet.streaming.producer import EventProducer
from bouquet.streaming.state import UNKNOWN_NEIGHBOURHOOD

CATALOG = load_catalog(None)


def make_events(now: datetime, residents: int = 60, seed: int = 5) -> list[dict]:
    """Stable profiles first, then three weeks of contacts up to a minute ago (some with
    recommendation ids, some re-sent), and one resident who asks to be erased."""
    rng = random.Random(seed)
    nbs = ["centre", "gare", "port"]
    services = ["bus", "tram", "bike-share", "library", "swimming-pool", "e-scooter",
                "concierge", "recycling-centre"]
    bundles = list(CATALOG.bundle_ids)[:4]
    events: list[dict] = []
    n = 0

    def add(**fields) -> dict:
        nonlocal n
        n += 1
        event = {"schema_version": 1, "event_id": f"hv-{seed}-{n:06d}", **fields}
        events.append(event)
        return event

    for i in range(residents):
        rid = f"hv{i:03d}"
        start = now - timedelta(days=21, hours=1)
        if i % 6:  # a sixth of the residents never declare a neighbourhood
            add(resident_id=rid, type="profile", ts=start.isoformat(), channel="app",
                context={"neighbourhood": nbs[i % 3]})
        rate = [0.9, 0.4, 0.1][i % 3]
        # today's events stay within today, whatever the hour the test runs at
        since_midnight = int((now - now.replace(hour=0, minute=0, second=0,
                                                microsecond=0)).total_seconds())
        for back in range(21, -1, -1):
            if rng.random() > rate:
                continue
            latest = 20 * 3600 if back else max(1, min(20 * 3600, since_midnight))
            ts = now - timedelta(days=back, seconds=rng.randrange(0, latest))
            kind = rng.choice(["view", "click", "use", "pay", "subscribe"])
            fields = {"resident_id": rid, "type": kind, "ts": ts.isoformat(),
                      "channel": rng.choice(["app", "web", "kiosk"])}
            if rng.random() < 0.3:
                fields["bundle_id"] = rng.choice(bundles)
            else:
                fields["service_id"] = rng.choice(services)
            if kind == "pay":
                fields["value"] = 2.5
            if kind in ("view", "click", "subscribe", "use") and rng.random() < 0.5:
                fields["recommendation_id"] = development_ids().mint(
                    f"v{1 + i % 2}", "personal" if i % 2 else "control",
                    nonce=rng.getrandbits(24))
            event = add(**fields)
            if rng.random() < 0.05:
                events.append(dict(event))  # a client retry: same event id
    gone = "hv-gone"
    add(resident_id=gone, type="use", service_id="bus", channel="app",
        ts=(now - timedelta(days=3)).isoformat())
    add(resident_id=gone, type="erase", channel="system",
        ts=(now - timedelta(days=2)).isoformat())
    return events


def ingest(settings: Settings, events: list[dict]) -> None:
    ensure_topics(settings)
    with EventProducer(settings, throughput=True) as producer:
        for event in events:
            producer.send(event)
        producer.flush()
    options = IngestOptions.from_settings(settings, idle_seconds=2.0, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, log_every_s=0,
                                          install_signal_handlers=False)
    stats = IngestConsumer(settings, CATALOG, options).run()
    assert stats.dead_letters == {}, stats.dead_letters
    assert stats.received == len(events)


@pytest.fixture
def ingested(settings: Settings):
    now = datetime.now(UTC) - timedelta(minutes=1)
    events = make_events(now)
    ingest(settings, events)
    client = redis.Redis.from_url(settings.redis_url)
    yield settings, client, now, events
    client.close()


def test_redis_counters_equal_the_event_log_on_the_overlap(ingested) -> None:
    settings, client, now, events = ingested
    keys = Keys(settings.redis_key_prefix)
    svc = EngagementService(settings, CATALOG)
    # the live counters count a contact of any cadence class, so the log is read the same way
    eng = svc.data().engagement(CLASSES, svc.rules)

    # --- distinct active residents per day and per ISO week, by every dimension
    live = active_counts(client, keys)
    assert set(live["period"]) == {"day", "week"}
    assert {"all", "neighbourhood", "domain", "factor", "channel"} <= set(live["dimension"])
    daily = eng.daily.set_index(["dimension", "value", "day"])["dau"]
    weekly = eng.stickiness.set_index(["dimension", "value", "week"])["wau"]
    compared = 0
    for r in live.itertuples():
        history = daily if r.period == "day" else weekly
        assert history.get((r.dimension, r.value, r.bucket), 0) == r.active, r
        compared += 1
    # … and nothing active in the log is missing from Redis
    for frame, period, column in ((eng.daily, "day", "dau"), (eng.stickiness, "week", "wau")):
        nonzero = frame[frame[column] > 0]
        redis_keys = {(r.dimension, r.value, r.bucket) for r in live.itertuples()
                      if r.period == period}
        history_keys = set(zip(nonzero["dimension"], nonzero["value"],
                               nonzero["day" if period == "day" else "week"], strict=True))
        assert history_keys == redis_keys, history_keys ^ redis_keys
    assert compared > 300
    assert (eng.daily["value"] == UNKNOWN_NEIGHBOURHOOD).any()  # same label both sides

    # --- contact counters per ISO week: the log minus nothing but the erased resident's
    # contacts, which aggregate counters keep (they hold no resident id)
    weeks = sorted(set(eng.contacts["week"]))
    counted = contact_counts(client, keys, [("week", w) for w in weeks])
    totals = counted[counted["type"] == "all"].set_index("bucket")["contacts"]
    history = eng.contacts[eng.contacts["dimension"] == "all"].set_index("week")["contacts"]
    erased_week = (now - timedelta(days=3)).date().isocalendar()
    erased_label = f"{erased_week[0]}-W{erased_week[1]:02d}"
    for week in weeks:
        assert totals.get(week, 0) == history[week] + (week == erased_label), week

    # --- funnel counters per (model version, variant) = the log's attributed events
    arms = svc.funnel_arms().set_index("arm")
    redis_funnel = funnel_counts(client, keys).set_index("arm")
    assert sorted(redis_funnel.index) == sorted(arms.index) == ["v1:control", "v2:personal"]
    for arm in arms.index:
        for stage in FUNNEL_STAGES:
            column = f"{stage}_events"
            assert redis_funnel.loc[arm, column] == arms.loc[arm, column], (arm, stage)

    # --- and the live snapshot of today is the log's today (unsuppressed: shortly after
    # midnight UTC today has fewer residents than k, which would hide the number compared)
    raw = EngagementService(settings.model_copy(update={"small_cell_k": 1}), CATALOG)
    snapshot = raw.live(client, now=now)
    today = {(r["dimension"], r["value"]): r["active"] for r in snapshot["active"].rows
             if r["period"] == "day" and r["bucket"] == now.date().isoformat()}
    assert today[("all", "all")] == daily[("all", "all", now.date().isoformat())]
