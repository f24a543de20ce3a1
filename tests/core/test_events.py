"""The event contract: what is accepted, what is refused, and with which reason code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bouquet.core.catalog import parse_catalog
from bouquet.core.events import (
    EventRejected,
    EventType,
    InteractionEvent,
    check_against_catalog,
    parse_event,
)

GOOD = {
    "schema_version": 1,
    "event_id": "app-0001",
    "resident_id": "r_5b1d0c8e2f",
    "type": "click",
    "bundle_id": "mobility-account",
    "ts": "2026-03-02T08:15:00+01:00",
    "channel": "app",
}

CATALOG = parse_catalog({
    "version": "t1", "city": "Testville",
    "neighbourhoods": [{"id": "north", "name": "North"}],
    "services": [
        {"id": "bus", "name": "Bus", "domain": "mobility", "partner": "Transit",
         "aggregation_factor": "infrastructure", "zones": ["*"],
         "price": {"model": "monthly", "amount_eur": 30}},
        {"id": "bike-share", "name": "Bikes", "domain": "mobility", "partner": "Bikes Co",
         "aggregation_factor": "infrastructure", "zones": ["north"],
         "price": {"model": "per_use", "amount_eur": 1}},
        {"id": "museum", "name": "Museum", "domain": "culture", "partner": "City",
         "aggregation_factor": "data", "zones": ["*"], "price": {"model": "free", "amount_eur": 0}},
    ],
    "bundles": [
        {"id": "mobility-account", "name": "Mobility account", "domain": "mobility",
         "services": ["bus", "bike-share"], "zones": ["*"],
         "price": {"model": "post_paid", "amount_eur": 0, "cap_eur_month": 60}},
    ],
})


def event(**changes: object) -> dict:
    out = dict(GOOD)
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def test_valid_event_is_parsed_and_stored_in_utc() -> None:
    parsed = parse_event(json.dumps(GOOD).encode())
    assert parsed.type is EventType.CLICK
    assert parsed.ts == datetime(2026, 3, 2, 7, 15, tzinfo=UTC)
    record = parsed.to_record()
    assert record["ts"].tzinfo is UTC and record["context"] is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "bad_encoding"),
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (b"x" * 9000, "oversize"),
        (json.dumps(event(schema_version=2)).encode(), "schema_version"),
        (json.dumps(event(event_id=None)).encode(), "missing_field"),
        (json.dumps(event(colour="blue")).encode(), "unknown_field"),
        (json.dumps(event(type="teleport")).encode(), "unknown_event_type"),
        (json.dumps(event(channel="fax")).encode(), "unknown_channel"),
        (json.dumps(event(resident_id="bob@example.org")).encode(), "bad_resident_id"),
        (json.dumps(event(resident_id="a" * 65)).encode(), "bad_resident_id"),
        (json.dumps(event(resident_id="r1}:*")).encode(), "bad_resident_id"),
        (json.dumps(event(event_id=17)).encode(), "bad_event_id"),
        (json.dumps(event(ts="2026-03-02T08:15:00")).encode(), "bad_timestamp"),
        (json.dumps(event(ts="yesterday")).encode(), "bad_timestamp"),
        (json.dumps(event(bundle_id=None)).encode(), "bad_target"),
        (json.dumps(event(type="erase")).encode(), "bad_target"),
        (json.dumps(event(type="rate", value=9)).encode(), "bad_value"),
        (json.dumps(event(value="lots")).encode(), "bad_value"),
        (json.dumps(event(context={"email": "x"})).encode(), "personal_data"),
        (json.dumps(event(context={"note": "call me on +33 6 12 34 56 78"})).encode(), None),
        (json.dumps(event(context={"where": "48.85661, 2.35222"})).encode(), "personal_data"),
        (json.dumps(event(context={"a": {"b": {"c": {"d": 1}}}})).encode(), "bad_context"),
        (json.dumps(event(context={"pad": "x" * 3000})).encode(), "bad_context"),
        (json.dumps(event(bundle_id="Mobility Account")).encode(), "bad_bundle_id"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(raw: bytes, reason: str | None) -> None:
    if reason is None:  # free text that merely contains digits is not a phone number
        parse_event(raw)
        return
    with pytest.raises(EventRejected) as info:
        parse_event(raw)
    assert info.value.reason == reason, info.value.detail


def test_phone_number_value_is_refused() -> None:
    with pytest.raises(EventRejected) as info:
        parse_event(json.dumps(event(context={"contact": "+33 6 12 34 56 78"})))
    assert info.value.reason == "personal_data"


def test_profile_and_consent_events_are_checked() -> None:
    ok = parse_event(event(type="profile", bundle_id=None,
                           context={"neighbourhood": "north", "age_band": "26-40"}))
    assert ok.context["neighbourhood"] == "north"
    for bad in ({"age_band": "young"}, {"favourite": "x"}):
        with pytest.raises(EventRejected):
            parse_event(event(type="profile", bundle_id=None, context=bad))
    with pytest.raises(EventRejected):
        parse_event(event(type="consent", bundle_id=None, value=0.5))
    assert parse_event(event(type="consent", bundle_id=None, value=0)).value == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"bundle_id": "no-such-bundle"}, "unknown_bundle"),
        ({"bundle_id": None, "service_id": "no-such-service"}, "unknown_service"),
        ({"service_id": "museum"}, "service_not_in_bundle"),
        ({"ts": (datetime.now(UTC) + timedelta(hours=2)).isoformat()}, "future_timestamp"),
        ({"ts": "1970-01-01T00:00:00+00:00"}, "ancient_timestamp"),
        ({"type": "profile", "bundle_id": None, "context": {"neighbourhood": "atlantis"}},
         "unknown_neighbourhood"),
    ],
)
def test_catalog_and_clock_rules(changes: dict, reason: str) -> None:
    parsed = parse_event(event(**changes))
    with pytest.raises(EventRejected) as info:
        check_against_catalog(parsed, CATALOG)
    assert info.value.reason == reason


def test_catalog_accepts_a_known_service_in_its_bundle() -> None:
    check_against_catalog(parse_event(event(service_id="bike-share")), CATALOG)


def test_openapi_example_is_itself_valid() -> None:
    example = InteractionEvent.model_config["json_schema_extra"]["examples"][0]
    assert parse_event(example).event_id == example["event_id"]


def test_every_problem_of_an_event_is_reported_at_once() -> None:
    with pytest.raises(EventRejected) as found:
        parse_event({})
    assert found.value.reason == "missing_field"
    for field in ("schema_version", "event_id", "resident_id", "type", "ts", "channel"):
        assert f"{field}: Field required" in found.value.detail, found.value.detail
