"""The seam between imported records and observed use is found and named, so no weekly
figure steps without an explanation — on the demo city's own generated data."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from bouquet.analytics.backfill import observed_start
from bouquet.analytics.service import EngagementService
from bouquet.core.settings import Settings
from bouquet.simulation.runner import simulate

#: A week-over-week ratio of p90 contacts per active resident above this is a break.
BREAK_RATIO = 2.0


def daily(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"dimension": "channel", "value": v, "day": d, "dau": n}
                         for v, d, n in rows])


def test_the_first_observed_day_after_system_records_is_the_seam() -> None:
    seam = observed_start(daily([("system", "2026-01-05", 9), ("system", "2026-10-11", 4),
                                 ("app", "2026-10-12", 30), ("app", "2026-10-01", 0)]))
    assert seam is not None
    assert (seam["observed_from"], seam["observed_from_week"]) == ("2026-10-12", "2026-W42")
    assert "2026-W42" in seam["note"] and "system" in seam["note"]


@pytest.mark.parametrize("rows", [
    [("app", "2026-10-12", 30)],  # no backfill at all
    [("system", "2026-10-12", 3), ("app", "2026-10-12", 30)],  # records from day one
    [("app", "2026-10-01", 5), ("system", "2026-10-12", 3)],  # system events later on
    [("system", "2026-10-12", 3)],  # nothing observed yet
])
def test_no_seam_without_records_before_observed_use(rows) -> None:
    assert observed_start(daily(rows)) is None


def test_the_demo_city_steps_only_where_the_summary_says_observed_use_begins(
        tmp_path: Path) -> None:
    # the demo's generator (a year of imported history, then simulated weeks), small
    settings = Settings(env="test", state_dir=tmp_path / "state",
                        redis_url="redis://127.0.0.1:1/0")
    simulate(settings, residents=1500, weeks=5, seed=1, end=date(2026, 12, 7),
             progress=False, save_residents=False)
    svc = EngagementService(settings)
    seam = svc.summary()["backfill"]
    # the city's figures before suppression: the break is in the data, whatever is shown
    city = svc.engagement("use").contacts
    weekly = city[(city["dimension"] == "all") & city["week_complete"]]
    p90 = weekly.set_index("week")["p90"].dropna()
    ratio = p90 / p90.shift(1)
    breaks = list(ratio[ratio > BREAK_RATIO].index)
    assert seam is not None and seam["observed_from_week"] == "2026-W45"
    assert breaks == ["2026-W45"], p90.tail(12).to_dict()
