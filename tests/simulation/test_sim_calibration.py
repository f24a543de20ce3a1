"""Cadence statistics: exact on hand-made data, the real log's documented values, and the
tolerances re-derived from the real log."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from bouquet.simulation.calibration import (
    STATISTICS,
    TOLERANCES,
    VALLEYBIKE_TZ,
    bootstrap_standard_errors,
    cadence_statistics,
    derive_tolerances,
    iso_window,
    valleybike_statistics,
)

DAY = 86_400 * 1_000_000
T0 = 1_717_200_000 * 1_000_000  # 2024-06-01 00:00 UTC


def test_per_person_statistics_by_hand() -> None:
    # nine people ride once, one person rides eleven times: 20 uses
    people = np.array([*range(9), *[99] * 11])
    ts = T0 + 12 * 3_600_000_000 + np.arange(20) * DAY
    s = cadence_statistics(people, ts, "UTC", min_mau=1)
    assert (s.people, s.uses) == (10, 20)
    assert s.median_per_person == 1.0
    assert s.share_once == pytest.approx(0.9)
    assert s.top10_share == pytest.approx(11 / 20)


def test_stickiness_by_hand() -> None:
    # person 0 is active every day for 56 days; person 1 every 7th day; person 2 once
    ts0 = T0 + np.arange(56) * DAY
    ts1 = T0 + np.arange(0, 56, 7) * DAY
    people = np.array([0] * 56 + [1] * 8 + [2])
    ts = np.concatenate([ts0, ts1, [T0 + 40 * DAY]]) + 3_600_000_000
    s = cadence_statistics(people, ts, "UTC", start_us=T0, end_us=T0 + 56 * DAY, min_mau=1)
    assert s.days_measured == 56 - 27
    mau = np.array([2 + (d >= 40) for d in range(27, 56)])  # person 2 counts from day 40
    dau = np.array([1 + (d % 7 == 0) + (d == 40) for d in range(27, 56)])
    assert s.dau_mau == pytest.approx(np.mean(dau / mau))
    wau = np.array([2 + (40 <= d <= 46) for d in range(27, 56)])
    assert s.wau_mau == pytest.approx(np.mean(wau / mau))


def test_local_days_follow_the_time_zone() -> None:
    # 23:30 and 00:30 UTC the next day: two UTC days, one New York evening
    ts = np.array([T0 + 23 * 3_600_000_000 + 1_800_000_000, T0 + DAY + 1_800_000_000])
    utc = cadence_statistics(np.array([1, 1]), ts, "UTC", min_mau=1)
    ny = cadence_statistics(np.array([1, 1]), ts, "America/New_York", min_mau=1)
    assert utc.uses == ny.uses == 2
    from bouquet.simulation.calibration import local_days

    assert len(set(local_days(ts, "UTC"))) == 2
    assert len(set(local_days(ts, "America/New_York"))) == 1


def test_regularity_by_hand() -> None:
    # 4 weeks; person 0: every day of weeks 0 and 2 (14 days); person 1: one day in each
    # week; person 2: one day in week 1; person 3: days 1..20 (weeks 0-2, 20 days: heavy)
    day = {0: [*range(7), *range(14, 21)], 1: [0, 7, 14, 21], 2: [9], 3: list(range(1, 21))}
    people = np.array([p for p, days in day.items() for _ in days])
    ts = T0 + 3_600_000_000 + np.array([d for days in day.values() for d in days]) * DAY
    s = cadence_statistics(people, ts, "UTC", start_us=T0, end_us=T0 + 28 * DAY, min_mau=1)
    assert s.weeks == 4
    assert s.weeks_active_share == pytest.approx(np.mean([2 / 4, 4 / 4, 1 / 4, 3 / 4]))
    # weeks w < 3 active, and of those also active in w + 1: p0 2/0, p1 3/3, p2 1/0, p3 3/2
    assert s.week_persistence == pytest.approx(5 / 9)
    assert s.heavy_people == 1 and s.heavy_weeks_active_share == pytest.approx(3 / 4)
    # all four are active in the last 4 weeks; p1 (4 weeks) and p3 (3) are weekly
    assert s.weekly_of_active == pytest.approx(2 / 4)
    # a use outside [start, end) is ignored by every statistic
    late = cadence_statistics(np.append(people, 9), np.append(ts, T0 + 30 * DAY), "UTC",
                              start_us=T0, end_us=T0 + 28 * DAY, min_mau=1)
    assert late == s


def test_the_window_is_the_pinned_iso_weeks() -> None:
    start, end = iso_window(2019)
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(VALLEYBIKE_TZ)
    assert datetime.fromtimestamp(start / 1e6, tz).isoformat() == "2019-06-03T00:00:00-04:00"
    assert datetime.fromtimestamp(end / 1e6, tz).isoformat() == "2019-08-26T00:00:00-04:00"
    assert datetime.fromtimestamp(iso_window(2020)[0] / 1e6, tz).date().isoformat() == \
        "2020-06-01"


@functools.cache
def _real(path: Path):
    from bouquet.simulation.replay import read_trips

    return valleybike_statistics(path), read_trips(path)


@pytest.fixture
def real(shared_data: Path):
    """The real windows' statistics and the trips (read once per session)."""
    return _real(shared_data / "valleybike" / "trips.tsv.gz")


def test_real_log_matches_the_documented_figures(real) -> None:
    by_year, _ = real
    expected = {
        2019: dict(people=4322, uses=32518, median_per_person=2.0, share_once=0.336,
                   top10_share=0.638, dau_mau=0.089, wau_mau=0.361, weeks_active_share=0.152,
                   week_persistence=0.342, heavy_weeks_active_share=0.767,
                   weekly_of_active=0.113, heavy_people=118),
        2020: dict(people=1655, uses=13452, median_per_person=3.0, share_once=0.246,
                   top10_share=0.560, dau_mau=0.128, wau_mau=0.497, weeks_active_share=0.155,
                   week_persistence=0.424, heavy_weeks_active_share=0.609,
                   weekly_of_active=0.131, heavy_people=43),
    }
    for year, figures in expected.items():
        s = by_year[year]
        for name, value in figures.items():
            assert getattr(s, name) == pytest.approx(value, abs=0.0006), (year, name)
        assert s.weeks == 12
        # both real windows sit inside the tolerances the simulator is held to
        assert s.out_of_tolerance() == {}, year


def test_tolerances_are_derived_from_the_real_windows(real) -> None:
    by_year, trips = real
    start, end = iso_window(2019)
    se = bootstrap_standard_errors(trips.user_id, trips.start_us, VALLEYBIKE_TZ,
                                   start_us=start, end_us=end, rounds=200, seed=0)
    assert derive_tolerances(by_year, se) == TOLERANCES
    assert set(TOLERANCES) == set(STATISTICS) and len(STATISTICS) == 9
