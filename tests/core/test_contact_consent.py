"""Contact consent and outreach channels in the event contract and the profile hash."""

from __future__ import annotations

import pytest

from bouquet.core.events import EventRejected, EventType, parse_event
from bouquet.core.profile import consent_payload, decode_profile, profile_payload

BASE = {"schema_version": 1, "event_id": "e-1", "resident_id": "r1",
        "ts": "2026-03-02T08:15:00+01:00", "channel": "app"}


def ev(**fields: object) -> dict:
    return {**BASE, **fields}


def test_consent_has_two_purposes_and_nothing_else_in_its_context() -> None:
    assert parse_event(ev(type="consent", value=1)).context == {}
    given = parse_event(ev(type="consent", value=1, context={"purpose": "contact"}))
    assert given.context == {"purpose": "contact"}
    parse_event(ev(type="consent", value=0, context={"purpose": "personalisation"},
                   channel="sms"))
    for context in ({"purpose": "marketing"}, {"purpose": "contact", "why": "x"},
                    {"scope": "contact"}):
        with pytest.raises(EventRejected) as exc:
            parse_event(ev(type="consent", value=1, context=context))
        assert exc.value.reason == "bad_value"


def test_profile_declares_channels_and_quiet_hours() -> None:
    event = parse_event(ev(type="profile", context={"channels": ["push", "sms"],
                                                    "quiet_hours": "22:30-07:00"}))
    assert event.context["channels"] == ["push", "sms"]
    for bad in ({"channels": []}, {"channels": ["fax"]}, {"channels": ["sms", "sms"]},
                {"quiet_hours": "22h-7h"}, {"quiet_hours": "24:00-07:00"}):
        with pytest.raises(EventRejected):
            parse_event(ev(type="profile", context=bad))


def test_outreach_outcomes_are_contacts_on_outreach_channels() -> None:
    for kind in ("notify", "open", "dismiss"):
        parsed = parse_event(ev(type=kind, bundle_id="maas-urban", channel="email",
                                recommendation_id="v3.outreach.0a1b2c3d4e5f"))
        assert parsed.type == EventType(kind)
    with pytest.raises(EventRejected) as exc:  # an outcome names the offer of the nudge
        parse_event(ev(type="open", channel="push"))
    assert exc.value.reason == "bad_target"


def test_profile_hash_encoding_round_trips_channels_and_contact() -> None:
    payload = profile_payload({"channels": ["push", "email"], "quiet_hours": "21:00-08:00",
                               "student": True, "age_band": None})
    fields = payload.split("\t")
    raw = dict(zip(fields[0::2], fields[1::2], strict=True))
    assert raw == {"channels": "push,email", "quiet_hours": "21:00-08:00", "student": "1"}
    field, value, received = consent_payload("contact", True, 1790000000.0).split("\t")
    raw[field] = value
    raw["contact_ts"] = received
    decoded = decode_profile({k.encode(): v.encode() for k, v in raw.items()})
    assert decoded == {"channels": ("push", "email"), "quiet_hours": "21:00-08:00",
                       "student": True, "contact": True, "consent": False}
    assert consent_payload("personalisation", False, 1.5) == "consent\t0\t1.500"
