"""Outreach in the closed loop: the planner's nudges reach residents only within its rules,
opt-outs end them, the learner hears the outcomes, and the outreach figures are computed
from the runs."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from bouquet.core.catalog import Catalog
from bouquet.core.outreach import in_holdout, quiet_minutes
from bouquet.core.settings import Settings
from bouquet.simulation.closed_loop import Comparison, run_policy
from bouquet.simulation.nudges import NudgeParams
from bouquet.simulation.outreach_policy import OutreachPolicy
from bouquet.simulation.outreach_report import outreach_figures
from bouquet.simulation.policies import PopularPolicy

RESIDENTS, WEEKS = 400, 4
# no pauses, so the caps are what limits the nudges
SETTINGS = Settings(env="test", outreach_pause_after=50, outreach_max_per_week=3,
                    outreach_min_gap_h=30)


def _run(catalog: Catalog, end_date, seed: int, *, optout_scale: float = 1.0):
    policy = OutreachPolicy(PopularPolicy(), SETTINGS, seed=seed)
    run, sim = run_policy(policy, catalog, residents=RESIDENTS, weeks=WEEKS, seed=seed,
                          end=end_date, nudge_params=NudgeParams(optout_scale=optout_scale))
    return run, sim, policy


@pytest.fixture(scope="module")
def loud(catalog: Catalog, end_date):
    """Opt-outs ten times as likely as stated: enough of them in a small city."""
    return _run(catalog, end_date, 3, optout_scale=10.0)


def test_nudges_respect_consent_holdout_caps_gap_and_quiet_hours(loud) -> None:
    run, sim, _ = loud
    log = run.nudges
    assert len(log) > 200
    assert log["contact"].all()  # only residents with contact consent when planned
    ids = np.asarray(sim.residents.ids).astype(str)[log["row"].to_numpy()]
    assert not in_holdout(ids, SETTINGS.outreach_holdout_salt,
                          SETTINGS.outreach_holdout_share).any()
    zone = ZoneInfo(SETTINGS.outreach_timezone)
    quiet = quiet_minutes(SETTINGS.outreach_quiet_hours)
    for when in log["send_at"]:
        local = datetime.fromtimestamp(when, UTC).astimezone(zone)
        assert not quiet[local.hour * 60 + local.minute], local
    week, gap = 7 * 86400.0, SETTINGS.outreach_min_gap_h * 3600.0
    capped = 0
    for _, times in log.groupby("row")["send_at"]:
        t = np.sort(times.to_numpy())
        assert (np.diff(t) >= gap - 1e-6).all()
        in_window = np.searchsorted(t, t + week, side="left") - np.arange(len(t))
        assert in_window.max() <= SETTINGS.outreach_max_per_week
        capped += int(in_window.max() == SETTINGS.outreach_max_per_week)
    assert capped > 0  # the cap was reached, so the check above had something to check


def test_an_opt_out_ends_the_nudges(loud) -> None:
    run, _, _ = loud
    log = run.nudges
    out = log[log["opted_out"]]
    assert len(out) >= 5
    for row, when in zip(out["row"], out["send_at"], strict=True):
        later = log[(log["row"] == row) & (log["send_at"] > when)]
        assert later.empty, (row, when)
    assert run.outreach["optouts"] == len(out)


def test_the_learner_hears_outcomes_and_conversions(loud) -> None:
    run, _, policy = loud
    log = run.nudges
    assert len(policy.opened) == int(log["opened"].sum()) > 0
    assert policy.converted <= policy.opened
    # the posteriors moved away from the prior where nudges were delivered
    cells = policy._cells(float(log["send_at"].max()) + 7 * 86400, True)
    assert cells.alpha.sum() + cells.beta.sum() > 0
    assert not np.allclose(cells.mean(), cells.mean().flat[0])


def test_figures_are_computed_from_the_runs(catalog: Catalog, end_date, loud) -> None:
    runs = [_run(catalog, end_date, seed)[0] for seed in (3, 4)]
    first = runs[0]
    months = 7 * WEEKS / 30.44
    expected = first.nudges["opted_out"].sum() / first.outreach["contactable_at_start"] / months
    assert math.isclose(first.outreach["optout_rate_per_month"], expected)
    assert first.outreach["nudges"] == len(first.nudges)
    # the louder assumption of the fixture gives more opt-outs on the same city
    assert loud[0].outreach["optout_rate_per_month"] > first.outreach["optout_rate_per_month"]
    result = Comparison(["popular+outreach"], [3, 4], RESIDENTS, WEEKS, runs)
    figures = {name: value for name, value, _ in outreach_figures(result)}
    rates = [r.outreach["optout_rate_per_month"] for r in runs]
    assert math.isclose(figures["optout_rate_per_month@popular+outreach"], np.mean(rates))
    assert figures["optout_rate_per_month@popular+outreach_ci_low"] \
        <= np.mean(rates) <= figures["optout_rate_per_month@popular+outreach_ci_high"]


def test_the_loop_knows_what_the_planner_reads_from_the_log(catalog: Catalog, end_date,
                                                            tmp_path) -> None:
    """The hours the simulated planner gathers from the events it observes are those
    :func:`read_history` reads from the same events in the event log."""
    from bouquet.outreach.history import read_history
    from bouquet.simulation.sinks import EventLogSink

    policy = OutreachPolicy(PopularPolicy(), SETTINGS, seed=5)
    sink = EventLogSink(tmp_path / "log")
    _, sim = run_policy(policy, catalog, residents=RESIDENTS, weeks=3, seed=5, end=end_date,
                        sink=sink)
    now = float(sim.end_us) / 1e6
    policy._read_history(now)
    ids = [str(r) for r in sim.residents.ids]
    history = read_history(tmp_path / "log", catalog, ids, now,
                           SETTINGS.outreach_history_days, SETTINGS.outreach_timezone)
    erased = sim.erased_at < np.iinfo(np.int64).max
    np.testing.assert_array_equal(policy.hours[~erased], history.hours[~erased])
    assert policy.hours.sum() > 1000
