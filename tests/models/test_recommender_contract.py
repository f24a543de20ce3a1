"""One contract, proven by every model (implicit's ``RecommenderBaseTestMixin`` idea).

The data is a "checkerboard": even users use even items, odd users odd items (each user a
random 60 % of their half). Any model worth serving must rank the unseen items of the user's
own half first; every model must also honour the shared API (shapes, masking, not-fitted
errors, pickle-free save/load, parameters).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from bouquet.models import (
    ALSRecommender,
    BPRRecommender,
    BundleScorer,
    CrossViewEASE,
    EASERecommender,
    GroupPopularityRecommender,
    ItemKNNRecommender,
    NotFittedError,
    PopularityRecommender,
    Recommender,
    load_model,
)

N_USERS, N_ITEMS, N_SIDE = 60, 40, 30


def checkerboard(n_users: int, n_items: int, seed: int, density: float = 0.6) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    same = (np.arange(n_users)[:, None] % 2) == (np.arange(n_items)[None, :] % 2)
    keep = same & (rng.random((n_users, n_items)) < density)
    return sp.csr_matrix(keep.astype(np.float32))


USER_ITEMS = checkerboard(N_USERS, N_ITEMS, seed=1)
SIDE_ITEMS = checkerboard(N_USERS, N_SIDE, seed=2)
COMPOSITION = checkerboard(N_ITEMS, N_SIDE, seed=3, density=0.3)
GROUPS = [f"block{u % 2}" for u in range(N_USERS)]


class RecommenderContract:
    """Mixin: subclasses set ``make`` (an unfitted model) and may override the hooks."""

    #: whether the model should rank the user's own checkerboard half first
    recovers_structure = True

    def make(self) -> Recommender:
        raise NotImplementedError

    def fit_kwargs(self) -> dict[str, Any]:
        return {}

    def score_kwargs(self, users: np.ndarray) -> dict[str, Any]:
        return {}

    # -- helpers ---------------------------------------------------------------------
    def fitted(self) -> Recommender:
        return self.make().fit(USER_ITEMS, **self.fit_kwargs())

    def scores(self, model: Recommender, users: np.ndarray) -> np.ndarray:
        return model.score(users, USER_ITEMS[users], **self.score_kwargs(users))

    def rec(self, model: Recommender, users: np.ndarray, **kw: Any):
        return model.recommend(users, USER_ITEMS[users], **kw, **self.score_kwargs(users))

    # -- the sklearn contract -----------------------------------------------------------
    def test_fit_returns_self(self) -> None:
        model = self.make()
        assert model.fit(USER_ITEMS, **self.fit_kwargs()) is model
        assert model.is_fitted

    def test_init_only_stores_hyper_parameters(self) -> None:
        model = self.make()
        assert set(vars(model)) == set(model.get_params(deep=False))

    def test_learned_attributes_end_with_underscore(self) -> None:
        model = self.make()
        before = set(vars(model))
        model.fit(USER_ITEMS, **self.fit_kwargs())
        new = set(vars(model)) - before
        assert new and all(k.endswith("_") or k.startswith("_") for k in new)
        assert model.n_items_ == N_ITEMS

    def test_get_params_round_trips_through_json_and_clone(self) -> None:
        model = self.make()
        params = model.get_params(deep=False)
        clone = model.clone()
        assert type(clone) is type(model) and clone is not model
        assert repr(clone.get_params(deep=False)) == repr(params)
        # deep params are flat scalars (sub-models expanded as name__param): MLflow-loggable
        deep = model.get_params(deep=True)
        json.dumps({k: v for k, v in deep.items() if not isinstance(v, Recommender)})

    def test_unfitted_model_raises_not_fitted(self, tmp_path: Path) -> None:
        model = self.make()
        users = np.arange(3)
        with pytest.raises(NotFittedError, match="not fitted"):
            self.scores(model, users)
        with pytest.raises(NotFittedError):
            self.rec(model, users, n=2)
        with pytest.raises(NotFittedError):
            model.save(tmp_path / "m.npz")

    # -- score / recommend -----------------------------------------------------------
    def test_score_shape(self) -> None:
        model = self.fitted()
        users = np.array([0, 5, 7])
        assert self.scores(model, users).shape == (3, N_ITEMS)

    def test_scalar_user_gives_one_dimensional_output(self) -> None:
        model = self.fitted()
        ids, scores = model.recommend(4, USER_ITEMS[[4]], n=5, **self.score_kwargs(np.array([4])))
        assert ids.shape == (5,) and scores.shape == (5,)

    def test_recommend_shapes_and_order(self) -> None:
        model = self.fitted()
        users = np.arange(10)
        ids, scores = self.rec(model, users, n=7)
        assert ids.shape == (10, 7) and scores.shape == (10, 7)
        assert ids.dtype == np.int64
        assert np.all(np.diff(scores, axis=1) <= 0)

    def test_recommend_never_returns_excluded_items(self) -> None:
        model = self.fitted()
        users = np.arange(N_USERS)
        ids, _ = self.rec(model, users, n=10, exclude=USER_ITEMS[users])
        for u in users:
            assert not set(ids[u]) & set(USER_ITEMS[u].indices)

    def test_recommend_has_no_duplicates(self) -> None:
        model = self.fitted()
        ids, _ = self.rec(model, np.arange(N_USERS), n=N_ITEMS)
        for row in ids:
            assert len(set(row)) == N_ITEMS

    def test_filter_items_are_never_recommended(self) -> None:
        model = self.fitted()
        banned = [0, 1, 2, 3]
        ids, _ = self.rec(model, np.arange(20), n=10, filter_items=banned)
        assert not set(ids.ravel()) & set(banned)

    def test_n_is_capped_and_masked_tail_is_padded(self) -> None:
        model = self.fitted()
        users = np.array([0])
        ids, scores = self.rec(model, users, n=N_ITEMS + 10, exclude=USER_ITEMS[users])
        held = USER_ITEMS[0].nnz
        assert ids.shape == (1, N_ITEMS)
        assert np.all(ids[0, N_ITEMS - held :] == -1)
        assert np.all(np.isneginf(scores[0, N_ITEMS - held :]))
        assert np.all(ids[0, : N_ITEMS - held] >= 0)

    def test_exclude_of_wrong_shape_is_rejected(self) -> None:
        model = self.fitted()
        with pytest.raises(ValueError, match="exclude"):
            self.rec(model, np.arange(3), n=2, exclude=USER_ITEMS[:4])

    def test_score_does_not_mutate_inputs(self) -> None:
        model = self.fitted()
        users = np.arange(5)
        rows = USER_ITEMS[users].copy()
        before = rows.toarray().copy()
        model.score(users, rows, **self.score_kwargs(users))
        assert np.array_equal(rows.toarray(), before)

    def test_deterministic_given_seed(self) -> None:
        users = np.arange(N_USERS)
        a = self.scores(self.fitted(), users)
        b = self.scores(self.fitted(), users)
        np.testing.assert_array_equal(a, b)

    def test_recovers_checkerboard_structure_when_it_personalises(self) -> None:
        """A personalising model recommends each user's own half of the checkerboard; a
        non-personalised baseline, ranking everyone alike, cannot (and must not seem to)."""
        model = self.fitted()
        users = np.arange(N_USERS)
        ids, _ = self.rec(model, users, n=5, exclude=USER_ITEMS[users])
        same_half = (ids % 2) == (users[:, None] % 2)
        if self.recovers_structure:
            assert same_half.mean() >= 0.9
        else:
            assert same_half.mean() < 0.75

    # -- persistence -------------------------------------------------------------------
    def test_save_load_round_trip_gives_identical_scores(self, tmp_path: Path) -> None:
        model = self.fitted()
        path = model.save(tmp_path / "model")
        assert path.suffix == ".npz"
        loaded = load_model(path)
        assert type(loaded) is type(model)
        assert repr(loaded.get_params(deep=False)) == repr(model.get_params(deep=False))
        users = np.arange(N_USERS)
        np.testing.assert_array_equal(self.scores(loaded, users), self.scores(model, users))
        assert type(model).load(path).is_fitted

    def test_saved_file_needs_no_pickle(self, tmp_path: Path) -> None:
        path = self.fitted().save(tmp_path / "model.npz")
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                assert b"'descr': '|O'" not in zf.read(name)[:128], name
        with np.load(path, allow_pickle=False) as data:
            json.loads(str(data["__meta__"]))

    def test_loading_on_the_wrong_class_is_refused(self, tmp_path: Path) -> None:
        path = self.fitted().save(tmp_path / "model.npz")
        other = (
            PopularityRecommender
            if not isinstance(self.make(), PopularityRecommender)
            else EASERecommender
        )
        with pytest.raises(TypeError):
            other.load(path)


class TestALS(RecommenderContract):
    def make(self) -> Recommender:
        return ALSRecommender(factors=8, regularization=0.1, alpha=5.0, iterations=10)

    def test_recalculate_matches_stored_factors_closely(self) -> None:
        model = self.fitted()
        users = np.arange(N_USERS)
        fresh = model.score(users, USER_ITEMS[users], recalculate=True)
        stored = model.score(users, USER_ITEMS[users])
        # same ranking of the user's own half above the other half
        assert np.corrcoef(fresh.ravel(), stored.ravel())[0, 1] > 0.95

    def test_unknown_user_without_recalculate_is_an_index_error(self) -> None:
        with pytest.raises(IndexError):
            self.fitted().score([N_USERS + 1])


class TestBPR(RecommenderContract):
    def make(self) -> Recommender:
        return BPRRecommender(factors=8, learning_rate=0.05, iterations=200, num_threads=1)


class TestItemKNNCosine(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNRecommender(K=20)


class TestItemKNNBM25(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNRecommender(K=20, weighting="bm25")


class TestEASE(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(l2=5.0)

    def test_weights_have_zero_diagonal_and_solve_the_closed_form(self) -> None:
        model = self.fitted()
        x = USER_ITEMS.toarray().astype(np.float64)
        p = np.linalg.inv(x.T @ x + 5.0 * np.eye(N_ITEMS))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        np.testing.assert_allclose(model.weights_, b, atol=1e-5)


class TestCrossViewEASETargetsOnly(RecommenderContract):
    def make(self) -> Recommender:
        return CrossViewEASE(l2=5.0)

    def test_equals_plain_ease_without_side_view(self) -> None:
        users = np.arange(N_USERS)
        plain = EASERecommender(l2=5.0).fit(USER_ITEMS)
        np.testing.assert_allclose(
            self.scores(self.fitted(), users), plain.score(users, USER_ITEMS), atol=1e-5
        )


class TestCrossViewEASEWithSideView(RecommenderContract):
    def make(self) -> Recommender:
        return CrossViewEASE(l2=5.0, composition_weight=1.0)

    def fit_kwargs(self) -> dict[str, Any]:
        return {"side_items": SIDE_ITEMS, "composition": COMPOSITION}

    def score_kwargs(self, users: np.ndarray) -> dict[str, Any]:
        return {"side_items": SIDE_ITEMS[users]}

    @pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 0.0, 2.0), (0.0, 1.0, 0.0)])
    def test_primal_and_dual_solvers_agree(self, weights: tuple[float, float, float]) -> None:
        side, projected, composition = weights
        kw = dict(
            l2=5.0, side_weight=side, projected_weight=projected, composition_weight=composition
        )
        primal = CrossViewEASE(**kw, solver="primal").fit(USER_ITEMS, **self.fit_kwargs())
        dual = CrossViewEASE(**kw, solver="dual").fit(USER_ITEMS, **self.fit_kwargs())
        np.testing.assert_allclose(primal.target_weights_, dual.target_weights_, atol=1e-5)
        if primal.side_weights_ is not None:
            np.testing.assert_allclose(primal.side_weights_, dual.side_weights_, atol=1e-5)

    def test_primal_matches_ease_on_the_explicit_feature_matrix(self) -> None:
        """Brute force: build A, run textbook EASE on it, keep the target columns."""
        model = CrossViewEASE(l2=5.0, solver="primal").fit(USER_ITEMS, **self.fit_kwargs())
        x = USER_ITEMS.toarray().astype(np.float64)
        u = SIDE_ITEMS.toarray().astype(np.float64)
        c = COMPOSITION.toarray().astype(np.float64)
        size = np.maximum(c.sum(1, keepdims=True), 1)
        lp, lc = c / size**0.5, c / size**1.0
        blocks = [u, u @ lp.T, x @ lc]
        weights = [1.0, 1.0, 2.0]
        mass = (x**2).sum()
        scaled = [
            np.sqrt(w * mass / (b**2).sum()) * b for w, b in zip(weights, blocks, strict=True)
        ]
        a = np.hstack([x, *scaled])
        p = np.linalg.inv(a.T @ a + 5.0 * np.eye(a.shape[1]))
        b = -p[:, :N_ITEMS] / np.diag(p)[:N_ITEMS]
        b[np.arange(N_ITEMS), np.arange(N_ITEMS)] = 0.0
        expected = a @ b
        users = np.arange(N_USERS)
        np.testing.assert_allclose(self.scores(model, users), expected, atol=1e-4)

    def test_missing_side_rows_at_scoring_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="side_items"):
            self.fitted().score(np.arange(3), USER_ITEMS[:3])


class TestPopularity(RecommenderContract):
    recovers_structure = False

    def make(self) -> Recommender:
        return PopularityRecommender()

    def test_scores_are_user_shares(self) -> None:
        model = self.fitted()
        expected = np.asarray((USER_ITEMS > 0).sum(0)).ravel() / N_USERS
        np.testing.assert_allclose(model.item_popularity_, expected)


class TestGroupPopularity(RecommenderContract):
    def make(self) -> Recommender:
        return GroupPopularityRecommender(shrinkage=1.0)

    def fit_kwargs(self) -> dict[str, Any]:
        return {"groups": GROUPS}

    def test_new_user_gets_their_groups_list_and_unknown_group_the_city_list(self) -> None:
        model = self.fitted()
        by_group = model.score([10_000, 10_001], groups=["block1", "nowhere"])
        odd_share = by_group[0, 1::2].sum() / by_group[0].sum()
        assert odd_share > 0.9
        np.testing.assert_allclose(by_group[1], model.item_popularity_)

    def test_fit_without_groups_is_refused(self) -> None:
        with pytest.raises(ValueError, match="groups"):
            GroupPopularityRecommender().fit(USER_ITEMS)


class TestBundleScorer(RecommenderContract):
    def make(self) -> Recommender:
        return BundleScorer(
            bundle_model=CrossViewEASE(l2=5.0), item_model=ItemKNNRecommender(K=10), mix=0.3
        )

    def fit_kwargs(self) -> dict[str, Any]:
        return {"side_items": SIDE_ITEMS, "composition": COMPOSITION}

    def score_kwargs(self, users: np.ndarray) -> dict[str, Any]:
        return {"side_items": SIDE_ITEMS[users]}


IMPLICIT_FREE_LOAD = """
import sys
for banned in ("implicit", "mlflow", "bouquet.pipelines"):
    sys.modules[banned] = None  # importing any of them now fails
import numpy as np, scipy.sparse as sp
from bouquet.models import load_model
model = load_model(sys.argv[1])
rows = sp.load_npz(sys.argv[2])
kw = {{}}
if len(sys.argv) > 4:
    kw["side_items"] = sp.load_npz(sys.argv[4])
got = model.score(np.arange(rows.shape[0]), rows, **kw)
assert np.array_equal(got, np.load(sys.argv[3])), "scores differ after loading"
print(type(model).__name__)
"""


@pytest.mark.parametrize(
    ("model", "side"),
    [
        (ALSRecommender(factors=4, iterations=3), False),
        (ItemKNNRecommender(K=5), False),
        (BundleScorer(item_model=ItemKNNRecommender(K=5), mix=0.2), True),
    ],
    ids=["als", "knn", "bundles"],
)
def test_saved_model_scores_in_a_process_without_training_libraries(
    tmp_path: Path, model: Recommender, side: bool
) -> None:
    """A saved recommender loads and scores without the libraries that trained it (implicit),
    MLflow or the training pipeline (scikit-learn is the estimators' base class; the served
    models' files need not even that: tests/models/test_deployable.py)."""
    kw = {"side_items": SIDE_ITEMS, "composition": COMPOSITION} if side else {}
    model.fit(USER_ITEMS, **kw)
    path = model.save(tmp_path / "model")
    sp.save_npz(tmp_path / "rows.npz", USER_ITEMS)
    score_kw = {"side_items": SIDE_ITEMS} if side else {}
    np.save(tmp_path / "expected.npy", model.score(np.arange(N_USERS), USER_ITEMS, **score_kw))
    args = [str(path), str(tmp_path / "rows.npz"), str(tmp_path / "expected.npy")]
    if side:
        sp.save_npz(tmp_path / "side.npz", SIDE_ITEMS)
        args.append(str(tmp_path / "side.npz"))
    out = subprocess.run(
        [sys.executable, "-c", IMPLICIT_FREE_LOAD.format(), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == type(model).__name__
