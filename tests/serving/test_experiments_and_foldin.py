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
from bouquet.models.confidence import ConfidenceRule, Strengths
from bouquet.models.factor import FactorModel
from bouquet.models.foldin import als_gram, fold_in
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


def _factor_model(service_factors: np.ndarray, bundle_factors: np.ndarray,
                  regularization: float, log_alpha: float | None) -> FactorModel:
    """A serving view over ``service_factors``; a ``log_alpha`` of None makes the
    confidence of a strength the strength itself plus one (log1p ≈ identity is not needed:
    the tests feed strengths through the model's own rule)."""
    n_s, n_b = len(service_factors), len(bundle_factors)
    return FactorModel(
        service_ids=[f"s{i}" for i in range(n_s)], bundle_ids=[f"b{i}" for i in range(n_b)],
        bundle_services={f"b{i}": [] for i in range(n_b)}, neighbourhoods=[],
        rule=ConfidenceRule({}, log_alpha=2.0 if log_alpha is None else log_alpha),
        popular_services=np.zeros((1, n_s)), popular_bundles=np.zeros((1, n_b)),
        service_factors=service_factors, bundle_factors=bundle_factors,
        regularization=regularization)


def test_fold_in_equals_implicits_recalculate_user() -> None:
    rng = np.random.default_rng(3)
    users, items = 300, 40
    dense = (rng.random((users, items)) < 0.15) * rng.integers(1, 5, (users, items))
    matrix = sp.csr_matrix(dense.astype(np.float32))
    als = implicit.cpu.als.AlternatingLeastSquares(factors=8, regularization=0.1,
                                                   iterations=5, random_state=1)
    with threadpool_limits(1, "blas"):
        als.fit(matrix, show_progress=False)
    model = _factor_model(als.item_factors, np.zeros((1, 8)), 0.1, 2.0)
    rule = model.rule
    # confidences 3 and 1.5 as the rule makes them from strengths
    strengths = {5: float(np.expm1((3.0 - 1) / rule.log_alpha)),
                 7: float(np.expm1((1.5 - 1) / rule.log_alpha))}
    row = sp.csr_matrix(np.array([[0] * 5 + [3, 0, 1.5] + [0] * (items - 8)], np.float32))
    expected = als.recalculate_user(0, row)
    ours = model.fold_in(Strengths(strengths, {}))
    assert np.allclose(ours, expected, atol=1e-4)
    assert model.fold_in(Strengths({}, {})) is None
    assert model.fold_in(Strengths({5: 0.0}, {})) is None


@pytest.mark.parametrize("log_alpha", [0.5, 2.0])
def test_recent_scores_equal_the_scores_of_the_fold_in(log_alpha) -> None:
    """Serving scores items from the Woodbury coefficients without a solve of size f: it
    must equal scoring the directly solved fold-in, including when only some recent services
    are above the baseline confidence of 1 (alpha below 1 makes some weights negative)."""
    rng = np.random.default_rng(5)
    services, bundles, factors = 30, 12, 16
    y = (rng.normal(size=(services, factors)) / 4).astype(np.float32)
    b = (rng.normal(size=(bundles, factors)) / 4).astype(np.float32)
    cases = [{3: 2.0, 7: 0.5, 9: 1.0, 20: 0.1}, {5: 0.5}, {5: 3.0}, {1: 0.0, 2: 4.0},
             {1: 1.0, 2: 1e-13, 3: 2.0}, {1: 0.3, 2: 0.2}, {i: 1.0 + i for i in range(20)}]
    for alpha in (0.25, 1.0, 2.0):
        model = _factor_model(y, b, 0.05, log_alpha)
        model.alpha = alpha
        for case in cases:
            strengths = Strengths(case, {})
            kept = {i: s for i, s in case.items() if s > 0}
            ids = np.array(list(kept))
            conf = alpha * model.rule.confidence(np.array(list(kept.values())))
            user = fold_in(ids, conf, y, als_gram(y, 0.05))
            for kind, matrix in (("b", b), ("s", y)):
                got = model.recent_scores(strengths, kind)
                assert got.shape == (len(matrix),)
                np.testing.assert_allclose(got, matrix.astype(np.float64) @ user, rtol=1e-6,
                                           atol=1e-9, err_msg=f"{case} {kind} {alpha}")
    assert model.recent_scores(Strengths({}, {}), "b") is None
    assert model.recent_scores(Strengths({4: 0.0}, {}), "s") is None
