"""Bayesian Personalised Ranking (implicit's CPU SGD) behind the Bouquet contract.

BPR optimises pairwise ranking directly, which suits short engagement histories where the
confidence values of ALS carry little information. implicit appends a bias column to the factors
(the user side is a constant 1), so ``user_factors_ @ item_factors_.T`` already includes the
item bias and no special scoring is needed.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr
from bouquet.models.implicit_fit import fit_factors

log = logging.getLogger(__name__)


class BPRRecommender(Recommender):
    """Matrix factorisation trained with the BPR pairwise loss (Rendle et al. 2009).

    Parameters
    ----------
    factors : int
        Latent dimension (implicit adds one bias column).
    learning_rate : float
        SGD step size.
    regularization : float
        L2 penalty.
    iterations : int
        Epochs over the positive pairs.
    verify_negative_samples : bool
        Re-draw sampled negatives the user actually interacted with (slower, better).
    random_state : int or None
        Seed. Training is only bit-for-bit reproducible with ``num_threads=1``: with more
        threads implicit runs lock-free ("Hogwild") SGD whose update order varies.
    num_threads : int
        SGD threads (0 = all cores).
    show_progress : bool
        Show implicit's progress bar during ``fit``.

    Attributes
    ----------
    user_factors_, item_factors_ : numpy.ndarray
        ``(n, factors + 1)`` float32, bias column last.
    n_users_, n_items_ : int
        Training matrix shape.
    """

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 100,
        verify_negative_samples: bool = True,
        random_state: int | None = 0,
        num_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.verify_negative_samples = verify_negative_samples
        self.random_state = random_state
        self.num_threads = num_threads
        self.show_progress = show_progress

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> BPRRecommender:
        """Train on the non-zero pattern of ``user_items`` (values are ignored by BPR)."""
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        x = check_csr(user_items).astype(np.float32)
        show = bool(kwargs.get("show_progress", self.show_progress))
        make_model = partial(
            BayesianPersonalizedRanking,
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            verify_negative_samples=self.verify_negative_samples,
            random_state=self.random_state,
            num_threads=self.num_threads,
        )
        self.user_factors_, self.item_factors_ = fit_factors(make_model, x, show)
        self.n_users_, self.n_items_ = x.shape
        return self

    def _score(
        self, ids: np.ndarray, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Factor dot products (``user_items`` is not needed and ignored)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_users_):
            raise IndexError(f"user ids must be in [0, {self.n_users_})")
        return self.user_factors_[ids] @ self.item_factors_.T
