"""Cadence statistics: exact on hand-made data, and the real log's documented values."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.simulation.calibration import (
    TOLERANCES,
    cadence_statistics,
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


def test_real_log_matches_the_documented_figures(shared_data) -> None:
    s = valleybike_statistics(shared_data / "valleybike" / "trips.tsv.gz")
    assert (s.people, s.uses) == (13_545, 112_914)
    assert s.median_per_person == 2.0
    assert s.share_once == pytest.approx(0.356, abs=0.001)
    assert s.top10_share == pytest.approx(0.662, abs=0.001)
    assert s.dau_mau == pytest.approx(0.090, abs=0.001)
    assert s.wau_mau == pytest.approx(0.363, abs=0.001)
    # the real figures sit inside the tolerances the simulator is held to
    assert s.out_of_tolerance() == {}
    assert set(TOLERANCES) == {"median_per_person", "share_once", "top10_share", "dau_mau",
                               "wau_mau"}
