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

import numpy as np
import scipy.sparse as sp

Scorer = Callable[[np.ndarray], np.ndarray]
DEFAULT_KS: tuple[int, ...] = (5, 10, 20)
METRICS: tuple[str, ...] = ("recall", "ndcg", "map", "precision", "coverage")


def top_k(scores: np.ndarray, k: int, mask: sp.csr_matrix | None = None) -> np.ndarray:
    """Indices of the ``k`` best items per row, best first (masked items set to -inf first).

    Ties are broken by item index so rankings are reproducible. ``scores`` is modified in
    place when ``mask`` is given.
    """
    n_items = scores.shape[1]
    k = min(k, n_items)
    if mask is not None and mask.nnz:
        coo = mask.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n_items), scores.shape).copy()
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    return np.take_along_axis(part, order, axis=1)


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
    ks = sorted(set(int(k) for k in ks))
    truth = sp.csr_matrix(truth)
    n_items = truth.shape[1]
    n_pos = np.diff(truth.indptr)
    candidates = np.flatnonzero(n_pos > 0)
    if rows is not None:
        candidates = np.intersect1d(candidates, np.asarray(rows))
    sums = {f"{m}_at_{k}": 0.0 for m in METRICS if m != "coverage" for k in ks}
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
        valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
        relevant = truth[batch].toarray() > 0
        hits = np.take_along_axis(relevant, top, axis=1) & valid
        positives = n_pos[batch].astype(np.float64)
        cum_hits = np.cumsum(hits, axis=1)
        precision_at_rank = cum_hits / np.arange(1, top.shape[1] + 1)
        for k in ks:
            kk = min(k, top.shape[1])
            h = hits[:, :kk]
            n_hits = h.sum(axis=1)
            sums[f"recall_at_{k}"] += float((n_hits / positives).sum())
            sums[f"precision_at_{k}"] += float((n_hits / k).sum())
            dcg = (h * discount[:kk]).sum(axis=1)
            best = np.minimum(positives, k).astype(np.int64)
            sums[f"ndcg_at_{k}"] += float((dcg / ideal[best - 1]).sum())
            ap = (precision_at_rank[:, :kk] * h).sum(axis=1) / best
            sums[f"map_at_{k}"] += float(ap.sum())
            covered[k][top[:, :kk][valid[:, :kk]]] = True
    n_users = len(candidates)
    out = {name: (value / n_users if n_users else float("nan")) for name, value in sums.items()}
    for k in ks:
        out[f"coverage_at_{k}"] = float(covered[k].mean()) if n_users else float("nan")
    out["users"] = float(n_users)
    return dict(sorted(out.items()))


def matrix_scorer(scores: np.ndarray | sp.spmatrix) -> Scorer:
    """A scorer reading rows of a precomputed score matrix (tests, small data)."""
    if sp.issparse(scores):
        csr = sp.csr_matrix(scores)
        return lambda rows: csr[rows].toarray()
    dense = np.asarray(scores)
    return lambda rows: dense[rows]
