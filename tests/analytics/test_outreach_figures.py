"""Outreach figures on a hand-made log and ledger: exact counts, the lift by hand, and the
small-cell rules."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from bouquet.analytics.funnel import newcombe_difference
from bouquet.analytics.outreach import OutreachFigures, load_outreach_data, plan_preview
from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import EventLog
from bouquet.core.outreach import LEDGER_SCHEMA, NudgeLedger, in_holdout
from bouquet.core.recommendation import development_ids

CATALOG = load_catalog()
MONDAY = datetime(2026, 11, 2, 9, tzinfo=UTC)  # ISO week 2026-W45
NB = CATALOG.neighbourhood_ids
SALT, SHARE = "figures", 0.3


def record(n: int, rid: str, kind: str, ts: datetime, **more) -> dict:
    row = {"event_id": f"e{n}", "resident_id": rid, "type": kind, "service_id": None,
           "bundle_id": None, "ts": ts, "channel": "app", "value": None,
           "recommendation_id": None, "context": None, "schema_version": 1}
    row.update(more)
    return row


@pytest.fixture
def stores(tmp_path):
    people = [f"p{i:02d}" for i in range(40)]
    rows, n = [], 0
    for i, rid in enumerate(people):
        start = MONDAY - timedelta(weeks=6)
        rows.append(record(n := n + 1, rid, "profile", start, context=json.dumps(
            {"neighbourhood": NB[i % 2]})))
        rows.append(record(n := n + 1, rid, "consent", start, value=1.0,
                           context='{"purpose":"contact"}'))
        if i % 4 == 0:  # a weekly user of bike share over the last four weeks
            for w in range(4):
                rows.append(record(n := n + 1, rid, "use", MONDAY - timedelta(weeks=w),
                                   service_id="bike-share"))
    nudged = people[:12]
    for i, rid in enumerate(nudged):
        ref = development_ids().mint("v1", "outreach", nonce=i)
        rows.append(record(n := n + 1, rid, "notify", MONDAY + timedelta(hours=1),
                           bundle_id="maas-urban", channel="push", recommendation_id=ref))
        if i < 6:
            rows.append(record(n := n + 1, rid, "open", MONDAY + timedelta(hours=2),
                               bundle_id="maas-urban", channel="push", recommendation_id=ref))
        if i < 2:  # converted twice: counted once
            for h in (3, 4):
                rows.append(record(n := n + 1, rid, "subscribe", MONDAY + timedelta(hours=h),
                                   bundle_id="maas-urban", recommendation_id=ref))
    rows.append(record(n := n + 1, people[20], "consent", MONDAY + timedelta(days=1),
                       value=0.0, context='{"purpose":"contact"}', channel="sms"))
    EventLog(tmp_path / "log").append(rows)
    ledger = NudgeLedger(tmp_path / "ledger")
    table = {name: [None] * 15 for name in LEDGER_SCHEMA.names}
    table.update({"plan_date": [date(2026, 11, 2)] * 15, "send_at": [MONDAY] * 15,
                  "segment": [NB[i % 2] for i in range(15)], "domain": ["mobility"] * 15,
                  "channel": ["push"] * 15, "planned_at": [MONDAY] * 15})
    ledger.write(date(2026, 11, 2), pa.table({k: pa.array(v, LEDGER_SCHEMA.field(k).type)
                                              for k, v in table.items()}))
    return tmp_path, people


def test_funnel_counts_each_nudge_once_per_stage(stores) -> None:
    root, people = stores
    figures = OutreachFigures(root / "log", root / "ledger", CATALOG, salt=SALT, share=SHARE,
                              k=1)
    week = [r for r in figures.funnel(weeks=1).rows if r["dimension"] == "all"][-1]
    assert week["week"] == "2026-W45"
    assert (week["planned"], week["sent"], week["opened"], week["converted"],
            week["dismissed"]) == (15, 12, 6, 2, 0)
    assert week["open_rate"] == 0.5 and week["conversion_rate"] == pytest.approx(1 / 3)
    assert (week["contactable"], week["opted_out"]) == (40, 1)
    by_domain = figures.funnel(by="domain", weeks=1).rows
    assert [r["value"] for r in by_domain] == ["mobility"] and by_domain[0]["opted_out"] is None


def test_lift_is_the_difference_of_weekly_shares_by_hand(stores) -> None:
    root, people = stores
    figures = OutreachFigures(root / "log", root / "ledger", CATALOG, salt=SALT, share=SHARE,
                              k=1)
    row = [r for r in figures.lift(weeks=1).rows if r["dimension"] == "all"][-1]
    held = set(p for p, h in zip(people, in_holdout(people, SALT, SHARE), strict=True) if h)
    weekly = {p for i, p in enumerate(people) if i % 4 == 0}
    assert row["holdout_residents"] == len(held)
    assert row["holdout_weekly"] == len(weekly & held)
    assert row["nudged_weekly"] == len(weekly - held)
    d, low, high = newcombe_difference(len(weekly - held), 40 - len(held),
                                       len(weekly & held), len(held))
    assert row["difference"] == pytest.approx(float(d), abs=1e-6)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(float(low), abs=1e-6),
                                               pytest.approx(float(high), abs=1e-6))
    assert {r["value"] for r in figures.lift(by="domain", weeks=1).rows} == {"mobility"}


def test_small_cells_are_hidden(stores) -> None:
    root, _ = stores
    figures = OutreachFigures(root / "log", root / "ledger", CATALOG, salt=SALT, share=SHARE,
                              k=5)
    week = [r for r in figures.funnel(weeks=1).rows if r["dimension"] == "all"][-1]
    assert week["converted"] is None and week["conversion_rate"] is None
    assert week["opted_out"] is None and "opted_out" in week["suppressed"]
    assert week["planned"] == 15
    data = load_outreach_data(root / "log", root / "ledger", CATALOG, SALT, SHARE)
    assert not data.empty
    nudges = {"channel": ["push"] * 6 + ["sms"] * 2, "segment": [NB[0]] * 8,
              "domain": ["mobility"] * 8, "hour": ["18"] * 8}
    import pandas as pd

    # 8 planned of 30: 6 by push, 2 by SMS — the 2 is hidden, and the 6 with it (the total
    # would give it away); 3 in the holdout hidden, and the next smallest, 7, with it
    preview = plan_preview(pd.DataFrame(nudges), {"holdout": 3, "paused": 7, "erased": 12},
                           30, 5)
    by_channel = {r["channel"]: r["nudges"] for r in preview["by_channel"]["rows"]}
    assert by_channel == {"push": None, "sms": None}
    excluded = {r["reason"]: r["residents"] for r in preview["excluded"]["rows"]}
    assert excluded == {"planned": 8, "holdout": None, "paused": None, "erased": 12}
    assert preview["planned"] == 8
    by_nb = preview["by_neighbourhood"]["rows"]
    assert [(r["segment"], r["nudges"]) for r in by_nb] == [(NB[0], 8)]
