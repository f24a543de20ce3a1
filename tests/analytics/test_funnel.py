"""The recommendation funnel: attribution, resident-level conversion and Newcombe uplift."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bouquet.analytics.figures import (
    funnel_figure,
    suppressed_arms,
    suppressed_uplift,
    uplift_figure,
)
from bouquet.analytics.funnel import (
    choose_baseline,
    funnel_by_arm,
    newcombe_difference,
    uplift,
    wilson,
)
from bouquet.core.catalog import load_catalog
from bouquet.core.recommendation import UNATTRIBUTED, development_ids
from tests.analytics.engagement_helpers import Log
from tests.analytics.engagement_oracle import load_engagement_data, parse_recommendation_ids

CATALOG = load_catalog(None)
#: the ids the API of a test deployment mints (development server secret)
SIGN = development_ids()


def test_wilson_and_newcombe_match_the_published_examples() -> None:
    # Newcombe (1998), Stat Med 17:873, table II, example (a): 56/70 vs 48/80, method 10
    d, low, high = newcombe_difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(float(low), 4), round(float(high), 4)) == (0.0524, 0.3339)
    # example (e): 0/10 vs 0/20 → (−0.1611, 0.2775)
    d, low, high = newcombe_difference(0, 10, 0, 20)
    assert (round(float(low), 4), round(float(high), 4)) == (-0.1611, 0.2775)
    lo, hi = wilson(0, 10)
    assert (float(lo), round(float(hi), 4)) == (0.0, 0.2775)


def test_recommendation_ids_credit_their_arm_only_when_signed() -> None:
    samples = [SIGN.mint("v3", "champion"), "v1.a.b", "v1.a", "x-y.z_1.tok", "...", None,
               SIGN.mint("v3", "champion").replace("v3", "v4"), SIGN.mint("v2", "x")]
    parsed = parse_recommendation_ids(pd.Series(samples, dtype=object), SIGN)
    got = [None if pd.isna(r.model_version) else (r.model_version, r.variant)
           for r in parsed.itertuples()]
    assert got == [("v3", "champion"), *[(UNATTRIBUTED, UNATTRIBUTED)] * 4, None,
                   (UNATTRIBUTED, UNATTRIBUTED), ("v2", "x")]


def funnel_log(root: Path) -> Path:
    log = Log()
    # control: 10 residents shown, 4 open, 2 subscribe, 1 uses
    for i in range(10):
        rid = f"c{i}"
        rec = SIGN.mint("v1", "control", nonce=i)
        log.add(rid, "view", 1, bundle_id="compte-mobilite", recommendation_id=rec)
        log.add(rid, "view", 2, bundle_id="compte-mobilite", recommendation_id=rec)  # twice
        if i < 4:
            log.add(rid, "click", 2, bundle_id="compte-mobilite", recommendation_id=rec)
        if i < 2:
            log.add(rid, "subscribe", 3, bundle_id="compte-mobilite", recommendation_id=rec)
        if i < 1:
            log.add(rid, "use", 4, service_id="bus", recommendation_id=rec)
    # personal: 12 shown, 9 open, 6 subscribe
    for i in range(12):
        rid = f"p{i}"
        rec = SIGN.mint("v2", "personal", nonce=i)
        log.add(rid, "view", 1, bundle_id="compte-mobilite", recommendation_id=rec)
        if i < 9:
            log.add(rid, "click", 2, bundle_id="compte-mobilite", recommendation_id=rec)
        if i < 6:
            log.add(rid, "subscribe", 3, bundle_id="compte-mobilite", recommendation_id=rec)
    # not attributable: a foreign id and a made-up one (credited to "unattributed", never
    # to an arm), a pay (no stage)
    log.add("x", "click", 2, bundle_id="compte-mobilite", recommendation_id="partner-123")
    log.add("y", "click", 2, bundle_id="compte-mobilite", recommendation_id="v2.personal.zz")
    log.add("c0", "pay", 4, service_id="bus", recommendation_id=SIGN.mint("v1", "control", 0))
    return log.write(root)


def test_funnel_counts_residents_and_events_per_arm(tmp_path: Path) -> None:
    data = load_engagement_data(funnel_log(tmp_path), CATALOG)
    arms = funnel_by_arm(data.funnel_events).set_index("arm")
    c = arms.loc["v1:control"]
    assert (c["shown_events"], c["residents_shown"]) == (20, 10)
    assert (c["opened_residents"], c["subscribed_residents"], c["used_residents"]) == (4, 2, 1)
    assert c["subscribed_rate"] == pytest.approx(0.2)
    p = arms.loc["v2:personal"]
    # y's click echoed a made-up "v2.personal.zz": it credits no arm
    assert (p["residents_shown"], p["opened_events"], p["opened_residents"]) == (12, 9, 9)
    u = arms.loc["unattributed:unattributed"]
    assert (u["opened_events"], u["residents_shown"], u["shown_events"]) == (2, 0, 0)
    assert list(arms.index) == ["unattributed:unattributed", "v1:control", "v2:personal"]


def test_uplift_against_the_control_arm(tmp_path: Path) -> None:
    data = load_engagement_data(funnel_log(tmp_path), CATALOG)
    arms = funnel_by_arm(data.funnel_events)
    assert choose_baseline(arms) == "v1:control"
    table = uplift(arms).set_index("stage")
    sub = table.loc["subscribed"]
    d, low, high = newcombe_difference(6, 12, 2, 10)
    assert (sub["difference"], sub["ci_low"], sub["ci_high"]) == pytest.approx(
        (float(d), float(low), float(high)))
    assert sub["relative_uplift"] == pytest.approx(0.5 / 0.2 - 1)
    assert sub["significant"] == (float(low) > 0)
    assert uplift(arms, baseline="personal")["arm"].unique().tolist() == ["v1:control"]
    with pytest.raises(ValueError, match="not an arm"):  # the unattributed row is no arm
        uplift(arms, baseline="unattributed")
    with pytest.raises(ValueError, match="not an arm"):
        uplift(arms, baseline="nope")


def test_outreach_nudges_are_in_the_funnel_but_no_arm_of_the_uplift(tmp_path: Path) -> None:
    """Nudges reach residents of every arm, so comparing their conversion with an arm's is
    no experiment (theirs is the holdout, in the outreach lift): they show in the funnel
    and take no part in the uplift, as baseline or as arm."""
    root = funnel_log(tmp_path)
    log = Log()
    for i in range(30):
        rec = SIGN.mint("v1", "outreach", nonce=100 + i)
        log.add(f"o{i}", "view", 1, bundle_id="compte-mobilite", recommendation_id=rec)
    log.write(root)
    arms = funnel_by_arm(load_engagement_data(root, CATALOG).funnel_events)
    assert arms.set_index("arm").loc["v1:outreach", "residents_shown"] == 30
    assert set(uplift(arms)["arm"]) == {"v2:personal"}
    with pytest.raises(ValueError, match="not an arm"):
        uplift(arms, baseline="outreach")


def test_funnel_suppression_hides_small_arms_and_their_uplift(tmp_path: Path) -> None:
    data = load_engagement_data(funnel_log(tmp_path), CATALOG)
    arms = funnel_by_arm(data.funnel_events)
    table = funnel_figure(suppressed_arms(arms, 5), 5)
    control = next(r for r in table.rows if r["arm"] == "v1:control")
    assert control["residents_shown"] == 10
    assert control["used_residents"] is None and control["used_rate"] is None
    assert control["subscribed_residents"] is None  # 2 residents
    lifted = {r["stage"]: r for r in uplift_figure(suppressed_uplift(uplift(arms), 5), 5).rows}
    assert lifted["opened"]["difference"] is None  # control opened: 4 residents
    assert all(lifted[s]["ci_low"] is None for s in ("subscribed", "used"))
    everything = {r["stage"]: r for r in uplift_figure(suppressed_uplift(uplift(arms), 1),
                                                        1).rows}
    assert not math.isnan(everything["opened"]["ci_low"])


def test_weeks_restrict_the_funnel_to_the_latest_weeks(tmp_path: Path) -> None:
    log = Log()
    log.add("a", "view", 0, bundle_id="compte-mobilite", recommendation_id=SIGN.mint("v1", "x"))
    log.add("b", "view", 14, bundle_id="compte-mobilite",
            recommendation_id=SIGN.mint("v1", "x"))
    data = load_engagement_data(log.write(tmp_path), CATALOG)
    weekly = funnel_by_arm(data.funnel_events, weekly=True)
    assert weekly["week"].tolist() == ["2024-W01", "2024-W03"]
    recent = funnel_by_arm(data.funnel_events, since_day=int(np.max(data.day)))
    assert recent["residents_shown"].tolist() == [1]


def test_funnel_and_uplift_by_neighbourhood_and_domain(tmp_path: Path) -> None:
    root = funnel_log(tmp_path / "a")
    extra = Log()
    for i in range(6):
        extra.profile(f"c{i}", 0, "centre")
        extra.profile(f"p{i}", 0, "centre")
    extra.write(root)
    data = load_engagement_data(root, CATALOG)
    by_nb = funnel_by_arm(data.funnel_events, by="neighbourhood")
    got = {(r.value, r.arm): r.residents_shown for r in by_nb.itertuples()}
    assert got == {("centre", "v1:control"): 6, ("centre", "v2:personal"): 6,
                   ("_unknown", "v1:control"): 4, ("_unknown", "v2:personal"): 6,
                   ("_unknown", "unattributed:unattributed"): 0}
    lifted = uplift(by_nb)
    assert set(lifted["value"]) == {"centre", "_unknown"}
    assert (lifted["baseline"] == "v1:control").all() and len(lifted) == 6
    by_domain = funnel_by_arm(data.funnel_events, by="domain")
    assert set(by_domain["value"]) == {"mobility"}
    assert by_domain["residents_shown"].sum() == 22
    # the neighbourhoods partition the residents: never one lonely hidden cell per column
    table = funnel_figure(suppressed_arms(by_nb, 5), 5, by="neighbourhood")
    for arm in ("v1:control", "v2:personal"):
        rows = [r for r in table.rows if r["arm"] == arm]
        for column in ("residents_shown", "opened_residents", "subscribed_residents"):
            assert sum(r[column] is None for r in rows) != 1, (arm, column)
