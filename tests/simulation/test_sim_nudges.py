"""The residents' side of outreach: how a nudge is opened, when it makes people opt out,
and that an opened nudge is answered through the behaviour model's own funnel."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bouquet.core.catalog import Catalog
from bouquet.simulation.behaviour import HOUR_WEIGHTS, NUDGE_WEEK_BASE, NudgeViews, Simulation
from bouquet.simulation.columns import EVENT_TYPES, T
from bouquet.simulation.nudges import (
    NudgeParams,
    draw_contact,
    hour_match,
    open_probability,
    optout_probability,
    recent_counts,
    respond,
)

PARAMS = NudgeParams()


def test_open_follows_the_hour_match_and_falls_with_recent_nudges() -> None:
    peak = int(np.argmax(HOUR_WEIGHTS))
    night = int(np.argmin(HOUR_WEIGHTS))
    assert hour_match(np.array([peak]))[0] == 1.0
    assert 0 < hour_match(np.array([night]))[0] < 0.05
    p = open_probability(np.array([peak, night, peak, peak]), np.array([0, 0, 1, 3]), PARAMS)
    assert p[0] == PARAMS.open_peak
    assert p[1] < p[0] / 20
    assert p[0] > p[2] > p[3] > 0
    assert np.isclose(p[3], PARAMS.open_peak * PARAMS.recent_decay ** 3)
    # every hour's probability lies in [0, open_peak]
    every = open_probability(np.arange(24), np.zeros(24), PARAMS)
    assert ((every > 0) & (every <= PARAMS.open_peak)).all()


def test_optout_rises_with_frequency_and_scales() -> None:
    p = optout_probability(np.arange(5), PARAMS)
    assert p[0] == PARAMS.optout_base
    assert (np.diff(p) > 0).all()
    double = optout_probability(np.arange(5), replace(PARAMS, optout_scale=2.0))
    assert np.allclose(double, 2 * p)
    assert optout_probability(np.array([10**9]), PARAMS)[0] == 1.0


def test_recent_counts_look_back_seven_days_only() -> None:
    day = 86400.0
    sent = [[], [0.0, 5 * day], [0.0, 0.5 * day, 6 * day, 9 * day]]
    assert recent_counts(sent, np.array([7 * day, 7 * day, 8 * day])).tolist() == [0, 2, 1]


def test_draws_match_the_stated_probabilities() -> None:
    rng = np.random.default_rng(7)
    n = 200_000
    hours = rng.integers(0, 24, n)
    recent = rng.integers(0, 4, n)
    opened, out = respond(rng, hours, recent, PARAMS)
    expected_open = open_probability(hours, recent, PARAMS).mean()
    expected_out = optout_probability(recent, PARAMS).mean()
    assert abs(opened.mean() - expected_open) < 4 * np.sqrt(expected_open / n)
    assert abs(out.mean() - expected_out) < 4 * np.sqrt(expected_out / n)
    contact = draw_contact(rng, n, PARAMS)
    assert abs(contact.mean() - PARAMS.contact_share) < 0.005


def test_an_opened_nudge_is_answered_through_the_funnel(catalog: Catalog, end_date) -> None:
    """Opened nudges become views labelled with the week's nudge code; a well-matched,
    eligible offer shown to many residents is subscribed by some, and those subscriptions
    carry the nudge's label into later use."""
    sim = Simulation.create(catalog, 3000, 3, 5, end=end_date)
    sim.history()
    rows = np.arange(sim.n)
    tastes = sim.bundle_affinity(sim.affinity(rows))
    allowed = np.where(sim.bundle_ok(rows), tastes, -np.inf)
    best = np.argmax(allowed, axis=1)
    ts = np.full(sim.n, int(sim.day_start_us[1]) + 18 * 3600 * 10**6, dtype=np.int64)
    result = sim.step(None, nudges=NudgeViews(rows, best.astype(np.int64), ts))
    ev = result.events
    nudged = ev.rec_week == NUDGE_WEEK_BASE
    views = nudged & (ev.type == T["view"])
    assert views.sum() == sim.n
    assert (ev.bundle[views] == best[ev.resident[views]]).all()
    subscribed = nudged & (ev.type == T["subscribe"])
    assert subscribed.sum() > 0
    assert set(EVENT_TYPES[t] for t in ev.type[nudged]) <= {"view", "click", "subscribe",
                                                            "dismiss", "pay"}
    takers = ev.resident[subscribed]
    assert (sim.accepted_week[takers, ev.bundle[subscribed]] == NUDGE_WEEK_BASE).all()
    # the next week's uses of the bundle taken carry the nudge's label
    later = sim.step(None).events
    used = (later.type == T["use"]) & (later.rec_week == NUDGE_WEEK_BASE)
    assert used.any()
