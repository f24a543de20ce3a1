"""Offline ranking metrics, vectorised, with the official bundle-recommendation definitions.

For each evaluated user (a row with at least one positive) the scorer's row is masked
(``-inf`` on masked items: training positives, holdings), the top ``max(K)`` items are
taken with ``argpartition`` and sorted, and for every ``K``:

- ``recall_at_K``    = hits in the top K / number of the user's positives (not min(n, K)),
- ``precision_at_K`` = hits in the top K / K,
- ``ndcg_at_K``      = Σ over hits of 1/log2(rank + 1), over the ideal DCG of min(n, K)
  positives,
- ``map_at_K``       = Σ over hits of precision at that rank, over min(n, K),

each averaged over users; ``coverage_at_K`` is the share of the catalog that appears in at
least one evaluated user's top K. These are the definitions of the BGCN / CrossCBR protocol
(``../shared/tools/bundle_eval.py``), so the Youshu benchmark reuses this module as is.
A masked item never counts as a hit, even when fewer than K items remain.

Scorers are callables ``rows -> dense scores (len(rows) × n_items)``; users are processed in
batches so a million residents never need a dense million-row matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import top_n

Scorer = Callable[[np.ndarray], np.ndarray]
DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
METRICS: tuple[str, ...] = ("recall", "ndcg", "map", "precision", "coverage")


def top_k(scores: np.ndarray, k: int, mask: sp.csr_matrix | None = None) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first, by
    :func:`bouquet.models.base.top_n` (ties by item id) after masked items are set to -inf
    (in place); ``-1`` where fewer than ``k`` items remain."""
    if mask is not None and mask.nnz:
        coo = mask.tocoo()
        scores[coo.row, coo.col] = -np.inf
    return top_n(scores, k)[0]


@dataclass
class UserMetrics:
    """Per evaluated user (rows of ``truth`` with a positive) every metric, and the catalog
    coverage of the top K lists. Averages are what :func:`ranking_metrics` reports; the
    per-user values let two models be compared on the same users (paired bootstrap)."""

    users: np.ndarray  # row indices, increasing
    values: dict[str, np.ndarray]  # "recall_at_20" -> one value per user
    coverage: dict[str, float]  # "coverage_at_20" -> share of the catalog shown

    def mean(self) -> dict[str, float]:
        """Averages over users; NaN for every metric when no user could be evaluated."""
        n = len(self.users)
        out = {name: float(v.mean()) if n else float("nan") for name, v in self.values.items()}
        out.update(self.coverage)
        out["users"] = float(n)
        return dict(sorted(out.items()))


def user_metrics(
    scorer: Scorer,
    truth: sp.csr_matrix,
    mask: sp.csr_matrix | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    rows: np.ndarray | None = None,
    batch_size: int = 4096,
) -> UserMetrics:
    """Every metric for every row of ``truth`` with a positive (or of ``rows`` among them)."""
    ks = sorted(set(int(k) for k in ks))
    truth = sp.csr_matrix(truth)
    n_items = truth.shape[1]
    n_pos = np.diff(truth.indptr)
    candidates = np.flatnonzero(n_pos > 0)
    if rows is not None:
        candidates = np.intersect1d(candidates, np.asarray(rows))
    parts: dict[str, list[np.ndarray]] = {f"{m}_at_{k}": [] for m in METRICS
                                          if m != "coverage" for k in ks}
    covered = {k: np.zeros(n_items, dtype=bool) for k in ks}
    k_max = max(ks)
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal = np.cumsum(discount)
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start:start + batch_size]
        scores = np.array(scorer(batch), dtype=np.float64, copy=True)
        if scores.shape != (len(batch), n_items):
            raise ValueError(f"scorer returned shape {scores.shape}, expected "
                             f"{(len(batch), n_items)}")
        top = top_k(scores, k_max, None if mask is None else mask[batch])
        valid = top >= 0
        top = np.where(valid, top, 0)
        relevant = truth[batch].toarray() > 0
        hits = np.take_along_axis(relevant, top, axis=1) & valid
        positives = n_pos[batch].astype(np.float64)
        cum_hits = np.cumsum(hits, axis=1)
        precision_at_rank = cum_hits / np.arange(1, top.shape[1] + 1)
        for k in ks:
            kk = min(k, top.shape[1])
            h = hits[:, :kk]
            n_hits = h.sum(axis=1)
            best = np.minimum(positives, k).astype(np.int64)
            parts[f"recall_at_{k}"].append(n_hits / positives)
            parts[f"precision_at_{k}"].append(n_hits / k)
            parts[f"ndcg_at_{k}"].append((h * discount[:kk]).sum(axis=1) / ideal[best - 1])
            parts[f"map_at_{k}"].append((precision_at_rank[:, :kk] * h).sum(axis=1) / best)
            covered[k][top[:, :kk][valid[:, :kk]]] = True
    values = {name: np.concatenate(chunks) if chunks else np.zeros(0)
              for name, chunks in parts.items()}
    coverage = {f"coverage_at_{k}": float(covered[k].mean()) if len(candidates)
                else float("nan") for k in ks}
    return UserMetrics(candidates, values, coverage)


def ranking_metrics(
    scorer: Scorer,
    truth: sp.csr_matrix,
    mask: sp.csr_matrix | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    rows: np.ndarray | None = None,
    batch_size: int = 4096,
) -> dict[str, float]:
    """Average ranking metrics of ``scorer`` over the rows of ``truth`` with a positive.

    ``rows`` restricts the evaluation to a subset of rows. Returns ``{"recall_at_20": …,
    …, "users": n}``; with no evaluable user every metric is NaN.
    """
    return user_metrics(scorer, truth, mask, ks, rows=rows, batch_size=batch_size).mean()


def matrix_scorer(scores: np.ndarray | sp.spmatrix) -> Scorer:
    """A scorer reading rows of a precomputed score matrix (tests, small data)."""
    if sp.issparse(scores):
        csr = sp.csr_matrix(scores)
        return lambda rows: csr[rows].toarray()
    dense = np.asarray(scores)
    return lambda rows: dense[rows]
