"""The pieces the consumer and publish call: the cascade after ``erase`` events, the late-event
mask, and publish leaving erased residents out."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pyarrow.parquet as pq

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import read_events
from bouquet.core.keys import Keys
from bouquet.privacy.audit import AuditLog, resident_ref
from bouquet.privacy.erasure import (
    INGEST_ACTOR,
    ErasureCascade,
    ErasureRegister,
    without_erased,
)
from bouquet.streaming.batch import Batch, BatchBuilder
from tests.privacy.helpers import ingest_until_idle, produce_events
from tests.serving.support import publish, redis_client, small_model

CATALOG = load_catalog()


def test_after_erase_records_the_register_and_clears_every_published_version(settings) -> None:
    model = small_model(CATALOG)
    first = publish(settings, model, model_version="v1")
    second = publish(settings, model, model_version="v2")
    client = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    cascade = ErasureCascade(settings, client)
    erased_at = time.time() - 60
    assert cascade.after_erase(["r3", ("r4", erased_at)]) == 8  # 2 residents × 2 kinds × 2
    for version in (first.version, second.version):
        for rid in ("r3", "r4"):
            assert not client.exists(keys.recs(version, rid, "b"), keys.recs(version, rid, "s"))
        assert client.exists(keys.recs(version, "r5", "b"))
    register = ErasureRegister.for_settings(settings)
    assert register.cutoff("r4") == erased_at and register.cutoff("r3") >= erased_at
    # the consumer's question before a batch: who of these is on record, and since when
    batch = _batch([("r3", erased_at - 10), ("r5", erased_at - 10), ("r4", erased_at - 1),
                    ("r4", erased_at + 1)])
    on_record = cascade.erased_among(batch.resident_ids())
    assert on_record == {"r3": register.cutoff("r3"), "r4": erased_at}
    assert batch.drop_late(on_record) == 2
    assert [row[0] for row in batch.rows] == ["e1", "e3"]  # r5, and r4 after its erasure
    client.close()


def _batch(events: list[tuple[str, float]]) -> Batch:
    """A batch of clicks ``(resident id, epoch s)``, event ids e0, e1, … in order."""
    builder, batch = BatchBuilder(CATALOG, Keys("t:")), Batch()
    for i, (rid, at) in enumerate(events):
        event = _event(rid, "click", datetime.fromtimestamp(at, UTC), CATALOG.services[0].id)
        event["event_id"] = f"e{i}"
        builder.add(batch, SimpleNamespace(value=json.dumps(event).encode(), offset=i,
                                           topic="t", partition=0, timestamp=1, key=None))
    return batch


def test_publish_leaves_out_residents_erased_after_the_model_was_trained(settings) -> None:
    model = small_model(CATALOG)
    register = ErasureRegister.for_settings(settings)
    trained = time.time() - 3600
    register.record("r1", trained + 60, "test")  # erased after training: left out
    register.record("r2", trained - 60, "test")  # erased before: the model only has new data
    filtered, left_out = without_erased(model, register, created_at=trained)
    assert left_out == ["r1"]
    assert "r1" not in filtered.resident_ids and "r2" in filtered.resident_ids
    assert len(filtered.resident_ids) == filtered.resident_factors.shape[0] == 49
    row = list(model.resident_ids).index("r7")
    assert (filtered.resident_factors[list(filtered.resident_ids).index("r7")]
            == model.resident_factors[row]).all()
    conservative, gone = without_erased(model, register)  # training time unknown
    assert gone == ["r1", "r2"] and len(conservative.resident_ids) == 48


def _event(rid: str, kind: str, at: datetime, service_id: str | None = None) -> dict:
    return {"schema_version": 1, "event_id": uuid.uuid4().hex, "resident_id": rid,
            "type": kind, "service_id": service_id, "ts": at.isoformat(), "channel": "app"}


def test_the_consumer_cascades_erase_events_and_drops_late_data(settings) -> None:
    """Through Kafka and the real consumer wired as ``bouquet ingest`` wires it: the
    ``erase`` event reaches the register and the published lists, and events of the erased
    resident time-stamped before the erasure — in the same batch, or arriving later — are
    never written; the resident's events after the erasure, and other residents', are."""
    model = small_model(CATALOG)
    published = publish(settings, model, model_version="v1")
    client = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    service = CATALOG.services[0].id
    erased_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    before, after = erased_at - timedelta(minutes=30), erased_at + timedelta(minutes=30)
    first = [_event("r3", "click", before, service), _event("r3", "erase", erased_at),
             _event("r3", "use", before - timedelta(minutes=1), service),  # late, same batch
             _event("r5", "click", before, service)]
    produce_events(settings, first)
    stats = ingest_until_idle(settings, erasure=ErasureCascade(settings, client))
    # the use after the erase is late; the click before it is applied, then erased (as
    # when the two land in different batches) and hidden from readers
    assert stats.erased_late == 1
    assert ErasureRegister.for_settings(settings).cutoff("r3") == erased_at.timestamp()
    assert not client.exists(keys.recs(published.version, "r3", "b"))
    assert client.exists(keys.recs(published.version, "r5", "b"))
    # an erasure that came over the topic, not through the API, is audited by the consumer
    audited = [(r["action"], r["actor"], r["target"]) for r in AuditLog(settings).tail(5)]
    assert audited == [("erasure", INGEST_ACTOR, f"resident:{cascade_ref(settings, 'r3')}")]

    second = [_event("r3", "view", before, service),  # a kiosk syncing late: dropped
              _event("r3", "click", after, service)]  # the resident came back: kept
    produce_events(settings, second)
    stats = ingest_until_idle(settings, erasure=ErasureCascade(settings, client))
    assert stats.erased_late == 1
    logged = pq.read_table(settings.event_log_path).to_pylist()
    ids = {row["event_id"] for row in logged}
    assert ids == {first[i]["event_id"] for i in (0, 1, 3)} | {second[1]["event_id"]}
    assert [e["event_id"] for e in read_events(settings.event_log_path).to_dict("records")
            if e["resident_id"] == "r3"] == [second[1]["event_id"]]
    assert len(AuditLog(settings).tail(5)) == 1  # audited once, however often it is seen
    client.close()


def cascade_ref(settings, resident_id: str) -> str:
    return resident_ref(resident_id, settings.pseudonym_secret)[:16]


def test_an_erasure_from_any_producer_takes_the_newest_time_seen_as_its_cutoff() -> None:
    """An ``erase`` event stamped before events already seen of its resident (earlier in
    the batch, or in the real-time state) is moved to the newest of them before anything is
    written, so a late copy stamped in between is erased data, not new data."""
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    service = CATALOG.services[0].id
    stream = [_event("r1", "use", t + timedelta(minutes=3), service),  # a clock ahead
              _event("r1", "erase", t), _event("r1", "click", t + timedelta(minutes=2), service),
              _event("r2", "erase", t), _event("r2", "view", t + timedelta(minutes=1), service),
              _event("r3", "erase", t)]
    builder, batch = BatchBuilder(CATALOG, Keys("t:")), Batch()
    for offset, event in enumerate(stream):
        builder.add(batch, SimpleNamespace(value=json.dumps(event).encode(), offset=offset,
                                           topic="t", partition=0, timestamp=1, key=None))
    seen = {"r2": (t + timedelta(minutes=5)).timestamp()}  # the real-time state's newest
    assert batch.extend_erasures(seen) == 2
    assert dict(batch.erasures()) == {"r1": (t + timedelta(minutes=3)).timestamp(),
                                      "r2": (t + timedelta(minutes=5)).timestamp(),
                                      "r3": t.timestamp()}
    assert batch.drop_late({}) == 2  # r1's click and r2's view: erased data
    assert [row[2] for row in batch.rows] == ["use", "erase", "erase", "erase"]
