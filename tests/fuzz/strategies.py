"""Hypothesis strategies for interaction events: valid ones, and hostile ones that must be
refused — malformed bytes, personal data, keyspace-attacking ids, huge and deeply nested
payloads, wrong types, unknown catalog ids, impossible clocks.

Every hostile example says which *mutation* made it; :func:`oracle` is the contract's own
validation (``parse_event`` + ``check_against_catalog``), so a test can check both that the
pipeline routed each input as the contract says and that no mutation slipped through the
contract itself.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from bouquet.core.catalog import load_catalog
from bouquet.core.events import (
    EVENT_ID_RE,
    ID_RE,
    Channel,
    EventRejected,
    EventType,
    check_against_catalog,
    parse_event,
)

CATALOG = load_catalog()
SERVICES = list(CATALOG.service_ids)
BUNDLES = list(CATALOG.bundles)
CONTACTS = ["view", "click", "subscribe", "use", "pay", "dismiss", "unsubscribe"]
FIELDS = ["schema_version", "event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
          "channel", "value", "recommendation_id", "context"]
REQUIRED = ["schema_version", "event_id", "resident_id", "type", "ts", "channel"]
PERSONAL_KEYS = ["name", "first_name", "lastName", "surname", "email", "e_mail", "mail",
                 "phone", "tel", "address", "street", "lat", "latitude", "lon", "lng",
                 "longitude", "gps", "geo", "coords", "location", "ssn", "iban", "birth_date",
                 "dob", "home_address", "user_email", "gps_trace"]
#: Ids that try to reach other Redis keys, patterns, or break the protocol.
KEYSPACE_IDS = ["*", "r1*", "?", "[a-z]*", "{r1}", "r1}:profile", "r1:profile", "r 1", "",
                "a" * 65, "r1\r\nFLUSHALL", "r1\nDEL x", "..", "../x", "é", "🙂", "r1\x00",
                "bq:rec:current", "%2A"]


def _now() -> datetime:
    return datetime.now(UTC)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid contact event of a resident (unique id, time in the last 300 days)."""
    rid = draw(st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True))
    kind = draw(st.sampled_from(CONTACTS))
    ts = _now() - timedelta(seconds=draw(st.integers(60, 300 * 86400)))
    event: dict[str, Any] = {"schema_version": 1, "event_id": f"ok-{uuid.uuid4().hex}",
                             "resident_id": rid, "type": kind, "ts": ts.isoformat(),
                             "channel": draw(st.sampled_from([c.value for c in Channel]))}
    if kind == "dismiss" or draw(st.booleans()):
        bundle = draw(st.sampled_from(BUNDLES))
        event["bundle_id"] = bundle.id
        if draw(st.booleans()) and kind != "dismiss":
            event["service_id"] = draw(st.sampled_from(list(bundle.services)))
    else:
        event["service_id"] = draw(st.sampled_from(SERVICES))
    if kind == "pay":
        event["value"] = draw(st.floats(0, 500, allow_nan=False))
    if draw(st.booleans()):
        event["context"] = {"screen": draw(st.sampled_from(["home", "map", "offers"])),
                            "n": draw(st.integers(0, 9))}
    return event


def _not(pattern: str) -> st.SearchStrategy[str]:
    regex = re.compile(pattern)
    return st.one_of(st.sampled_from(KEYSPACE_IDS),
                     st.text(max_size=90)).filter(lambda s: not regex.fullmatch(s))


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


@st.composite
def hostile_events(draw: st.DrawFn) -> tuple[bytes | None, str]:
    """(raw message bytes, mutation name) of an input the contract must refuse."""
    base = draw(valid_events())
    base["event_id"] = f"bad-{uuid.uuid4().hex}"
    mutation = draw(st.sampled_from([
        "personal_key", "personal_value", "resident_id", "event_id", "type", "channel", "ts",
        "value", "unknown_field", "missing_field", "big_context", "oversize", "deep",
        "not_object", "garbage", "bad_utf8", "schema_version", "unknown_service",
        "service_not_in_bundle", "rate_without_value", "admin_with_target", "consent_value",
        "profile", "nan"]))
    if mutation == "personal_key":
        key = draw(st.sampled_from(PERSONAL_KEYS))
        base["context"] = {key: draw(st.text(max_size=12))}
    elif mutation == "personal_value":
        n = draw(st.integers(10**8, 10**9 - 1))
        value = draw(st.sampled_from([
            f"user{n}@example.org", f"+33 6 {n % 100:02d} {n // 100 % 100:02d} 12 34",
            f"06{n:08d}"[:10], f"47.{n % 10**5:05d}, 7.{n // 10 % 10**5:05d}",
            f"-12.{n % 10**6:06d};130.{n % 10**4:04d}"]))
        base["context"] = {draw(st.sampled_from(["note", "where", "x", "contact"])): value}
    elif mutation == "resident_id":
        base["resident_id"] = draw(_not(ID_RE))
    elif mutation == "event_id":
        base["event_id"] = draw(_not(EVENT_ID_RE))
    elif mutation == "type":
        base["type"] = draw(st.text(max_size=12).filter(
            lambda s: s not in {t.value for t in EventType}))
    elif mutation == "channel":
        base["channel"] = draw(st.text(max_size=12).filter(
            lambda s: s not in {c.value for c in Channel}))
    elif mutation == "ts":
        # (a number is epoch seconds for pydantic: unambiguous UTC, accepted — not hostile)
        base["ts"] = draw(st.sampled_from([
            1e30, "yesterday", "2026-01-01T10:00:00", "", None,
            (_now() + timedelta(days=2)).isoformat(), "1999-12-31T23:00:00+00:00",
            "2026-13-45T99:99:99Z"]))
    elif mutation == "value":
        base["value"] = draw(st.sampled_from(["abc", 1e12, -1e12, [1], {"v": 1}, True]))
        if base["value"] is True:
            base["type"], base["value"] = "rate", 9
    elif mutation == "unknown_field":
        base[draw(st.text(min_size=1, max_size=15).filter(lambda s: s not in FIELDS))] = 1
    elif mutation == "missing_field":
        del base[draw(st.sampled_from(REQUIRED))]
    elif mutation == "big_context":
        base["context"] = {"pad": "x" * draw(st.integers(2100, 6000))}
    elif mutation == "oversize":
        base["recommendation_id"] = "v1.champion." + "a" * draw(st.integers(8200, 20000))
    elif mutation == "deep":
        base["context"] = _nested(draw(st.integers(4, 60)))
    elif mutation == "not_object":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                         st.text(max_size=10), st.none()))).encode(), mutation
    elif mutation == "garbage":
        raw = draw(st.binary(min_size=1, max_size=200))
        try:
            if isinstance(json.loads(raw), dict):
                raw = b"{" + raw
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        return raw, mutation
    elif mutation == "bad_utf8":
        text = json.dumps(base).encode()
        return text.replace(b'"channel"', b'"ch\xffannel"', 1), mutation
    elif mutation == "schema_version":
        base["schema_version"] = draw(st.sampled_from([0, 2, "1", None, 1.5, []]))
    elif mutation == "unknown_service":
        base.pop("bundle_id", None)
        base["service_id"] = "no-such-" + draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))
    elif mutation == "service_not_in_bundle":
        bundle = draw(st.sampled_from(BUNDLES))
        base["bundle_id"] = bundle.id
        base["service_id"] = draw(st.sampled_from([s for s in SERVICES
                                                   if s not in bundle.services]))
        base["type"] = "click"
    elif mutation == "rate_without_value":
        base["type"] = "rate"
        base.pop("value", None)
    elif mutation == "admin_with_target":
        base["type"] = draw(st.sampled_from(["erase", "consent", "profile"]))
        base["value"] = 1
        base["service_id"] = SERVICES[0]
    elif mutation == "consent_value":
        base.update(type="consent", value=draw(st.sampled_from([2, -1, 0.5])))
        base.pop("service_id", None)
        base.pop("bundle_id", None)
    elif mutation == "profile":
        base.update(type="profile", context=draw(st.sampled_from([
            {"neighbourhood": "atlantis"}, {"age_band": "ancient"}, {"household": "castle"},
            {"student": "maybe"}, {"shoe_size": 42}])))
        base.pop("service_id", None)
        base.pop("bundle_id", None)
        base.pop("value", None)
    elif mutation == "nan":
        text = json.dumps({**base, "type": "pay", "value": 1.0})
        return text.replace('"value": 1.0', '"value": NaN').encode(), mutation
    return json.dumps(base).encode(), mutation


def oracle(raw: bytes | None, max_bytes: int = 8192) -> str | None:
    """The contract's verdict: None for a valid event, else the reason code."""
    if not raw:
        return "empty_message"
    try:
        event = parse_event(raw, max_bytes=max_bytes)
        check_against_catalog(event, CATALOG)
    except EventRejected as exc:
        return exc.reason
    return None
