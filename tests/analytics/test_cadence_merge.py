"""Small daily and weekly classes are merged into "weekly or better", not paid for with a
large band: the cadence table hides what a small class forces it to, and no more, and the
merged figures still let no hidden cell be worked out."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from bouquet.analytics.engagement import CADENCES
from bouquet.analytics.figures import FIGURES, MERGED, MERGED_CLASSES, suppressed_cadence
from bouquet.analytics.suppression import FLAG, SuppressionSpec, suppress
from tests.analytics.recoverability import Published

K = 5


def rows(*classes: tuple[int, int, int, int, int], names: list[str] | None = None
         ) -> pd.DataFrame:
    """Cadence rows of one week: the city (the sum) first when ``names`` are given (the
    neighbourhoods), else one city row per tuple."""
    records = [dict(zip(CADENCES, c, strict=True)) for c in classes]
    if names:
        city = {c: sum(r[c] for r in records) for c in CADENCES}
        frame = pd.DataFrame([{"dimension": "all", "value": "all", **city}]
                             + [{"dimension": "neighbourhood", "value": n, **r}
                                for n, r in zip(names, records, strict=True)])
    else:
        frame = pd.DataFrame([{"dimension": "all", "value": "all", **r} for r in records])
    frame["week"] = "2026-W41"
    frame["known"] = frame[list(CADENCES)].sum(axis=1)
    return frame


def test_a_small_daily_class_is_merged_with_weekly_and_monthly_stays() -> None:
    # the demo's weeks: 2 daily residents; before, monthly (the smallest other class of
    # the window's actives) was hidden to protect them and the chart showed it as a gap
    row = suppressed_cadence(rows((2, 140, 130, 900, 400)), K).iloc[0]
    assert sorted(row[FLAG]) == ["daily", "share_daily", "share_weekly", "weekly"]
    assert row["weekly_plus"] == 142 and row["share_weekly_plus"] is not None
    assert row["monthly"] == 130 and row[MERGED] == ["weekly_plus"]


def test_a_small_merged_class_costs_the_smallest_band_only() -> None:
    # no daily resident, 3 weekly: "weekly or better" is 3 too, and the window's actives
    # minus monthly would give it: monthly goes too, and the chart draws the window's
    # actives (monthly or better) in their place
    row = suppressed_cadence(rows((0, 3, 130, 900, 400)), K).iloc[0]
    counts = {c for c in row[FLAG] if not c.startswith("share_")}
    assert counts == {"weekly", "weekly_plus", "monthly"}
    assert row[MERGED] == ["active_window"] and row["active_window"] == 133
    assert row["yearly"] == 900 and row["dormant"] == 400


def test_nothing_is_merged_when_nothing_is_small() -> None:
    row = suppressed_cadence(rows((20, 140, 130, 900, 400)), K).iloc[0]
    assert row[FLAG] == [] and row[MERGED] == []


def test_a_zero_is_hidden_when_it_is_the_only_companion() -> None:
    # 40 hidden (say, as another cell's companion) next to a visible 0 would be total − 0
    frame = pd.DataFrame({"total": [40], "a": [40], "b": [0]})
    spec = SuppressionSpec(counts=["total", "a", "b"], partitions=[("total", ["a", "b"])])
    out = suppress(frame, spec, K, preset={"a": frame["a"].to_numpy() > 0})
    assert out.loc[0, FLAG] == ["a", "b"]


small = st.integers(0, 6)
large = st.integers(0, 400)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(small, st.integers(0, 60), large, large, large), min_size=2,
                max_size=5))
def test_merged_neighbourhoods_leave_no_hidden_cell_recoverable(classes) -> None:
    names = [f"n{i}" for i in range(len(classes))]
    shown = suppressed_cadence(rows(*classes, names=names), K)
    published = Published("cadence", FIGURES["cadence"].spec, ["week"])
    published.add(shown.to_dict("records"))
    assert published.recoverable() == []


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.tuples(small, small, st.integers(K, 400), st.integers(K, 900),
                 st.integers(K, 400)))
def test_a_large_band_is_hidden_only_when_the_merged_class_is_small(classes) -> None:
    row = suppressed_cadence(rows(classes), K).iloc[0]
    large_hidden = {"monthly", "yearly", "dormant"} & set(row[FLAG])
    weekly_plus = classes[0] + classes[1]
    if weekly_plus == 0 or weekly_plus >= K:
        assert not large_hidden, row.to_dict()
    else:  # "weekly or better" is small itself: monthly goes with it, merged into the
        # window's actives (monthly or better), which the chart draws in their place
        assert large_hidden == {"monthly"} and row[MERGED] == ["active_window"]
    assert ("weekly_plus" in row[MERGED]) == (row["weekly_plus"] is not None
                                               and "daily" in row[FLAG])
    # every hidden class is drawn inside a merged band, or the row has a hidden gap
    drawn = {c for c in CADENCES if row[c] is not None}
    for merged in row[MERGED]:
        drawn |= set(MERGED_CLASSES[merged])
    gap = set(CADENCES) - drawn
    assert not gap or row["share_active_window"] is None, row.to_dict()
