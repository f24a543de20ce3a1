"""How EASE and CrossViewEASE solve: estimated before allocating, chosen by memory and time.

Every exact solver must give the closed-form model; the low-rank one must be exact at full
rank and a usable approximation below it; the choice must follow the estimates (tested on
made-up estimates and on a catalog of the size that used to crash, without fitting it); and
when nothing fits the error must give the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from bouquet.models import CrossViewEASE, EASERecommender, Recommender, load_model, solvers
from bouquet.models.solvers import MAX_DENSE_DIM, SolverDoesNotFitError, SolverEstimate, choose
from tests.models.test_recommender_contract import (
    COMPOSITION,
    N_ITEMS,
    N_USERS,
    SIDE_ITEMS,
    USER_ITEMS,
    RecommenderContract,
)

SIDE = {"side_items": SIDE_ITEMS, "composition": COMPOSITION}


def closed_form_ease(x: sp.csr_matrix, l2: float) -> np.ndarray:
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + l2 * np.eye(dense.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def wide_matrix(seed: int = 0) -> sp.csr_matrix:
    """More items than users: the case the dual form exists for."""
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((40, 120)) < 0.12).astype(np.float32))


# ---------------------------------------------------------------------- every solver, one model
class TestEASEDual(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(l2=5.0, solver="dual")

    @pytest.mark.parametrize("x", [USER_ITEMS, wide_matrix()], ids=["tall", "wide"])
    def test_equals_the_closed_form(self, x: sp.csr_matrix) -> None:
        model = EASERecommender(l2=5.0, solver="dual").fit(x)
        assert model.solver_ == "dual"
        np.testing.assert_allclose(model.weights_, closed_form_ease(x, 5.0), atol=1e-5)


class TestEASELowRank(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(l2=5.0, solver="lowrank", rank=6)

    @pytest.mark.parametrize("x", [USER_ITEMS, wide_matrix()], ids=["tall", "wide"])
    def test_full_rank_equals_the_closed_form(self, x: sp.csr_matrix) -> None:
        model = EASERecommender(l2=5.0, solver="lowrank", rank=min(x.shape)).fit(x)
        assert model.solver_estimate_["exact"] is True
        np.testing.assert_allclose(model.weights_, closed_form_ease(x, 5.0), atol=1e-5)

    def test_is_deterministic(self) -> None:
        a, b = self.fitted(), self.fitted()
        assert np.array_equal(a.weights_, b.weights_)


class TestCrossViewEASELowRank(RecommenderContract):
    def make(self) -> Recommender:
        return CrossViewEASE(l2=5.0, composition_weight=1.0, solver="lowrank", rank=8)

    def fit_kwargs(self) -> dict:
        return SIDE

    def score_kwargs(self, users: np.ndarray) -> dict:
        return {"side_items": SIDE_ITEMS[users]}

    @pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.5, 0.0, 2.0), (0.0, 1.0, 0.0)])
    def test_full_rank_equals_the_exact_solvers(self, weights: tuple[float, float, float]) -> None:
        side, projected, composition = weights
        kw = dict(l2=5.0, side_weight=side, projected_weight=projected,
                  composition_weight=composition)
        exact = CrossViewEASE(**kw, solver="primal").fit(USER_ITEMS, **SIDE)
        low = CrossViewEASE(**kw, solver="lowrank", rank=N_USERS).fit(USER_ITEMS, **SIDE)
        np.testing.assert_allclose(low.target_weights_, exact.target_weights_, atol=1e-5)
        np.testing.assert_allclose(low.side_weights_, exact.side_weights_, atol=1e-5)
        assert low.block_scales_ == pytest.approx(exact.block_scales_, rel=1e-6)

    def test_without_side_view_equals_plain_lowrank_ease(self) -> None:
        cv = CrossViewEASE(l2=5.0, solver="lowrank", rank=8).fit(USER_ITEMS)
        plain = EASERecommender(l2=5.0, solver="lowrank", rank=8).fit(USER_ITEMS)
        np.testing.assert_allclose(cv.target_weights_, plain.weights_, atol=1e-6)


def test_low_rank_is_closer_to_the_exact_model_as_the_rank_grows() -> None:
    exact = closed_form_ease(USER_ITEMS, 5.0)
    errors = [
        np.abs(EASERecommender(l2=5.0, solver="lowrank", rank=r).fit(USER_ITEMS).weights_
               - exact).max()
        for r in (2, 8, 20, N_ITEMS)
    ]
    assert errors[-1] < 1e-5
    assert errors == sorted(errors, reverse=True)


# ---------------------------------------------------------------------- the choice
def est(name: str, gb: float, s: float, exact: bool = True, dim: int = 0) -> SolverEstimate:
    return SolverEstimate(name, exact=exact, peak_gb=gb, seconds=s, dense_dim=dim)


def test_auto_takes_the_first_exact_solver_within_memory_and_time() -> None:
    options = [est("primal", 1.0, 30.0), est("dual", 0.5, 5.0), est("lowrank", 0.1, 1.0, False)]
    assert choose(options, "auto", 60.0, 10.0, "m").solver == "primal"
    # over the time budget: the next exact one
    assert choose(options, "auto", 10.0, 10.0, "m").solver == "dual"
    # no exact one in time: the fastest that fits in memory
    assert choose(options, "auto", 2.0, 10.0, "m").solver == "lowrank"
    # over the memory budget: skipped whatever its speed
    assert choose(options, "auto", 60.0, 0.7, "m").solver == "dual"


def test_auto_never_plans_a_dense_factorisation_above_the_safe_size() -> None:
    options = [est("primal", 1.0, 1.0, dim=MAX_DENSE_DIM + 1), est("lowrank", 1.0, 9.0, False)]
    assert choose(options, "auto", 60.0, 100.0, "m").solver == "lowrank"


def test_a_requested_solver_is_honoured_over_time_but_not_over_memory() -> None:
    options = [est("primal", 1.0, 500.0), est("lowrank", 0.1, 1.0, False)]
    assert choose(options, "primal", 60.0, 10.0, "m").solver == "primal"
    with pytest.raises(SolverDoesNotFitError, match=r"primal: 1\.00 GB"):
        choose(options, "primal", 60.0, 0.5, "m")
    with pytest.raises(ValueError, match="solver must be"):
        choose(options, "cholesky", 60.0, 10.0, "m")


def test_when_nothing_fits_the_error_gives_the_numbers() -> None:
    options = [est("primal", 9.81, 703.0, dim=22864), est("lowrank", 2.28, 13.0, False)]
    with pytest.raises(SolverDoesNotFitError) as err:
        choose(options, "auto", 60.0, 1.5, "EASE on 18528 users x 22864 items")
    text = str(err.value)
    for part in ("EASE on 18528 users", "budget 1.50 GB", "primal: 9.81 GB", "~703 s",
                 "22864²", "lowrank: 2.28 GB", "~13 s", f"{MAX_DENSE_DIM}²"):
        assert part in text
    assert isinstance(err.value, MemoryError)


def test_a_model_refuses_before_allocating_when_nothing_fits() -> None:
    with pytest.raises(SolverDoesNotFitError, match="GB"):
        EASERecommender(l2=5.0, max_memory_gb=1e-9).fit(USER_ITEMS)
    with pytest.raises(SolverDoesNotFitError, match="GB"):
        CrossViewEASE(l2=5.0, max_memory_gb=1e-9).fit(USER_ITEMS, **SIDE)


def test_the_memory_budget_defaults_to_a_share_of_available_memory(monkeypatch) -> None:
    monkeypatch.setattr(solvers, "available_gb", lambda: 1.0)
    options = [est("primal", 0.9, 1.0), est("lowrank", 0.5, 1.0, False)]
    assert choose(options, "auto", 60.0, None, "m").solver == "lowrank"


def test_the_crashed_catalog_shape_is_planned_without_a_dense_inverse() -> None:
    """18 528 users x 22 864 items: the primal inverse is refused before anything is
    allocated; the planned solver fits in a few GB."""
    rng = np.random.default_rng(0)
    n_users, n_items, nnz = 18_528, 22_864, 217_864
    x = sp.csr_matrix(
        (np.ones(nnz, np.float32), (rng.integers(0, n_users, nnz), rng.integers(0, n_items, nnz))),
        shape=(n_users, n_items),
    )
    model = EASERecommender(l2=300.0, max_memory_gb=16.0)
    estimates = {e.solver: e for e in model.estimates(x)}
    assert estimates["primal"].dense_dim == n_items > MAX_DENSE_DIM
    assert estimates["primal"].peak_gb > 9.0  # ~20 bytes per weight: the LU, B and float32 B
    assert estimates["dual"].dense_dim == n_users
    chosen = choose(list(estimates.values()), "auto", model.max_seconds, 16.0, "EASE")
    assert chosen.solver in ("dual", "lowrank") and chosen.peak_gb < 6.0


@pytest.mark.parametrize("exact_in_time", [True, False])
def test_auto_uses_the_estimates(exact_in_time: bool) -> None:
    """Default: today's exact solver on a small catalog, bit for bit; with no time for an
    exact solve, the fastest (here a closed form is not, so the model says which it used)."""
    budget = 60.0 if exact_in_time else 0.0
    model = CrossViewEASE(l2=5.0, max_seconds=budget).fit(USER_ITEMS, **SIDE)
    planned = min(model.estimates(USER_ITEMS, **SIDE), key=lambda e: e.seconds)
    if exact_in_time:
        assert model.solver_ == "dual"  # fewer users (60) than features (140)
        same = CrossViewEASE(l2=5.0, solver="dual").fit(USER_ITEMS, **SIDE)
        assert np.array_equal(model.target_weights_, same.target_weights_)
    else:
        assert model.solver_ == planned.solver
    assert set(model.solver_estimate_) >= {"solver", "peak_gb", "seconds", "exact"}


def test_the_dual_solver_uses_float32_only_when_the_kernel_is_well_conditioned() -> None:
    from bouquet.models.ease import _dual_dtype

    assert _dual_dtype(USER_ITEMS, 500.0) == np.float32
    assert _dual_dtype(USER_ITEMS, 1e-3) == np.float64
    ill = EASERecommender(l2=1e-3, solver="dual").fit(USER_ITEMS)
    assert ill.solver_estimate_["dtype"] == "float64"
    np.testing.assert_allclose(ill.weights_, closed_form_ease(USER_ITEMS, 1e-3), atol=1e-4)


def test_blas_threads_are_pinned_during_the_solve(monkeypatch) -> None:
    from bouquet.models import ease

    seen: list[set[int]] = []
    real = ease.EASERecommender._fit_primal

    def spy(self, x):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real(self, x)

    monkeypatch.setattr(ease.EASERecommender, "_fit_primal", spy)
    monkeypatch.setattr(solvers, "blas_threads", lambda: 1)
    EASERecommender(l2=5.0).fit(USER_ITEMS)
    assert seen == [{1}]


def test_the_solver_is_saved_with_the_model(tmp_path) -> None:
    model = CrossViewEASE(l2=5.0, solver="lowrank", rank=8).fit(USER_ITEMS, **SIDE)
    loaded = load_model(model.save(tmp_path / "m"))
    assert loaded.solver_ == "lowrank"
    assert loaded.solver_estimate_ == model.solver_estimate_


def test_a_fitted_models_serving_form_scores_without_threadpoolctl(tmp_path) -> None:
    """The solver code pins BLAS at fit time only: the model as served (its linear terms,
    loaded from disk) needs neither threadpoolctl nor scikit-learn nor implicit."""
    import subprocess
    import sys

    from bouquet.models.confidence import ConfidenceRule
    from bouquet.models.linear import LinearModel, LinearTerm, TermGroup

    model = CrossViewEASE(l2=5.0, solver="lowrank", rank=8).fit(USER_ITEMS, **SIDE)
    n_users, n_b = USER_ITEMS.shape
    n_s = SIDE_ITEMS.shape[1]
    served = LinearModel(
        service_ids=[f"s{i}" for i in range(n_s)], bundle_ids=[f"b{i}" for i in range(n_b)],
        bundle_services={f"b{i}": [] for i in range(n_b)}, neighbourhoods=[],
        rule=ConfidenceRule({}), popular_services=np.zeros((1, n_s)),
        popular_bundles=np.zeros((1, n_b)),
        resident_ids=np.array([f"u{u}" for u in range(n_users)]),
        resident_neighbourhood=np.full(n_users, -1, np.int16),
        resident_services=SIDE_ITEMS, resident_bundles=USER_ITEMS,
        terms=[LinearTerm("b", "b", sp.csr_matrix(model.target_weights_), True),
               LinearTerm("s", "b", sp.csr_matrix(model.side_weights_), True),
               LinearTerm("s", "s", sp.csr_matrix((n_s, n_s)), False)],
        groups=[TermGroup("b", 0), TermGroup("s", 0)])
    expected = model.score(np.arange(3), USER_ITEMS[:3], side_items=SIDE_ITEMS[:3])
    np.testing.assert_allclose(served.score(np.arange(3), "b"), expected, rtol=1e-5,
                               atol=1e-6)
    served.save(tmp_path / "m")
    np.save(tmp_path / "expected.npy", served.score(np.arange(3), "b"))
    script = (
        "import sys\n"
        "for banned in ('threadpoolctl', 'sklearn', 'implicit'):\n"
        "    sys.modules[banned] = None\n"
        "import numpy as np\n"
        "from bouquet.models.deployable import load_model_dir\n"
        f"m = load_model_dir({str(tmp_path / 'm')!r})\n"
        f"assert np.array_equal(m.score(np.arange(3), 'b'), "
        f"np.load({str(tmp_path / 'expected.npy')!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_primal_gram_is_summed_in_float64_over_many_float32_rows() -> None:
    """A float32 product over hundreds of thousands of rows rounds each entry by more than a
    small ridge; the primal solvers' Gram is the float64 one, whatever the block of rows."""
    from bouquet.models.ease import _gram

    rng = np.random.default_rng(3)
    a = sp.random(300_000, 12, density=0.5, format="csr", dtype=np.float32, random_state=rng)
    a.data = 1.0 + 4.0 * a.data
    a64 = a.astype(np.float64)
    exact = (a64.T @ a64).toarray()
    np.testing.assert_allclose(_gram(a), exact, rtol=1e-12)
    assert np.abs((a.T @ a).toarray() - exact).max() > 1e-6  # what float32 would have given
