"""Export and erasure reach every key of a resident without SCANning the keyspace: the
per-resident keys are the kinds ``Keys`` lists, and version pointers are on record in the
published versions' meta hashes. (A SCAN walks millions of de-duplication markers and
blocks Redis while it does.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import redis

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import RESIDENT_KINDS, Keys
from bouquet.privacy.erasure import cascade, published_versions
from bouquet.privacy.export import export_resident
from bouquet.streaming.batch import Batch, BatchBuilder
from bouquet.streaming.state import StateWriter
from tests.serving.support import publish, small_model

CATALOG = load_catalog()


def apply_events(client: redis.Redis, keys: Keys, events: list[dict]) -> None:
    """Apply events to the real-time state as the consumer does."""
    builder, batch = BatchBuilder(CATALOG, keys), Batch()
    for offset, event in enumerate(events):
        builder.add(batch, SimpleNamespace(value=json.dumps(event).encode(), offset=offset,
                                           topic="t", partition=0, timestamp=1, key=None))
    StateWriter(client, keys).apply(batch.slots)


def ev(n: int, kind: str, **more: object) -> dict:
    return {"schema_version": 1, "event_id": f"e{n}", "resident_id": "r1", "type": kind,
            "ts": datetime.now(UTC).isoformat(), "channel": "app", **more}


class NoScan(redis.Redis):
    """A client that refuses every command walking the keyspace."""

    def scan(self, *args, **kwargs):  # scan_iter goes through scan
        raise AssertionError("SCAN of the keyspace")

    def keys(self, *args, **kwargs):
        raise AssertionError("KEYS of the keyspace")


def test_export_and_erasure_never_scan_the_keyspace(settings) -> None:
    model = small_model(CATALOG)
    publish(settings, model, model_version="v1")
    challenger = publish(settings, model, model_version="v2", pointer="challenger")
    keys = Keys(settings.redis_key_prefix)
    plain = redis.Redis.from_url(settings.redis_url)
    apply_events(plain, keys, [
        ev(1, "profile", context={"neighbourhood": CATALOG.neighbourhood_ids[0]}),
        ev(2, "consent", value=1),
        ev(3, "subscribe", bundle_id=CATALOG.bundles[0].id),
        ev(4, "dismiss", bundle_id=CATALOG.bundles[1].id),
    ])
    plain.hset(keys.outreach("r1"), "sent", "1790000000")  # the outreach planner's record
    client = NoScan.from_url(settings.redis_url)
    document = export_resident(settings, client, "r1")
    assert {r["pointer"] for r in document["recommendations"]} == {"current", "challenger"}
    assert all(r["bundles"] for r in document["recommendations"])
    assert document["realtime"]["keys"] == sorted(keys.resident_keys("r1"))
    assert challenger.version in published_versions(client, keys)

    report = cascade(settings, client, "r1", at=datetime.now(UTC), source="test")
    assert report.errors == [] and report.published_lists_deleted == 4  # 2 versions × b, s
    assert not any(plain.exists(getattr(keys, kind)("r1")) for kind in RESIDENT_KINDS)
    assert plain.exists(keys.recs(challenger.version, "r2", "b"))
    client.close()
    plain.close()
