"""Engagement metrics: hand-checked cases at every threshold, and a cross-check of every
figure against an independent per-resident reference on a random log."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bouquet.analytics.engagement import (
    CADENCES,
    UNKNOWN,
    CadenceRules,
    iso_week_label,
    week_of_day,
)
from bouquet.core.catalog import load_catalog
from tests.analytics.engagement_helpers import DAY0, Log, random_log, reference
from tests.analytics.engagement_oracle import compute_engagement, load_engagement_data

CATALOG = load_catalog(None)


def compute(log: Log, root: Path, rules: CadenceRules | None = None):
    log.write(root)
    return compute_engagement(load_engagement_data(root, CATALOG), rules)


def row(frame: pd.DataFrame, week: str, dimension: str = "all", value: str = "all") -> dict:
    found = frame[(frame["dimension"] == dimension) & (frame["value"] == value)
                  & (frame["week"] == week)]
    assert len(found) == 1, (dimension, value, week)
    return found.iloc[0].to_dict()


def test_iso_weeks_start_on_monday_and_are_labelled_like_the_consumer() -> None:
    for d in (date(2024, 1, 1), date(2024, 12, 29), date(2024, 12, 30), date(2021, 1, 3)):
        epoch = (d - date(1970, 1, 1)).days
        monday = d - timedelta(days=d.weekday())
        assert week_of_day(epoch) == week_of_day((monday - date(1970, 1, 1)).days)
        year, number, _ = d.isocalendar()
        assert iso_week_label(week_of_day(epoch)) == f"{year}-W{number:02d}"


@pytest.mark.parametrize(("active_days", "expected"), [(20, "daily"), (19, "weekly")])
def test_daily_needs_twenty_active_days_of_the_28(tmp_path: Path, active_days: int,
                                                   expected: str) -> None:
    log = Log()
    for d in range(active_days):  # days 0..19 of the four weeks 2024-W01..W04
        log.add("a", "use", d)
    log.add("z", "view", 27)  # makes the log reach the end of W04
    eng = compute(log, tmp_path)
    r = row(eng.cadence, "2024-W04")
    assert r[expected] == 1 and r["known"] == 2 and r["monthly"] == 1  # z is monthly
    assert r["window_complete"] and r["week_complete"]


@pytest.mark.parametrize(("weeks", "expected"), [([0, 1, 3], "weekly"), ([0, 3], "monthly"),
                                                 ([3], "monthly")])
def test_weekly_needs_three_of_the_four_weeks(tmp_path: Path, weeks: list[int],
                                              expected: str) -> None:
    log = Log()
    for w in weeks:
        log.add("a", "click", 7 * w + 2)
        log.add("a", "click", 7 * w + 2, hour=18)  # two contacts on one day: one active day
    log.add("z", "view", 0)
    log.add("z", "view", 27)
    eng = compute(log, tmp_path)
    assert row(eng.cadence, "2024-W04")[expected] >= 1
    counts = row(eng.cadence, "2024-W04")
    assert sum(counts[c] for c in CADENCES) == counts["known"] == 2


def test_yearly_and_dormant_look_back_52_weeks(tmp_path: Path) -> None:
    log = Log()
    log.add("recent", "use", 0)  # W01 2024
    log.add("old", "use", 0)
    log.add("recent", "use", 7 * 40)  # still within 52 weeks of the last week
    log.add("never", "profile", 0, context={"neighbourhood": "centre"})  # known, no contact
    log.add("late", "use", 7 * 52 + 6)  # the last week: 2024-12-29 is in 2024-W52
    eng = compute(log, tmp_path)
    last = iso_week_label(week_of_day((DAY0 - date(1970, 1, 1)).days + 7 * 52))
    r = row(eng.cadence, last)
    assert (r["known"], r["monthly"], r["yearly"], r["dormant"]) == (4, 1, 1, 2)
    # the week before "old" drops out of the yearly window it was still yearly
    r51 = row(eng.cadence, iso_week_label(week_of_day((DAY0 - date(1970, 1, 1)).days + 7 * 51)))
    assert (r51["known"], r51["yearly"], r51["dormant"]) == (3, 2, 1)


def test_neighbourhood_is_the_latest_declared_one(tmp_path: Path) -> None:
    log = Log()
    log.profile("a", 0, "centre")
    log.profile("a", 3, "gare")
    log.profile("a", 5, None, age_band="26-40")  # declares no neighbourhood: gare stays
    log.add("a", "use", 6)
    log.add("b", "use", 6)
    eng = compute(log, tmp_path)
    assert row(eng.cadence, "2024-W01", "neighbourhood", "gare")["known"] == 1
    assert row(eng.cadence, "2024-W01", "neighbourhood", UNKNOWN)["known"] == 1
    assert set(eng.cadence[eng.cadence["dimension"] == "neighbourhood"]["value"]) == \
        {"gare", UNKNOWN}


def test_event_dimensions_count_only_their_slice(tmp_path: Path) -> None:
    log = Log()
    for d in range(21):
        log.add("a", "use", d, service_id="bus", channel="app")  # mobility, daily
    log.add("a", "pay", 27, bundle_id="compte-mobilite", channel="web")
    log.add("a", "view", 27, service_id="library", channel="web")
    eng = compute(log, tmp_path)
    assert row(eng.cadence, "2024-W04", "domain", "mobility")["daily"] == 1
    culture = row(eng.cadence, "2024-W04", "domain", "culture")
    assert (culture["known"], culture["monthly"]) == (1, 1)
    assert row(eng.cadence, "2024-W03", "domain", "culture")["known"] == 0
    assert row(eng.cadence, "2024-W04", "channel", "web")["monthly"] == 1
    assert row(eng.cadence, "2024-W04", "factor", "infrastructure")["daily"] == 1


def test_duplicates_and_erased_residents_are_not_counted(tmp_path: Path) -> None:
    log = Log()
    log.add("a", "use", 1, event_id="same")
    log.add("a", "use", 2, event_id="same")  # a re-sent event with another time: once
    log.add("gone", "use", 1)
    log.add("gone", "erase", 3, channel="system")
    log.add("back", "use", 1)
    log.add("back", "erase", 2, channel="system")
    log.add("back", "use", 4)  # after the erasure: a new start
    eng = compute(log, tmp_path)
    r = row(eng.cadence, "2024-W01")
    assert r["known"] == 2
    assert row(eng.contacts, "2024-W01")["contacts"] == 2
    assert eng.summary["contacts"] == 2


def test_stickiness_contacts_and_months_by_hand(tmp_path: Path) -> None:
    log = Log()
    # week 2024-W01 (Mon 1 Jan .. Sun 7 Jan): a on Mon and Tue (3 contacts), b on Tue
    log.add("a", "use", 0)
    log.add("a", "use", 1)
    log.add("a", "click", 1, hour=12)
    log.add("b", "use", 1)
    log.add("c", "profile", 6, context={"neighbourhood": "port"})
    eng = compute(log, tmp_path)
    s = row(eng.stickiness, "2024-W01")
    assert s["days_observed"] == 7
    assert s["dau_mean"] == pytest.approx(3 / 7)  # 1 + 2 + 0 … over seven days
    assert (s["wau"], s["mau"]) == (2, 2)
    assert s["dau_mau"] == pytest.approx(3 / 14) and s["wau_mau"] == 1.0
    c = row(eng.contacts, "2024-W01")
    assert (c["known"], c["active"], c["contacts"]) == (3, 2, 4)
    assert (c["h0"], c["h1"], c["h3_4"]) == (1, 1, 1)
    assert c["mean_per_known"] == pytest.approx(4 / 3)
    assert (c["p25"], c["p50"], c["p75"]) == (1, 1, 3)
    m = eng.monthly[(eng.monthly["dimension"] == "all")].iloc[0]
    assert (m["month"], m["mau"], m["weeks"], m["days_observed"]) == ("2024-01", 2, 1, 7)
    assert m["wau_mean"] == 2 and m["dau_mean"] == pytest.approx(3 / 7)


def test_cohorts_by_month_of_first_contact(tmp_path: Path) -> None:
    log = Log()
    for rid in ("a", "b", "c"):
        log.add(rid, "use", 3)  # January cohort
    log.add("a", "use", 40)  # February
    log.add("a", "use", 70)  # March
    log.add("b", "use", 70)
    log.add("d", "use", 45)  # February cohort
    eng = compute(log, tmp_path)
    co = eng.cohorts[eng.cohorts["dimension"] == "all"].set_index(["cohort", "months_since"])
    assert co.loc[("2024-01", 0), "cohort_size"] == 3
    assert co.loc[("2024-01", 1), "retained"] == 1
    assert co.loc[("2024-01", 2), "retention"] == pytest.approx(2 / 3)
    assert co.loc[("2024-02", 0), "retained"] == 1
    assert co.loc[("2024-02", 1), "retained"] == 0


def test_lifetime_contacts_single_share_and_concentration(tmp_path: Path) -> None:
    log = Log()
    for i in range(8):
        log.add(f"once{i}", "use", i)  # eight residents with one contact
    for d in range(30):
        log.add("heavy", "use", d)  # one with thirty
    log.add("twice", "use", 1)
    log.add("twice", "use", 2, service_id="library")
    log.add("nobody", "profile", 0, context={"neighbourhood": "port"})  # no contact
    eng = compute(log, tmp_path)
    life = eng.lifetime.set_index(["dimension", "value"])
    city = life.loc[("all", "all")]
    assert (city["residents"], city["contacts"], city["l1"], city["l2"]) == (10, 40, 8, 1)
    assert city["share_single"] == pytest.approx(0.8)
    assert city["top10_share"] == pytest.approx(30 / 40)  # the top tenth is "heavy"
    assert (city["p50"], city["p90"]) == (1, 2)
    assert city["l20_plus"] == 1
    assert life.loc[("domain", "culture"), "residents"] == 1


def test_rules_are_validated_and_scale_with_the_window() -> None:
    with pytest.raises(ValueError):
        CadenceRules(window_days=30)
    with pytest.raises(ValueError):
        CadenceRules(weekly_min_weeks=5)
    eight = CadenceRules.for_window(56)
    assert (eight.daily_min_days, eight.weekly_min_weeks) == (40, 6)
    assert CadenceRules.for_window(28) == CadenceRules()


def test_an_empty_log_gives_empty_tables(tmp_path: Path) -> None:
    eng = compute_engagement(load_engagement_data(tmp_path / "none", CATALOG))
    assert eng.cadence.empty and eng.summary["events"] == 0


# --- the cross-check -------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_case(tmp_path_factory: pytest.TempPathFactory):
    log = random_log(CATALOG)
    root = log.write(tmp_path_factory.mktemp("log"))
    eng = compute_engagement(load_engagement_data(root, CATALOG))
    return eng, reference(log.events, CATALOG)


def _indexed(frame: pd.DataFrame, period: str) -> pd.DataFrame:
    return frame.set_index(["dimension", "value", period])


def test_cadence_equals_the_reference_for_every_group_and_week(random_case) -> None:
    eng, ref = random_case
    got = _indexed(eng.cadence, "week")
    assert len(ref["cadence"]) > 1000  # some twenty groups × 65 weeks
    mismatches = []
    for key, want in ref["cadence"].items():
        have = got.loc[key]
        for col, value in want.items():
            if have[col] != value:
                mismatches.append((key, col, have[col], value))
    assert not mismatches, mismatches[:10]
    # and the vectorised side has no group-week the reference lacks (other than empty ones)
    extra = got[~got.index.isin(list(ref["cadence"]))]
    assert (extra["known"] == 0).all()


def test_stickiness_and_contacts_equal_the_reference(random_case) -> None:
    eng, ref = random_case
    stick = _indexed(eng.stickiness, "week")
    contacts = _indexed(eng.contacts, "week")
    for key, want in ref["stickiness"].items():
        have = stick.loc[key]
        assert have["dau_mean"] == pytest.approx(want["dau_mean"]), key
        assert (have["wau"], have["mau"]) == (want["wau"], want["mau"]), key
    for key, want in ref["contacts"].items():
        have = contacts.loc[key]
        for col, value in want.items():
            if value is None:
                assert np.isnan(have[col]), (key, col)
            else:
                assert have[col] == value, (key, col, have[col], value)


def test_months_and_cohorts_equal_the_reference(random_case) -> None:
    eng, ref = random_case
    monthly = _indexed(eng.monthly, "month")
    for key, want in ref["monthly"].items():
        assert monthly.loc[key, "mau"] == want["mau"], key
        if want["wau_mean"] is None:
            assert np.isnan(monthly.loc[key, "wau_mean"])
        else:
            assert monthly.loc[key, "wau_mean"] == pytest.approx(want["wau_mean"]), key
    cohorts = eng.cohorts.set_index(["dimension", "value", "cohort", "months_since"])
    for key, retained in ref["cohorts"].items():
        assert cohorts.loc[key, "retained"] == retained, key
    nonzero = cohorts[cohorts["retained"] > 0]
    assert len(nonzero) == len(ref["cohorts"])


def test_lifetime_equals_the_reference(random_case) -> None:
    eng, ref = random_case
    life = eng.lifetime.set_index(["dimension", "value"])
    assert len(ref["lifetime"]) > 15
    for key, want in ref["lifetime"].items():
        for col, value in want.items():
            assert life.loc[key, col] == pytest.approx(value), (key, col)
    assert (life.drop(index=list(ref["lifetime"]))["residents"] == 0).all()
