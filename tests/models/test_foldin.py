"""Fold-in must be implicit's ``recalculate_user`` as a pure function."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from bouquet.models import ALSRecommender, als_gram, fold_in
from bouquet.models.foldin import FoldIn, fold_in_many


@pytest.fixture(scope="module")
def fitted():
    """An implicit ALS model and the matrix it was trained on."""
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    x = sp.random(300, 120, density=0.05, format="csr", random_state=1, dtype=np.float32)
    x.data = rng.integers(1, 5, size=x.nnz).astype(np.float32)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=16, regularization=0.3, alpha=3.0, iterations=6, random_state=0
        )
        model.fit(x, show_progress=False)
    return model, x


def test_matches_implicit_recalculate_user(fitted) -> None:
    model, x = fitted
    gram = als_gram(model.item_factors, model.regularization)
    for u in range(0, 300, 17):
        row = x[u]
        expected = model.recalculate_user(u, row)
        got = fold_in(row.indices, row.data * model.alpha, model.item_factors, gram)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_negative_confidence_matches_implicit(fitted) -> None:
    """A dismissed item is a confident zero: (|c|-1) y yᵀ in A, nothing in b."""
    model, _ = fitted
    row = sp.csr_matrix(
        (np.array([2.0, -3.0, 1.0], np.float32), np.array([3, 10, 40]), np.array([0, 3])),
        shape=(1, 120),
    )
    gram = als_gram(model.item_factors, model.regularization)
    got = fold_in(row.indices, row.data * model.alpha, model.item_factors, gram)
    np.testing.assert_allclose(got, model.recalculate_user(0, row), rtol=1e-4, atol=1e-5)


def test_is_pure(fitted) -> None:
    model, x = fitted
    y = model.item_factors.copy()
    gram = als_gram(y, model.regularization)
    g0, y0 = gram.copy(), y.copy()
    ids, conf = x[5].indices.copy(), x[5].data.copy()
    fold_in(ids, conf, y, gram)
    assert np.array_equal(gram, g0) and np.array_equal(y, y0)
    assert np.array_equal(ids, x[5].indices) and np.array_equal(conf, x[5].data)


def test_no_events_gives_zero_vector(fitted) -> None:
    model, _ = fitted
    gram = als_gram(model.item_factors, model.regularization)
    assert np.array_equal(fold_in([], [], model.item_factors, gram), np.zeros(16))


def test_duplicate_items_are_summed_like_a_csr_row(fitted) -> None:
    model, _ = fitted
    gram = als_gram(model.item_factors, model.regularization)
    once = fold_in([7, 9], [5.0, 1.0], model.item_factors, gram)
    split = fold_in([7, 9, 7], [2.0, 1.0, 3.0], model.item_factors, gram)
    np.testing.assert_allclose(split, once, rtol=1e-10)


def test_the_woodbury_route_equals_the_direct_route(fitted) -> None:
    """Serving's route (few items, precomputed G⁻¹) and training's (many items) solve the
    same equations: confidences below 1 (negative weights) and confident negatives too."""
    model, x = fitted
    solver = FoldIn(model.item_factors, model.regularization)
    cases = [(x[11].indices, x[11].data * 3.0), ([3, 10, 40], [2.0, -3.0, 1.0]),
             ([1, 2], [0.4, 0.7]), ([7], [1.0]), ([7, 9, 7], [2.0, 1.0, 3.0])]
    for ids, conf in cases:
        direct = fold_in(ids, conf, model.item_factors, solver.gram)
        rows, coef = solver.coefficients(ids, conf)
        np.testing.assert_allclose(coef @ solver.projector[rows], direct, rtol=1e-6,
                                   atol=1e-9)
        np.testing.assert_allclose(solver.solve(ids, conf), direct, rtol=1e-6, atol=1e-9)
    many = np.arange(40)
    np.testing.assert_allclose(solver.solve(many, np.full(40, 2.0)),
                               fold_in(many, np.full(40, 2.0), model.item_factors, solver.gram))


def test_wrapper_recalculate_users_is_fold_in(fitted) -> None:
    _, x = fitted
    als = ALSRecommender(factors=16, regularization=0.3, alpha=3.0, iterations=6).fit(x)
    got = als.recalculate_users(x[:20])
    expected = fold_in_many(x[:20] * 3.0, als.item_factors_, als.gram_)
    np.testing.assert_allclose(got, expected)
    assert got.shape == (20, 16)


def test_als_explanations_sum_to_the_folded_in_score(fitted) -> None:
    _, x = fitted
    als = ALSRecommender(factors=16, regularization=0.3, alpha=3.0, iterations=6).fit(x)
    row = x[[42]]
    user = als.recalculate_users(row)[0]
    for item in (0, 17, 99):
        ids, contrib = als.explain(row, item)
        assert set(ids) == set(row.indices)
        np.testing.assert_allclose(contrib.sum(), user @ als.item_factors_[item], rtol=1e-4)
