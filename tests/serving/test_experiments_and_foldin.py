"""Experiment assignment, variants end to end, and the fold-in against implicit's own."""

from __future__ import annotations

import json
from collections import Counter

import implicit
import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bouquet.core.catalog import load_catalog
from bouquet.core.recommendation import development_ids
from bouquet.models.online import ServingModel
from bouquet.serving.experiments import Experiment, ExperimentConfigError, Variant
from tests.serving.support import client_for, publish, set_profile, small_model

CATALOG = load_catalog()
CONFIG = {"salt": "t1", "variants": [{"name": "champion", "share": 0.6},
                                     {"name": "challenger", "share": 0.2},
                                     {"name": "popular", "share": 0.2}]}


def test_assignment_is_stable_and_follows_the_shares() -> None:
    exp = Experiment.from_settings(CONFIG)
    counts = Counter(exp.assign(f"res{i}").name for i in range(20_000))
    assert abs(counts["champion"] / 20_000 - 0.6) < 0.02
    assert abs(counts["popular"] / 20_000 - 0.2) < 0.02
    again = Experiment.from_settings(json.loads(json.dumps(CONFIG)))
    assert all(exp.assign(f"res{i}") == again.assign(f"res{i}") for i in range(500))
    other = Experiment.from_settings({**CONFIG, "salt": "t2"})
    moved = sum(exp.assign(f"res{i}") != other.assign(f"res{i}") for i in range(2000))
    assert moved > 500  # a new salt reshuffles
    assert Experiment.from_settings(None).assign("x") == Variant("champion", 1.0)
    assert exp.pointers == {"current", "challenger"}
    for bad in ({"variants": []}, {"variants": [{"name": "a b", "share": 1}]},
                {"variants": [{"name": "a", "share": -1}]}, {"variants": "x"},
                {"variants": [{"name": "a", "share": 0}]}):
        with pytest.raises(ExperimentConfigError):
            Experiment.from_settings(bad)


@pytest.mark.anyio
async def test_variants_serve_their_own_version_and_are_attributed(make_settings) -> None:
    settings = make_settings(experiments=CONFIG)
    publish(settings, small_model(CATALOG, seed=1), "v1")
    publish(settings, small_model(CATALOG, seed=2), "v2", pointer="challenger")
    exp = Experiment.from_settings(CONFIG)
    by_variant: dict[str, str] = {}
    for i in range(50):
        by_variant.setdefault(exp.assign(f"r{i}").name, f"r{i}")
    assert set(by_variant) == {"champion", "challenger", "popular"}
    for rid in by_variant.values():
        set_profile(settings, rid, consent="1", neighbourhood="centre")
    async with client_for(settings) as c:
        answers = {v: (await c.get(f"/v1/residents/{rid}/bundles")).json()
                   for v, rid in by_variant.items()}
    assert answers["champion"]["model_version"] == "v1" and answers["champion"]["personalised"]
    assert answers["challenger"]["model_version"] == "v2"
    assert answers["challenger"]["personalised"]
    assert answers["popular"]["personalised"] is False
    assert "non-personalised variant" in answers["popular"]["notice"]
    for variant, answer in answers.items():
        assert answer["variant"] == variant
        assert development_ids().verify(answer["recommendation_id"]).variant == variant


def test_fold_in_equals_implicits_recalculate_user() -> None:
    rng = np.random.default_rng(3)
    users, items = 300, 40
    dense = (rng.random((users, items)) < 0.15) * rng.integers(1, 5, (users, items))
    matrix = sp.csr_matrix(dense.astype(np.float32))
    als = implicit.cpu.als.AlternatingLeastSquares(factors=8, regularization=0.1,
                                                   iterations=5, random_state=1)
    with threadpool_limits(1, "blas"):
        als.fit(matrix, show_progress=False)
    model = ServingModel(version="x", model_version="v1", run_id="", bundle_ids=["b"],
                         service_ids=[str(i) for i in range(items)], reason_vocab=[],
                         service_factors=als.item_factors, bundle_matrix=np.zeros((1, 8)),
                         regularization=0.1)
    row = sp.csr_matrix(np.array([[0] * 5 + [3, 0, 1.5] + [0] * (items - 8)], np.float32))
    expected = als.recalculate_user(0, row)
    ours = model.fold_in({5: 3.0, 7: 1.5})
    assert np.allclose(ours, expected, atol=1e-4)
    assert model.fold_in({}) is None and model.fold_in({5: 0.0}) is None


@pytest.mark.parametrize("log_alpha", [None, 2.0])
def test_recent_scores_equal_the_scores_of_the_fold_in(log_alpha) -> None:
    """The serving path scores items from precomputed ``Y G⁻¹ Yᵀ`` / ``Y G⁻¹ Bᵀ`` without
    forming the resident's factors: it must equal scoring :meth:`fold_in`'s result, including
    when only some recent services are above the baseline confidence (a partial Woodbury
    block) and when none are."""
    rng = np.random.default_rng(5)
    services, bundles, factors = 30, 12, 16
    y = (rng.normal(size=(services, factors)) / 4).astype(np.float32)
    b = (rng.normal(size=(bundles, factors)) / 4).astype(np.float32)
    model = ServingModel(version="x", model_version="v1", run_id="",
                         bundle_ids=[f"b{i}" for i in range(bundles)],
                         service_ids=[f"s{i}" for i in range(services)], reason_vocab=[],
                         service_factors=y, bundle_matrix=b, regularization=0.05,
                         alpha=1.0, log_alpha=log_alpha)
    cases = [{3: 2.0, 7: 0.5, 9: 1.0, 20: 0.1}, {5: 0.5}, {5: 3.0}, {1: 0.0, 2: 4.0},
             {1: 1.0, 2: 1e-13, 3: 2.0}, {1: 0.3, 2: 0.2}, {i: 1.0 + i for i in range(20)}]
    for strengths in cases:
        user = model.fold_in(strengths)
        for kind, matrix in (("b", b), ("s", y)):
            got = model.recent_scores(strengths, kind)
            assert got.shape == (len(matrix),)
            np.testing.assert_allclose(got, matrix.astype(np.float64) @ user, rtol=1e-8,
                                       atol=1e-10, err_msg=f"{strengths} {kind}")
    assert model.recent_scores({}, "b") is None and model.recent_scores({4: 0.0}, "s") is None
