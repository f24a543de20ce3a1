"""Item-item nearest neighbours (implicit's sparse all-pairs kNN) behind the Bouquet contract.

Item kNN needs no per-user state: a user's scores are their interaction row times a sparse
item-item similarity matrix. That makes it the natural model for residents who appeared after
training, for real-time scoring, and for explanations (each score is an exact sum over the
items the user used).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr, explain_targets

log = logging.getLogger(__name__)

_WEIGHTINGS = ("cosine", "bm25", "tfidf", "none")


class ItemKNNRecommender(Recommender):
    """Sparse item-item similarity, keeping the ``K`` nearest neighbours of each item.

    Parameters
    ----------
    K : int
        Neighbours kept per item (sparsity of the similarity matrix).
    weighting : {"cosine", "bm25", "tfidf", "none"}
        How interaction columns are weighted before the dot products: cosine normalises
        item vectors, BM25/TF-IDF down-weight very active users, "none" counts raw
        co-occurrences.
    bm25_k1, bm25_b : float
        BM25 saturation and length normalisation (``weighting="bm25"`` only).
    num_threads : int
        Threads of implicit's all-pairs kNN (0 = all cores); the result does not depend on it.
    show_progress : bool
        Show implicit's progress bar during ``fit``.

    Attributes
    ----------
    similarity_ : scipy.sparse.csr_matrix
        ``(n_items, n_items)``; row ``j`` holds the neighbours of item ``j``, so
        ``scores = user_items @ similarity_``.
    n_items_ : int
        Number of items.
    """

    def __init__(
        self,
        K: int = 100,  # noqa: N803 - implicit's name for it
        weighting: str = "cosine",
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
        num_threads: int = 0,
        show_progress: bool = False,
    ) -> None:
        self.K = K
        self.weighting = weighting
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.num_threads = num_threads
        self.show_progress = show_progress

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> ItemKNNRecommender:
        """Compute the top-``K`` item-item similarities of ``user_items``'s columns."""
        from implicit import nearest_neighbours as nn

        if self.weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {self.weighting!r}")
        x = check_csr(user_items).astype(np.float64)
        show = bool(kwargs.get("show_progress", self.show_progress))
        if self.weighting == "cosine":
            weighted = nn.normalize(x.T).T
        elif self.weighting == "bm25":
            weighted = nn.bm25_weight(x.T, self.bm25_k1, self.bm25_b).T
        elif self.weighting == "tfidf":
            weighted = nn.normalize(nn.tfidf_weight(x.T)).T
        else:
            weighted = x
        sim = nn.all_pairs_knn(
            sp.csr_matrix(weighted), self.K, show_progress=show, num_threads=self.num_threads
        )
        self.similarity_ = sp.csr_matrix(sim, dtype=np.float32)
        self.similarity_.sort_indices()
        self.n_users_, self.n_items_ = x.shape
        return self

    def _score(
        self, ids: np.ndarray, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """``user_items @ similarity_`` as a dense array (``user_items`` is required)."""
        rows = _rows(user_items, len(ids), self.n_items_)
        return (rows @ self.similarity_).toarray()

    def explain(
        self, user_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact: item ``j`` contributes ``value_j * sum_k w_k * similarity_[j, item_k]``."""
        self._check_fitted()
        row = check_csr(user_items_row)
        targets, w = explain_targets(item_ids, weights)
        sims = self.similarity_[row.indices][:, targets] @ w
        return row.indices.copy(), row.data.astype(np.float64) * np.asarray(sims).ravel()


def _rows(user_items: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """Validate the per-user interaction rows item-based models need."""
    if user_items is None:
        raise ValueError("this model needs user_items: one interaction row per requested user")
    rows = check_csr(user_items)
    if rows.shape != (n_users, n_items):
        raise ValueError(
            f"user_items must have shape ({n_users}, {n_items}) — one row per user id — "
            f"got {rows.shape}"
        )
    return rows
