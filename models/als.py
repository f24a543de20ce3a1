"""Implicit-feedback ALS (implicit's CPU solver) behind the Bouquet contract.

Why wrap rather than use implicit directly: the training pipeline and serving need ``fit`` to
return ``self``, learned attributes with a trailing underscore, ``get_params`` for MLflow, a
pickle-free artifact and the pure :func:`~bouquet.models.foldin.fold_in` for real-time
re-ranking. implicit stays the solver; this file only adapts it.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr, explain_targets
from bouquet.models.foldin import als_gram, fold_in_many
from bouquet.models.implicit_fit import fit_factors

log = logging.getLogger(__name__)


class ALSRecommender(Recommender):
    """Weighted matrix factorisation for implicit feedback (Hu, Koren & Volinsky 2008).

    Parameters
    ----------
    factors : int
        Latent dimension.
    regularization : float
        L2 penalty :math:`\\lambda` on both factor matrices.
    alpha : float
        Confidence scaling: ALS trains on ``alpha * user_items``.
    iterations : int
        ALS sweeps.
    use_cg : bool
        Conjugate-gradient inner solver (faster, approximate) instead of Cholesky.
    random_state : int or None
        Seed of the factor initialisation; results are deterministic for a given seed
        (each user's / item's solve is independent, so thread count does not matter).
    num_threads : int
        Threads for implicit's own parallel loop (0 = all cores). BLAS is pinned to one
        thread during ``fit`` because implicit's per-row solves otherwise oversubscribe.
    show_progress : bool
        Show implicit's tqdm progress bar during ``fit``.

    Attributes
    ----------
    user_factors_ : numpy.ndarray
        ``(n_users, factors)`` float32.
    item_factors_ : numpy.ndarray
        ``(n_items, factors)`` float32.
    n_users_, n_items_ : int
        Training matrix shape.
    """

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 10.0,
        iterations: int = 15,
        use_cg: bool = True,
        random_state: int | None = 0,
        num_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.use_cg = use_cg
        self.random_state = random_state
        self.num_threads = num_threads
        self.show_progress = show_progress

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> ALSRecommender:
        """Factorise ``user_items`` (see :meth:`Recommender.fit`).

        ``show_progress=True`` may be passed here to override the constructor flag.
        """
        from implicit.cpu.als import AlternatingLeastSquares

        x = check_csr(user_items).astype(np.float32)
        show = bool(kwargs.get("show_progress", self.show_progress))
        make_model = partial(
            AlternatingLeastSquares,
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            use_cg=self.use_cg,
            random_state=self.random_state,
            num_threads=self.num_threads,
        )
        self.user_factors_, self.item_factors_ = fit_factors(make_model, x, show)
        self.n_users_, self.n_items_ = x.shape
        self._gram = None
        log.debug("ALS fitted on %s users x %s items", *x.shape)
        return self

    def _after_load(self) -> None:
        self._gram = None

    @property
    def gram_(self) -> np.ndarray:
        """``YᵀY + λI`` (float64), cached: the shared part of every fold-in solve."""
        self._check_fitted()
        if getattr(self, "_gram", None) is None:
            self._gram = als_gram(self.item_factors_, self.regularization)
        return self._gram

    def recalculate_users(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Fresh factors for each row of ``user_items`` without touching the model.

        Same solve as implicit's ``recalculate_user`` (exact, alpha applied here).
        """
        self._check_fitted()
        rows = check_csr(user_items)
        return fold_in_many(rows * self.alpha, self.item_factors_, self.gram_)

    def _score(
        self,
        ids: np.ndarray,
        user_items: sp.csr_matrix | None = None,
        recalculate: bool = False,
        **kwargs: Any,
    ) -> np.ndarray:
        """Dot products of user and item factors.

        With ``recalculate=True`` the user factors are folded in from ``user_items`` instead of
        read from ``user_factors_`` (new residents, or residents with fresh events).
        """
        if recalculate:
            if user_items is None:
                raise ValueError("recalculate=True needs user_items (one row per user)")
            users = self.recalculate_users(user_items)
        else:
            if ids.size and (ids.min() < 0 or ids.max() >= self.n_users_):
                raise IndexError(
                    f"user ids must be in [0, {self.n_users_}); use recalculate=True for "
                    "users unseen at training time"
                )
            users = self.user_factors_[ids]
        return users @ self.item_factors_.T

    def explain(
        self, user_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact contribution of each interacted item to the (weighted) score of ``item_ids``.

        Because folded-in factors are :math:`x = A^{-1} b` with :math:`b = \\sum_j c_j y_j`,
        the score of item :math:`i` splits as :math:`\\sum_j c_j\\, y_i^\\top A^{-1} y_j`
        (implicit's ``explain``). Uses the folded-in user, which is what serving scores.

        Returns
        -------
        interacted : numpy.ndarray
            Ids of the user's items (the row's non-zero columns).
        contributions : numpy.ndarray
            Their contributions; they sum to the folded-in score.
        """
        self._check_fitted()
        row = check_csr(user_items_row)
        j, c = row.indices, row.data.astype(np.float64) * self.alpha
        targets, w = explain_targets(item_ids, weights)
        y = self.item_factors_.astype(np.float64)
        yj = y[j]
        a = self.gram_ + (yj.T * (np.abs(c) - 1.0)) @ yj
        v = np.linalg.solve(a, y[targets].T @ w)  # A^{-1} sum_i w_i y_i
        return j.copy(), np.where(c > 0, c, 0.0) * (yj @ v)
