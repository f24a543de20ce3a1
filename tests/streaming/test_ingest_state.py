"""The Redis batch script against real Redis: semantics, idempotence, erasure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import redis

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import UNATTRIBUTED, development_ids
from bouquet.core.settings import Settings
from bouquet.streaming.batch import Batch, BatchBuilder
from bouquet.streaming.state import (
    StateConfig,
    StateWriter,
    applied_event_ids,
    erase_resident,
    read_profile,
)
from bouquet.streaming.synthetic import StreamSpec, stream
from tests.streaming.ingest_helpers import ReferenceState, dump_state

CATALOG = load_catalog()
#: an id the API minted (tests run with the development server secret)
SIGNED = development_ids().mint("v7", "champion")
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


class Rec:
    def __init__(self, value: bytes, offset: int) -> None:
        self.value, self.offset, self.topic, self.partition = value, offset, "t", 0
        self.timestamp, self.key = 1, b"k"


@pytest.fixture
def client(settings: Settings):
    c = redis.Redis.from_url(settings.redis_url)  # the prefix is the test's own
    yield c
    c.close()


def ev(n: int, rid: str, kind: str, minutes: float = 0, **more: object) -> dict:
    event = {"schema_version": 1, "event_id": f"e{n}", "resident_id": rid, "type": kind,
             "ts": (T0 + timedelta(minutes=minutes)).isoformat(), "channel": "app"}
    event.update(more)
    return event


def apply(writer: StateWriter, keys: Keys, events: list[dict]) -> tuple[int, int, list[str]]:
    builder = BatchBuilder(CATALOG, keys)
    batch = Batch()
    for offset, event in enumerate(events):
        builder.add(batch, Rec(json.dumps(event).encode(), offset))
    assert not batch.dead_letters, batch.dead_letters
    return writer.apply(batch.slots)


def test_state_matches_the_reference_and_a_replay_changes_nothing(settings: Settings,
                                                                   client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    events = list(stream(CATALOG, StreamSpec(events=3000, residents=150, erase_rate=0.05)))
    assert any(e["type"] == "erase" for e in events)
    applied, dups, erased = apply(writer, keys, events[:1700])
    apply(writer, keys, events[1700:])
    expected = ReferenceState(CATALOG, settings.redis_key_prefix).apply_all(events).dump()
    state = dump_state(client, settings.redis_key_prefix)
    assert state == expected
    # the whole stream again, in other batch cuts: no second effect anywhere
    assert apply(writer, keys, events[:500])[0] == 0
    applied_again, dups_again, _ = apply(writer, keys, events[500:])
    assert applied_again == 0 and dups_again > 0
    assert dump_state(client, settings.redis_key_prefix) == expected


def test_applied_event_ids_are_those_whose_markers_ingestion_wrote(settings: Settings,
                                                                    client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    events = [ev(n, f"r{n % 4}", "use", n, service_id=CATALOG.service_ids[0])
              for n in range(6)]
    apply(writer, keys, events[:4])
    asked = [(e["event_id"], e["resident_id"]) for e in events]
    assert applied_event_ids(client, keys, asked, StateConfig().dedup_ttl_s,
                             chunk=3) == {"e0", "e1", "e2", "e3"}
    assert applied_event_ids(client, keys, [], StateConfig().dedup_ttl_s) == set()


def test_semantics_of_one_resident(settings: Settings, client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    service = CATALOG.services[0]
    bundle = CATALOG.bundles[0]
    nb = CATALOG.neighbourhood_ids[0]
    apply(writer, keys, [
        ev(1, "ana", "profile", context={"neighbourhood": nb, "student": True}),
        ev(2, "ana", "consent", value=1),
        ev(3, "ana", "view", 1, bundle_id=bundle.id, recommendation_id=SIGNED),
        ev(4, "ana", "subscribe", 10, bundle_id=bundle.id, recommendation_id=SIGNED),
        # an older unsubscribe arriving late must not undo the newer subscribe
        ev(5, "ana", "unsubscribe", 5, bundle_id=bundle.id),
        ev(6, "ana", "dismiss", 2, bundle_id=CATALOG.bundles[1].id),
        ev(7, "ana", "use", 3, service_id=service.id,
           recommendation_id=development_ids().mint("v7", "challenger")),
        # a made-up id (unsigned, or signed by nobody) credits no arm, only "unattributed"
        ev(10, "ana", "click", 4, bundle_id=bundle.id, recommendation_id="v7.champion.aa"),
        ev(11, "ana", "view", 4, bundle_id=bundle.id, recommendation_id="v9.made-up.bb"),
        # a withdrawal with an older time stamp, received later: consent follows the
        # order of receipt, not the time stamps clients write
        ev(8, "ana", "consent", -60, value=0),
    ])
    assert client.smembers(keys.holdings("ana")) == {f"b:{bundle.id}".encode()}
    assert client.smembers(keys.dismissed("ana")) == {CATALOG.bundles[1].id.encode()}
    assert read_profile(client, keys, "ana") == {"neighbourhood": nb, "student": True,
                                                 "consent": False, "contact": False}
    day = (T0 + timedelta(minutes=1)).date().isoformat()
    assert client.sismember(keys.active("day", day, "nb", nb), "ana")
    assert client.sismember(keys.active("day", day, "domain", service.domain.value), "ana")
    assert client.hgetall(keys.funnel("v7", "champion")) == {b"shown": b"1", b"subscribed": b"1"}
    assert client.hgetall(keys.funnel("v7", "challenger")) == {b"used": b"1"}
    assert client.hgetall(keys.funnel(UNATTRIBUTED, UNATTRIBUTED)) == {b"opened": b"1",
                                                                      b"shown": b"1"}
    assert client.smembers(keys.funnel_index()) == {b"v7:champion", b"v7:challenger",
                                                    b"unattributed:unattributed"}
    recent = [json.loads(i) for i in client.lrange(keys.recent("ana"), 0, -1)]
    assert [i["event_id"] for i in recent] == ["e11", "e10", "e7", "e6", "e5", "e4", "e3"]
    assert client.zscore(keys.last_contact(), "ana") == pytest.approx(
        (T0 + timedelta(minutes=10)).timestamp())
    assert client.ttl(keys.recent("ana")) > 0
    assert client.ttl(keys.active("week", "x" if False else _week(T0), "all", "all")) > 0
    # a newer unsubscribe does remove it
    apply(writer, keys, [ev(9, "ana", "unsubscribe", 20, bundle_id=bundle.id)])
    assert client.smembers(keys.holdings("ana")) == set()


def _week(ts: datetime) -> str:
    year, week, _ = ts.date().isocalendar()
    return f"{year}-W{week:02d}"


def test_erase_in_the_middle_of_a_batch_keeps_what_follows(settings: Settings, client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    s1, s2 = CATALOG.service_ids[:2]
    _, _, erased = apply(writer, keys, [
        ev(1, "bo", "view", 1, service_id=s1),
        ev(2, "bo", "subscribe", 2, service_id=s1),
        ev(3, "bo", "erase", 3),
        ev(4, "bo", "view", 4, service_id=s2),
    ])
    assert erased == ["bo"]
    assert [json.loads(i)["event_id"] for i in client.lrange(keys.recent("bo"), 0, -1)] == ["e4"]
    assert not client.exists(keys.holdings("bo"))
    counts = client.hgetall(keys.contacts("day", T0.date().isoformat()))
    assert counts[b"all"] == b"3"  # aggregate counts hold no resident id and stay


def test_erase_resident_forgets_everything_personal(settings: Settings, client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    nb = CATALOG.neighbourhood_ids[1]
    apply(writer, keys, [
        ev(1, "cy", "profile", context={"neighbourhood": nb}),
        ev(2, "cy", "subscribe", 1, service_id=CATALOG.service_ids[0]),
        ev(3, "dee", "view", 1, service_id=CATALOG.service_ids[0]),
    ])
    assert all(client.exists(name) for name in (keys.profile("cy"), keys.holdings("cy")))
    erase_resident(client, keys, "cy")
    erase_resident(client, keys, "cy")  # idempotent
    assert not any(client.exists(name) for name in keys.resident_keys("cy"))
    assert client.zscore(keys.last_contact(), "cy") is None
    for key in client.smembers(keys.active_index()):
        assert not client.sismember(key, "cy")
    assert client.zscore(keys.last_contact(), "dee") is not None
    assert client.sismember(keys.active("day", T0.date().isoformat(), "all", "all"), "dee")


def test_contact_consent_is_its_own_purpose_and_keeps_the_contactable_set(
        settings: Settings, client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    contact = {"purpose": "contact"}
    apply(writer, keys, [
        ev(1, "cy", "consent", value=1),
        ev(2, "cy", "consent", 5, value=1, context=contact, channel="push"),
        ev(3, "cy", "profile", 6, context={"channels": ["push", "sms"],
                                           "quiet_hours": "22:00-07:30"}),
        ev(5, "di", "consent", 2, value=1, context=contact),
    ])
    assert read_profile(client, keys, "cy") == {
        "consent": True, "contact": True, "channels": ("push", "sms"),
        "quiet_hours": "22:00-07:30"}
    assert client.smembers(keys.contactable()) == {b"cy", b"di"}
    # a withdrawal (from the gateway: an SMS "STOP") takes cy out; personalisation stays.
    # It is stamped before the grant but received after it: like personalisation consent,
    # contact consent follows the order of receipt, not the time stamps clients write
    apply(writer, keys, [ev(6, "cy", "consent", 1, value=0, context=contact, channel="sms")])
    assert read_profile(client, keys, "cy")["contact"] is False
    assert read_profile(client, keys, "cy")["consent"] is True
    assert client.smembers(keys.contactable()) == {b"di"}
    # erasure forgets di's consent, record and membership
    client.hset(keys.outreach("di"), "sent", "1790000000")
    apply(writer, keys, [ev(7, "di", "erase", 10)])
    assert not client.exists(keys.outreach("di"), keys.profile("di"))
    assert client.smembers(keys.contactable()) == set()


def test_contact_decisions_and_erasures_in_one_batch_keep_their_order(
        settings: Settings, client) -> None:
    """The contactable set follows each resident's last contact decision in the batch, and
    an erasure drops what came before it, not what follows it."""
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    contact = {"purpose": "contact"}
    apply(writer, keys, [
        ev(1, "gone", "consent", 1, value=1, context=contact),
        ev(2, "gone", "erase", 2),
        ev(3, "back", "erase", 1),
        ev(4, "back", "consent", 2, value=1, context=contact),
        ev(5, "fickle", "consent", 1, value=1, context=contact),
        ev(6, "fickle", "consent", 2, value=0, context=contact),
        ev(7, "firm", "consent", 1, value=0, context=contact),
        ev(8, "firm", "consent", 2, value=1, context=contact),
    ])
    assert client.smembers(keys.contactable()) == {b"back", b"firm"}
    assert "contact" not in read_profile(client, keys, "gone")
    assert read_profile(client, keys, "fickle")["contact"] is False


def test_dead_letters_are_counted_once_per_position(settings: Settings, client) -> None:
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    letters = [("t", 0, 5, "bad_json"), ("t", 0, 6, "bad_json"), ("t", 1, 5, "oversize")]
    assert writer.count_dead_letters(letters) == 3
    assert writer.count_dead_letters(letters) == 0
    assert client.hgetall(keys.dlq_counts()) == {b"bad_json": b"2", b"oversize": b"1"}


def test_an_erase_event_deletes_every_per_resident_kind(settings: Settings, client) -> None:
    """No SCAN in the consumer: the script deletes every kind of RESIDENT_KINDS, atomically
    with the erase event's marker, and nobody else's keys."""
    keys = Keys(settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    for rid in ("ed", "fay"):
        for key in keys.resident_keys(rid):
            client.set(key, "x")
    apply(writer, keys, [ev(2, "ed", "erase", 2)])
    assert not any(client.exists(k) for k in keys.resident_keys("ed"))
    assert all(client.exists(k) for k in keys.resident_keys("fay"))
