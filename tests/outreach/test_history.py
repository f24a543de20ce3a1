"""What the planner reads of the event log is what read_events shows: each event once,
erasures applied, local hours across a daylight-saving change; and the outcomes of nudges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import EventLog, read_events
from bouquet.core.recommendation import development_ids
from bouquet.outreach.history import read_history

CATALOG = load_catalog()
#: Sunday 29 March 2026, 01:00 UTC: Paris moves from UTC+1 to UTC+2
CHANGE = datetime(2026, 3, 29, 1, tzinfo=UTC)


def row(n: int, rid: str, kind: str, ts: datetime, **more) -> dict:
    out = {"event_id": f"h{n}", "resident_id": rid, "type": kind, "service_id": "bike-share",
           "bundle_id": None, "ts": ts, "channel": "app", "value": None,
           "recommendation_id": None, "context": None, "schema_version": 1}
    out.update(more)
    return out


def test_history_is_read_events_by_local_hour(tmp_path) -> None:
    log = EventLog(tmp_path)
    before, after = CHANGE - timedelta(days=2), CHANGE + timedelta(days=2)
    events = [
        row(1, "ann", "use", before.replace(hour=17)),  # 18:00 in Paris (UTC+1)
        row(2, "ann", "use", after.replace(hour=16)),  # 18:00 in Paris (UTC+2)
        row(3, "ann", "view", after.replace(hour=16, minute=30)),
        row(4, "ann", "notify", after.replace(hour=3)),  # sent by Bouquet: not her hour
        row(5, "bob", "use", after.replace(hour=8)),
        row(6, "cyd", "use", after.replace(hour=8)),
        row(7, "cyd", "erase", after.replace(hour=9)),  # hides cyd's use before it
        row(8, "cyd", "use", after.replace(hour=10)),  # after the erasure: new data
        row(9, "bob", "use", before.replace(hour=8), service_id="tram"),
    ]
    log.append(events)
    log.append([events[4]])  # a batch written twice (a crash before the commit)
    now = (CHANGE + timedelta(days=5)).timestamp()
    history = read_history(tmp_path, CATALOG, ["ann", "bob", "cyd", "dan"], now, 30,
                           "Europe/Paris")
    # each once; cyd's use before her erasure and the erase event itself gone
    assert history.events == len(read_events(tmp_path)) == 7
    ann, bob, cyd, dan = history.hours
    assert ann[18] == 3 and ann.sum() == 3
    assert bob[10] == 1 and bob[9] == 1 and bob.sum() == 2  # 08:00 UTC, before/after
    assert cyd[12] == 1 and cyd.sum() == 1
    assert dan.sum() == 0


def test_outcomes_of_nudges_are_found_by_their_verified_recommendation_id(tmp_path) -> None:
    at = datetime(2026, 5, 4, 9, tzinfo=UTC)
    # a nudge's id as the planner mints it, another answer's, and a made-up nudge id
    ref = development_ids().mint("v2", "outreach")
    other = development_ids().mint("v2", "champion")
    forged = "v2.outreach." + "0" * 36
    EventLog(tmp_path).append([
        row(1, "ann", "notify", at, service_id=None, bundle_id="maas-urban", channel="push",
            recommendation_id=ref),
        row(2, "ann", "open", at + timedelta(hours=1), service_id=None,
            bundle_id="maas-urban", channel="push", recommendation_id=ref),
        row(3, "ann", "subscribe", at + timedelta(hours=2), service_id=None,
            bundle_id="maas-urban", recommendation_id=ref),
        row(4, "ann", "open", at, service_id=None, bundle_id="maas-urban", channel="push",
            recommendation_id=other),  # not a nudge
        row(5, "ann", "notify", at, service_id=None, bundle_id="maas-urban", channel="push",
            recommendation_id=forged),  # not minted here: teaches nothing
    ])
    history = read_history(tmp_path, CATALOG, ["ann"], (at + timedelta(days=3)).timestamp(),
                           30, "Europe/Paris")
    outcomes = history.outcomes
    assert outcomes.delivered["recommendation_id"].tolist() == [ref]
    assert outcomes.opened_ids == {ref} and outcomes.converted == {ref}
    bundle = list(CATALOG.bundle_ids).index("maas-urban")
    assert outcomes.delivered["offer"].tolist() == [bundle]
    assert outcomes.delivered["channel"].tolist() == [0]  # push
