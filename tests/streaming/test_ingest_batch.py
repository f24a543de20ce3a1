"""Batch building without services: every malformed input gets its precise reason."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import SCHEMA
from bouquet.core.events import parse_event
from bouquet.core.keys import Keys
from bouquet.core.recommendation import development_ids
from bouquet.streaming.batch import Batch, BatchBuilder, recent_item
from bouquet.streaming.consumer import dead_letter_headers

CATALOG = load_catalog()
SERVICE = CATALOG.services[0].id
BUNDLE = CATALOG.bundles[0]
OTHER_SERVICE = next(s for s in CATALOG.service_ids if s not in BUNDLE.services)
NOW = datetime.now(UTC)


@dataclass
class Record:
    """The attributes of kafka-python's ConsumerRecord that the builder reads."""

    value: bytes | None
    offset: int = 0
    topic: str = "t"
    partition: int = 0
    timestamp: int | None = 1
    key: bytes | None = b"r1"


def valid(**changes: object) -> dict:
    event = {"schema_version": 1, "event_id": "ev-1", "resident_id": "r1", "type": "click",
             "service_id": SERVICE, "ts": (NOW - timedelta(hours=1)).isoformat(),
             "channel": "app"}
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def enc(event: dict) -> bytes:
    return json.dumps(event).encode()


def deep(n: int) -> dict:
    value: dict = {"x": 1}
    for _ in range(n):
        value = {"x": value}
    return value


#: (kind of malformed input, raw bytes, expected reason code)
MALFORMED: list[tuple[str, bytes | None, str]] = [
    ("not JSON", b"{not json", "bad_json"),
    ("not UTF-8", b"\xff\xfe\x00{", "bad_encoding"),
    ("a JSON array", b"[1, 2, 3]", "not_an_object"),
    ("a JSON string", b'"click"', "not_an_object"),
    ("empty value", b"", "empty_message"),
    ("tombstone", None, "empty_message"),
    ("oversize", enc(valid(context={"pad": "x" * 9000})), "oversize"),
    ("schema version 2", enc(valid(schema_version=2)), "schema_version"),
    ("missing event_id", enc({k: v for k, v in valid().items() if k != "event_id"}),
     "missing_field"),
    ("unknown field", enc(valid(colour="red")), "unknown_field"),
    ("e-mail in context", enc(valid(context={"note": "jane@example.org"})), "personal_data"),
    ("name key in context", enc(valid(context={"first_name": "Jane"})), "personal_data"),
    ("GPS in context", enc(valid(context={"where": "47.75012, 7.33589"})), "personal_data"),
    ("contact without target", enc(valid(service_id=None)), "bad_target"),
    ("consent with a service", enc(valid(type="consent", value=1)), "bad_target"),
    ("rating of 7", enc(valid(type="rate", value=7)), "bad_value"),
    ("consent of 5", enc(valid(type="consent", service_id=None, value=5)), "bad_value"),
    ("resident id with a space", enc(valid(resident_id="r 1")), "bad_resident_id"),
    ("resident id that is a number", enc(valid(resident_id=12)), "bad_resident_id"),
    ("event id with a slash", enc(valid(event_id="a/b")), "bad_event_id"),
    ("naive timestamp", enc(valid(ts="2026-01-01T10:00:00")), "bad_timestamp"),
    ("not a timestamp", enc(valid(ts="yesterday")), "bad_timestamp"),
    ("timestamp as epoch seconds", enc(valid(ts=1_764_000_000)), "bad_timestamp"),
    ("context too deep", enc(valid(context=deep(4))), "bad_context"),
    ("unknown channel", enc(valid(channel="pigeon")), "unknown_channel"),
    ("unknown event type", enc(valid(type="like")), "unknown_event_type"),
    ("malformed service id", enc(valid(service_id="Bike Share")), "bad_service_id"),
    ("malformed bundle id", enc(valid(service_id=None, bundle_id="X!")), "bad_bundle_id"),
    ("malformed recommendation id", enc(valid(recommendation_id="a b")),
     "bad_recommendation_id"),
    ("unknown service", enc(valid(service_id="no-such-service")), "unknown_service"),
    ("unknown bundle", enc(valid(service_id=None, bundle_id="no-such-bundle")),
     "unknown_bundle"),
    ("service not in bundle", enc(valid(service_id=OTHER_SERVICE, bundle_id=BUNDLE.id)),
     "service_not_in_bundle"),
    ("unknown neighbourhood", enc(valid(type="profile", service_id=None,
                                        context={"neighbourhood": "atlantis"})),
     "unknown_neighbourhood"),
    ("a day in the future", enc(valid(ts=(NOW + timedelta(days=1)).isoformat())),
     "future_timestamp"),
    ("before 2000", enc(valid(ts="1999-12-31T23:00:00+00:00")), "ancient_timestamp"),
    ("bad UTF-8 inside a key", enc(valid()).replace(b'"channel"', b'"ch\xffannel"'),
     "bad_encoding"),
    ("bad UTF-8 inside a value", enc(valid()).replace(b'"r1"', b'"r\xff1"'), "bad_encoding"),
    ("value is NaN", b'{"schema_version":1,"event_id":"e","resident_id":"r","type":"pay",'
     b'"service_id":"' + SERVICE.encode() + b'","ts":"2026-01-01T00:00:00Z","channel":"app",'
     b'"value":NaN}', "bad_value"),
]


def test_there_are_at_least_twenty_kinds_of_malformed_input() -> None:
    assert len(MALFORMED) >= 20
    assert len({reason for _, _, reason in MALFORMED}) >= 20


@pytest.mark.parametrize(("kind", "raw", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_becomes_a_dead_letter_with_its_reason(kind: str, raw: bytes | None,
                                                               reason: str) -> None:
    builder = BatchBuilder(CATALOG, Keys("t:"))
    batch = Batch()
    builder.add(batch, Record(enc(valid(event_id="before")), offset=1), NOW)
    builder.add(batch, Record(raw, offset=2), NOW)
    builder.add(batch, Record(enc(valid(event_id="after")), offset=3), NOW)
    assert batch.columns["event_id"] == ["before", "after"], kind
    assert len(batch.dead_letters) == 1
    letter = batch.dead_letters[0]
    assert (letter.reason, letter.offset, letter.value) == (reason, 2, raw)
    assert letter.detail
    assert batch.offsets == {("t", 0): 4}
    headers = dict(dead_letter_headers(letter))
    assert headers["reason"] == reason.encode()
    assert headers["source_offset"] == b"2" and headers["source_topic"] == b"t"


def test_within_batch_duplicates_are_dropped() -> None:
    builder = BatchBuilder(CATALOG, Keys("t:"))
    batch = Batch()
    for offset in range(3):
        builder.add(batch, Record(enc(valid()), offset=offset), NOW)
    assert batch.events == 1 and batch.in_batch_duplicates == 2 and batch.records == 3


def test_log_columns_match_the_event_contract() -> None:
    event = valid(type="use", value=2.5,
                  recommendation_id=development_ids().mint("v1", "champion"),
                  context={"screen": "home", "a": [1, 2]})
    builder = BatchBuilder(CATALOG, Keys("t:"))
    batch = Batch()
    builder.add(batch, Record(enc(event)), NOW)
    expected = parse_event(enc(event)).to_record()
    row = {name: values[0] for name, values in batch.columns.items()}
    assert row == expected
    table = batch.table()
    assert isinstance(table, pa.Table)
    assert table.schema.equals(pa.schema([SCHEMA.field(n) for n in table.column_names]))


def test_recent_item_is_json_with_the_documented_fields() -> None:
    event = parse_event(enc(valid(bundle_id=None, recommendation_id="v2.champion.x1",
                                  type="pay", value=12.5)))
    item = json.loads(recent_item(event))
    assert item == {"event_id": "ev-1", "type": "pay", "ts": pytest.approx(event.ts.timestamp()),
                    "channel": "app", "service_id": SERVICE, "recommendation_id": "v2.champion.x1",
                    "value": 12.5}


# --- the fast path accepts only what parse_event accepts, with the same values ------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bouquet.streaming.batch import fast_event  # noqa: E402

_TS_TEXT = st.one_of(
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
                  r"(Z|[+-][0-9]{2}:[0-9]{2})", fullmatch=True),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**10), st.floats(),
                 st.text(max_size=12), st.lists(st.integers(), max_size=2))
_FIELD_VALUES = {
    "schema_version": st.one_of(st.just(1), _ANY),
    "event_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,80}", fullmatch=True), _ANY),
    "resident_id": st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), _ANY),
    "type": st.one_of(st.sampled_from(["view", "click", "subscribe", "use", "pay", "rate",
                                       "dismiss", "unsubscribe", "erase", "consent",
                                       "profile", "notify", "open"]), _ANY),
    "service_id": st.one_of(st.just(SERVICE), st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}",
                                                            fullmatch=True), _ANY),
    "bundle_id": st.one_of(st.just(BUNDLE.id), _ANY),
    "ts": _TS_TEXT,
    "channel": st.one_of(st.sampled_from(["app", "web", "kiosk", "system", "push", "sms"]),
                         _ANY),
    "value": st.one_of(st.floats(allow_nan=True), st.integers(-10**12, 10**12), _ANY),
    "recommendation_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,120}", fullmatch=True),
                                   _ANY),
    "context": st.one_of(st.just({}), st.dictionaries(st.text(max_size=5), _ANY, max_size=2),
                         st.fixed_dictionaries({"purpose": st.sampled_from(
                             ["contact", "personalisation", "marketing"])})),
    "extra": _ANY,
}


@settings(max_examples=400, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), st.none(), max_size=5)
       .flatmap(lambda keys: st.fixed_dictionaries({k: _FIELD_VALUES[k] for k in keys})),
       drop=st.sets(st.sampled_from(sorted(_FIELD_VALUES)), max_size=2))
def test_fast_path_accepts_only_what_parse_event_accepts(changes: dict, drop: set) -> None:
    event = {**valid(), **changes}
    for name in drop:
        event.pop(name, None)
    raw = json.dumps(event, default=str).encode()
    fast = fast_event(raw, 8192)
    if fast is None:
        return
    slow = parse_event(raw)
    for name in FastEventFields:
        assert getattr(fast, name) == getattr(slow, name), name


FastEventFields = ("event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
                   "channel", "value", "recommendation_id", "context", "schema_version")


def test_fast_path_takes_the_plain_events_of_a_stream() -> None:
    from bouquet.streaming.synthetic import StreamSpec, encode, stream

    raws = [encode(e)[1] for e in stream(CATALOG, StreamSpec(events=500))]
    taken = sum(fast_event(r, 8192) is not None for r in raws)
    assert taken > 0.8 * len(raws)
    for raw in raws:
        fast = fast_event(raw, 8192)
        if fast is not None:
            assert parse_event(raw).to_record()["ts"] == fast.ts


def test_drop_late_keeps_what_came_before_an_erasure_and_drops_late_data_after_it() -> None:
    at = NOW - timedelta(hours=1)
    builder, batch = BatchBuilder(CATALOG, Keys("t:")), Batch()
    events = [valid(event_id="before", ts=(at - timedelta(minutes=2)).isoformat()),
              valid(event_id="erase", type="erase", service_id=None, ts=at.isoformat()),
              valid(event_id="late", ts=(at - timedelta(minutes=1)).isoformat()),
              valid(event_id="new", ts=(at + timedelta(minutes=1)).isoformat()),
              valid(event_id="other", resident_id="r2",
                    ts=(at - timedelta(minutes=1)).isoformat()),
              valid(event_id="on-record", resident_id="r3",
                    ts=(at - timedelta(minutes=1)).isoformat())]
    for offset, event in enumerate(events):
        builder.add(batch, Record(enc(event), offset=offset), NOW)
    assert batch.has_erasures and batch.erasures() == [("r1", at.timestamp())]
    slots = dict(zip((row[0] for row in batch.rows), batch.slots, strict=True))
    assert batch.drop_late({"r3": at.timestamp()}) == 2
    kept = [row[0] for row in batch.rows]
    assert kept == ["before", "erase", "new", "other"]
    assert batch.slots == [slots[event_id] for event_id in kept]  # rows and slots together


def test_drop_late_without_erasures_leaves_the_batch_alone() -> None:
    builder, batch = BatchBuilder(CATALOG, Keys("t:")), Batch()
    builder.add(batch, Record(enc(valid())), NOW)
    assert not batch.has_erasures and batch.erasures() == []
    assert batch.drop_late({}) == 0 and batch.events == 1
