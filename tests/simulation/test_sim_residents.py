"""Residents: deterministic, pseudonymous, plausible, vectorised."""

from __future__ import annotations

import re

import numpy as np

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS, Catalog, eligibility_failure
from bouquet.simulation.behaviour import Simulation, service_frequency
from bouquet.simulation.residents import (
    ProfileClasses,
    TasteSpace,
    generate_residents,
    pseudonymous_ids,
)


def _draw(catalog: Catalog, n: int, seed: int):
    world = TasteSpace.build(catalog, seed, service_frequency(catalog))
    return generate_residents(catalog, n, seed, world, ProfileClasses.build(catalog)), world


def test_same_seed_same_residents_other_seed_others(catalog: Catalog) -> None:
    a, _ = _draw(catalog, 5000, 11)
    b, _ = _draw(catalog, 5000, 11)
    c, _ = _draw(catalog, 5000, 12)
    for name in ("ids", "neighbourhood", "age_band", "household", "student", "low_income",
                 "consent", "activity", "tastes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.ids, c.ids)
    assert not np.array_equal(a.tastes, c.tastes)
    assert not set(a.ids) & set(c.ids)


def test_ids_are_pseudonymous_unique_and_valid() -> None:
    ids = pseudonymous_ids(1_000_000, seed=3)
    assert len(set(ids.tolist())) == 1_000_000  # a bijection: no collision even at 1M
    assert all(re.fullmatch(r"r[0-9a-f]{10}", i) for i in ids[:1000])
    # a chunk computed on its own equals the same rows of the whole
    assert np.array_equal(pseudonymous_ids(10, seed=3, start=500), ids[500:510])


def test_attributes_are_plausible(catalog: Catalog) -> None:
    residents, _ = _draw(catalog, 40_000, 5)
    assert 0.70 <= residents.consent.mean() <= 0.80  # opt-in rate
    seniors = residents.age_band == AGE_BANDS.index("65+")
    young = residents.age_band == AGE_BANDS.index("18-25")
    assert residents.student[young].mean() > 0.4 > residents.student[seniors].mean()
    family = residents.household == HOUSEHOLDS.index("family")
    assert family[seniors].mean() < 0.1 < family[~seniors & ~young].mean()
    # every neighbourhood is populated; the new eco-district is among the smallest
    counts = np.bincount(residents.neighbourhood, minlength=len(catalog.neighbourhoods))
    assert counts.min() > 0
    eco = catalog.neighbourhood_ids.index("jardins-du-canal")
    assert counts[eco] < np.median(counts)
    # activity is heavy-tailed: the top 10% hold most of it
    top = np.sort(residents.activity)[::-1][: len(residents) // 10].sum()
    assert top / residents.activity.sum() > 0.6


def test_tastes_follow_segments(catalog: Catalog) -> None:
    residents, world = _draw(catalog, 40_000, 9)
    affinity = world.affinity(residents.tastes)
    daycare = catalog.service_ids.index("daycare")
    family = residents.household == HOUSEHOLDS.index("family")
    assert affinity[family, daycare].mean() > affinity[~family, daycare].mean() + 1.0
    # domain structure: liking one mobility service predicts liking another
    bus, tram = catalog.service_ids.index("bus"), catalog.service_ids.index("tram")
    assert np.corrcoef(affinity[:, bus], affinity[:, tram])[0, 1] > 0.3


def test_profile_classes_use_the_catalog_rules(catalog: Catalog) -> None:
    classes = ProfileClasses.build(catalog)
    residents, _ = _draw(catalog, 3000, 2)
    pass_index = catalog.bundle_ids.index("senior-pass")
    for row in range(0, 3000, 37):
        profile = {"neighbourhood": catalog.neighbourhood_ids[residents.neighbourhood[row]],
                   "age_band": AGE_BANDS[residents.age_band[row]],
                   "household": HOUSEHOLDS[residents.household[row]],
                   "student": bool(residents.student[row]),
                   "low_income": bool(residents.low_income[row])}
        expected = eligibility_failure(catalog.bundles[pass_index].eligibility, profile) is None
        assert classes.bundle_ok[residents.profile_class[row], pass_index] == expected


def test_public_table_hides_tastes(catalog: Catalog, tmp_path) -> None:
    sim = Simulation.create(catalog, 500, 1, 1)
    path = sim.residents.write_parquet(tmp_path / "residents.parquet", catalog)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column_names == ["resident_id", "neighbourhood", "age_band", "household",
                                  "student", "low_income", "consent"]
    assert table.num_rows == 500
    hidden = np.load(sim.residents.save_hidden(tmp_path / "hidden.npz", sim.world))
    assert hidden["tastes"].shape == (500, sim.world.n_factors)
