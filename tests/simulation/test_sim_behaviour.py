"""The behaviour model: deterministic, complete, valid against the contract and the
catalog, consistent with eligibility and erasure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bouquet.core.cadence import OUTREACH_TYPES
from bouquet.core.catalog import Catalog, available_in, eligibility_failure
from bouquet.core.events import ADMIN_TYPES, CONTACT_TYPES, check_against_catalog, parse_event
from bouquet.simulation.columns import table_to_payloads

ALL_TYPES = CONTACT_TYPES | ADMIN_TYPES


def test_same_seed_same_events_other_seed_other_events(catalog: Catalog, simulate) -> None:
    a, _, _ = simulate(catalog, residents=1500, weeks=4, seed=3, policy="popular")
    b, _, _ = simulate(catalog, residents=1500, weeks=4, seed=3, policy="popular")
    c, _, _ = simulate(catalog, residents=1500, weeks=4, seed=4, policy="popular")
    assert a.num_rows > 5000
    assert a.equals(b)
    assert not a.select(["type", "service_id", "bundle_id", "ts"]).equals(
        c.select(["type", "service_id", "bundle_id", "ts"]).slice(0, a.num_rows))
    assert not set(a["event_id"].to_pylist()) & set(c["event_id"].to_pylist())


def test_every_event_type_occurs_in_a_plausible_mix(popular_run) -> None:
    table, sim, _ = popular_run
    counts = dict(zip(*np.unique(table["type"].to_numpy(zero_copy_only=False),
                                 return_counts=True), strict=True))
    # outreach outcomes come from the messaging gateway, which the simulator does not play
    assert set(counts) == ALL_TYPES - OUTREACH_TYPES
    assert counts["profile"] == sim.n  # one profile per resident
    assert counts["use"] == max(counts.values())  # service use is the dominant signal
    assert counts["view"] > counts["click"] > counts["dismiss"] / 10
    assert counts["erase"] < sim.n * 0.01
    assert len(set(table["event_id"].to_pylist())) == table.num_rows


def test_events_pass_the_schema_and_the_catalog(popular_run, catalog: Catalog,
                                                end_date) -> None:
    table, _, _ = popular_run
    rng = np.random.default_rng(0)
    types = table["type"].to_numpy(zero_copy_only=False)
    sample = np.concatenate([rng.choice(np.nonzero(types == t)[0],
                                        min(400, int((types == t).sum())), replace=False)
                             for t in ALL_TYPES])
    now = datetime.now(UTC)
    for payload in table_to_payloads(table.take(pa.array(np.sort(sample)))):
        event = parse_event(json.dumps(payload).encode())
        check_against_catalog(event, catalog, now=now)
    # every use inside a bundle names a service of that bundle (checked above) and all
    # simulated events lie before the end of the window (never in the future)
    assert pc.max(table["ts"]).as_py() < datetime(end_date.year, end_date.month,
                                                           end_date.day, tzinfo=UTC)


def _profiles(table: pa.Table) -> dict[str, dict]:
    profiles = table.filter(pc.equal(table["type"], "profile"))
    return {r: json.loads(c) for r, c in zip(profiles["resident_id"].to_pylist(),
                                               profiles["context"].to_pylist(), strict=True)}


def test_subscriptions_respect_eligibility_and_zones(popular_run, catalog: Catalog) -> None:
    table, _, _ = popular_run
    profiles = _profiles(table)
    subs = table.filter(pc.equal(table["type"], "subscribe")).to_pylist()
    assert len(subs) > 1000
    for event in subs:
        profile = profiles[event["resident_id"]]
        offer = (catalog.bundle_by_id[event["bundle_id"]] if event["bundle_id"]
                 else catalog.service_by_id[event["service_id"]])
        assert available_in(offer.zones, profile["neighbourhood"]), event
        assert eligibility_failure(offer.eligibility, profile) is None, event
    # the eco-district pack is held only by residents of the eco-district
    pack = [e for e in subs if e["bundle_id"] == "canal-neighbourhood-pack"]
    assert pack and {profiles[e["resident_id"]]["neighbourhood"] for e in pack} == {
        "jardins-du-canal"}


def test_per_resident_order_and_erasure(popular_run) -> None:
    table, _, _ = popular_run
    frame = table.select(["resident_id", "type", "ts"]).to_pandas()
    first = frame.sort_values("ts", kind="stable").groupby("resident_id").head(1)
    assert set(first["type"]) == {"profile"}  # a resident declares a profile first
    erase = frame[frame["type"] == "erase"].groupby("resident_id")["ts"].min()
    assert len(erase) >= 1
    after = frame.merge(erase.rename("erased_at"), left_on="resident_id", right_index=True)
    assert (after["ts"] <= after["erased_at"]).all()  # nothing after an erasure request


def test_holdings_drive_usage(popular_run, catalog: Catalog) -> None:
    """Residents use the services they subscribed to: the signal CF must learn from."""
    table, _, _ = popular_run
    frame = table.select(["resident_id", "type", "service_id", "bundle_id"]).to_pandas()
    uses = frame[frame["type"] == "use"]
    assert uses["bundle_id"].notna().mean() > 0.5  # most uses come through a held bundle
    subs = frame[(frame["type"] == "subscribe") & frame["bundle_id"].notna()]
    held = {(r, s) for r, b in zip(subs["resident_id"], subs["bundle_id"], strict=True)
            for s in catalog.bundle_by_id[b].services}
    share_held = np.mean([(r, s) in held for r, s in zip(uses["resident_id"],
                                                         uses["service_id"], strict=True)])
    assert share_held > 0.6


def test_weekday_rhythm(popular_run) -> None:
    table, _, _ = popular_run
    uses = table.filter(pc.equal(table["type"], "use"))
    local = uses["ts"].to_pandas().dt.tz_convert("Europe/Paris")
    weekday = np.bincount(local.dt.weekday.to_numpy(), minlength=7)
    assert weekday[6] < weekday[:5].mean() * 0.9  # quieter on Sundays
    hours = np.bincount(local.dt.hour.to_numpy(), minlength=24)
    assert hours[3] < hours[8] / 5  # nights are quiet


@pytest.mark.parametrize("seed", [1, 2])
def test_calibration_within_tolerances(catalog: Catalog, simulate, seed: int) -> None:
    from bouquet.simulation.calibration import simulated_statistics

    # 50,000 residents: fewer and the few hundred heavy users make the regularity
    # statistics vary from seed to seed by more than the real data's own uncertainty
    table, sim, _ = simulate(catalog, residents=50_000, weeks=12, seed=seed)
    stats = simulated_statistics(table, sim.params.timezone, int(sim.day_start_us[0]),
                                 sim.end_us)
    assert stats.people > 6000 and stats.heavy_people > 200
    assert stats.out_of_tolerance() == {}, stats


def test_habits_are_steady_and_as_frequent_as_their_services(catalog: Catalog,
                                                             end_date) -> None:
    from dataclasses import replace

    from bouquet.simulation.behaviour import BehaviourParams, Simulation

    # no organic, occasional or away weeks: whatever the weekly burst, the rate is the
    # habit alone
    params = replace(BehaviourParams(), base_rate=0.0, occasional_rate=0.0, away_share=0.0)
    sim = Simulation.create(catalog, 400, 4, 3, end=end_date, params=params)
    maas, civic = (catalog.bundle_ids.index(b) for b in ("maas-urban", "civic-essentials"))
    sim.new_bundles[:200, maas] = True
    sim.new_bundles[200:, civic] = True
    rows = np.arange(sim.n)
    tastes = sim._tastes(rows)
    habit = sim._habit(tastes, rows)
    _, _, _, rate = sim._activity(sim._rng(99), rows, np.arange(7), tastes)
    assert rate == pytest.approx(habit, rel=1e-6)  # outside the burst multiplier
    # at equal match, the habit follows the services' usage frequency
    match = 1 / (1 + np.exp(-params.habit_slope * (tastes.bundle_aff - params.habit_midpoint)))
    per_match = habit / np.where(rows < 200, match[:, maas], match[:, civic])
    assert per_match[:200].min() > 0.5 * params.habit_bundle  # MaaS: near a bus pass
    assert per_match[200:].max() < 0.1 * params.habit_bundle  # civic documents: rare


def test_fatigue_recovers_with_its_half_life(catalog: Catalog, end_date) -> None:
    from dataclasses import replace

    from bouquet.simulation.behaviour import BehaviourParams, Simulation

    params = replace(BehaviourParams(), fatigue_half_life_weeks=2.0)
    sim = Simulation.create(catalog, 2000, 4, 5, end=end_date, params=params)
    sim.history()
    sim.fatigue[:, 3] = 8
    for _ in range(4):
        sim.step()
    # three weekly recoveries (after weeks 1, 2, 3) of half-life 2 weeks; browsing that
    # ignored the bundle again only adds
    fatigue = sim.fatigue[:, 3].astype(float)
    assert np.median(fatigue) == pytest.approx(8 * 0.5 ** 1.5, rel=0.01)
    assert fatigue.min() >= 8 * 0.5 ** 1.5 * 0.99


def test_weekly_bursts_are_gamma_and_come_in_spells(catalog: Catalog, end_date) -> None:
    from scipy.special import gammaincinv

    from bouquet.simulation.behaviour import Simulation, gamma_of_normal

    z = np.random.default_rng(0).standard_normal(400_000)
    for shape in (0.04, 0.25, 1.0):
        burst = gamma_of_normal(z, shape).astype(float)
        assert burst.mean() == pytest.approx(1.0, rel=0.05)  # mean 1
        assert np.median(burst) == pytest.approx(gammaincinv(shape, 0.5) / shape, rel=0.01)
    # the latent keeps its correlation from one week to the next
    sim = Simulation.create(catalog, 20_000, 3, 2, end=end_date)
    sim.history()
    latents = []
    for _ in range(3):
        sim.step()
        latents.append(sim.burst_latent.copy())
    rho = sim.params.burst_persistence
    assert np.corrcoef(latents[1], latents[2])[0, 1] == pytest.approx(rho, abs=0.02)
    assert np.std(latents[2]) == pytest.approx(1.0, abs=0.02)
