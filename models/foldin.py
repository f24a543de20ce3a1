r"""Real-time ALS fold-in: a resident's factors from a handful of recent events.

Serving re-ranks precomputed lists with what the resident just did. Retraining is out of the
question per request, but with the item factors fixed the ALS objective for **one** user is a
small ridge regression with a closed form, so we can solve it exactly in microseconds.

The maths (Hu, Koren & Volinsky 2008, as implemented by implicit)
-----------------------------------------------------------------
With item factors :math:`Y \in \mathbb{R}^{n \times f}`, confidence :math:`c_i` for each item
the user interacted with (already multiplied by ALS's ``alpha``), preference :math:`p_i = 1`
for those items and :math:`p_i = 0, c_i = 1` for all others, the user's factors minimise

.. math::  \sum_i c_i (p_i - x^\top y_i)^2 + \lambda \lVert x \rVert^2 ,

whose normal equations are :math:`A x = b` with

.. math::

    A = \underbrace{Y^\top Y + \lambda I}_{G\ \text{(precomputed, } f \times f)}
        + \sum_{i \in S} (c_i - 1)\, y_i y_i^\top ,
    \qquad b = \sum_{i \in S} c_i\, y_i ,

where :math:`S` is the small set of items the user touched. :math:`G` is shared by all users,
so a request costs one rank-:math:`|S|` update of an :math:`f \times f` matrix
(:math:`O(|S| f^2)`) plus one Cholesky solve (:math:`O(f^3/3)`): for :math:`f = 64` and
:math:`|S| = 10` that is about 0.1 M flops — tens of microseconds.

A negative confidence (an explicit "dislike", e.g. ``dismiss``) follows implicit: the item
contributes :math:`(|c_i| - 1) y_i y_i^\top` to :math:`A` and nothing to :math:`b`, i.e. it is
a confident zero.

Two routes solve the same equations, chosen by the size of :math:`S`:

* **direct** (:func:`fold_in`): form :math:`A` and solve it by Cholesky — for many items
  (a bundle's buyers in the training half-step, a resident's whole history);
* **Woodbury** (:meth:`FoldIn.coefficients`): with :math:`G^{-1}` and :math:`W = Y G^{-1}`
  precomputed once per model, :math:`x = W_S^\top \gamma` where :math:`\gamma` solves an
  :math:`|S| \times |S|` system — for the handful of events serving folds in per request,
  where :math:`|S|` is far below :math:`f`. ``coefficients`` also gives the scores of any
  item matrix :math:`B` as :math:`B W_S^\top \gamma` without a solve of size :math:`f`.

Both routes are tested against implicit's ``recalculate_user`` and against each other.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg
from scipy.linalg.lapack import dposv as _dposv

#: Largest items × items product the Woodbury route keeps precomputed (float64: 32 MB).
_ITEM_PRODUCTS_MAX_ENTRIES = 4_000_000


def als_gram(item_factors: np.ndarray, regularization: float) -> np.ndarray:
    r"""Precompute :math:`G = Y^\top Y + \lambda I` once per model version.

    Parameters
    ----------
    item_factors : numpy.ndarray
        ``(n_items, factors)`` ALS item factors.
    regularization : float
        The ALS regularisation :math:`\lambda` the model was trained with.

    Returns
    -------
    numpy.ndarray
        ``(factors, factors)`` float64 symmetric positive-definite matrix.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    gram = y.T @ y
    gram[np.diag_indices_from(gram)] += regularization
    return gram


def fold_in(
    item_ids: np.ndarray,
    confidences: np.ndarray,
    item_factors: np.ndarray,
    gram: np.ndarray,
) -> np.ndarray:
    r"""Solve the ALS normal equations for one user (the direct route); never mutates its
    inputs.

    Parameters
    ----------
    item_ids : array-like of int
        Items the user interacted with (duplicates are summed, as in a CSR row).
    confidences : array-like of float
        Matching confidences, **already scaled by the model's alpha** (what ALS actually
        trains on). Negative values mark confident negatives.
    item_factors : numpy.ndarray
        ``(n_items, factors)`` item factors of the fitted model.
    gram : numpy.ndarray
        :func:`als_gram` of those factors and the model's regularisation.

    Returns
    -------
    numpy.ndarray
        ``(factors,)`` float64 user factors; zeros when ``item_ids`` is empty.
    """
    ids, conf = _summed(item_ids, confidences)
    if ids.size == 0:
        return np.zeros(gram.shape[0])
    y = np.asarray(item_factors[ids], dtype=np.float64)  # (k, f), a copy
    a = gram + (y.T * (np.abs(conf) - 1.0)) @ y
    b = y.T @ np.where(conf > 0, conf, 0.0)
    # Cholesky is ~2x faster than a general LU solve and A is SPD whenever every
    # confidence is >= 0 (each update then has weight >= -1, which keeps A >= lambda I).
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, check_finite=False), b,
                                      check_finite=False)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


class FoldIn:
    r"""The fold-in of one model's item factors, with what every request shares precomputed.

    Holds :math:`G = Y^\top Y + \lambda I`, and lazily :math:`G^{-1}` and
    :math:`W = Y G^{-1}` for the Woodbury route. Immutable once built.
    """

    def __init__(self, item_factors: np.ndarray, regularization: float) -> None:
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float64)
        self.gram = als_gram(self.item_factors, regularization)

    @functools.cached_property
    def projector(self) -> np.ndarray:
        """:math:`W = Y G^{-1}` (items × factors)."""
        return np.ascontiguousarray(self.item_factors @ np.linalg.inv(self.gram))

    def solve(self, item_ids: np.ndarray, confidences: np.ndarray) -> np.ndarray:
        """The user's factors, by the route that suits the number of items."""
        ids, conf = _summed(item_ids, confidences)
        if ids.size >= self.gram.shape[0]:
            return fold_in(ids, conf, self.item_factors, self.gram)
        rows, coef = self.coefficients(ids, conf)
        return coef @ self.projector[rows] if rows.size else np.zeros(self.gram.shape[0])

    @functools.cached_property
    def item_products(self) -> np.ndarray | None:
        """:math:`Q = Y G^{-1} Y^\top` (items × items) when the catalogue is small enough
        to hold it (a city's services: a few hundred kB), so a request reads the small system
        from it instead of multiplying factors; None for a large catalogue."""
        n = len(self.item_factors)
        if n * n > _ITEM_PRODUCTS_MAX_ENTRIES:
            return None
        return np.ascontiguousarray(self.projector @ self.item_factors.T)

    def coefficients(self, item_ids: np.ndarray, confidences: np.ndarray, *,
                     distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
        r"""``(rows, γ)`` with the user's factors ``x = W[rows]ᵀ γ`` (the Woodbury route).

        With :math:`D = \mathrm{diag}(|c_s| - 1)` on the items whose weight is not 0,
        :math:`(G + Y_s^\top D Y_s)^{-1} b = G^{-1} b - W_s^\top z`,
        :math:`z = (D^{-1} + Y_s W_s^\top)^{-1} Y_s W_r^\top c^+`, so
        :math:`\gamma = c^+ - z` (scattered on the rows of :math:`s`). ``distinct`` says
        the ids are already distinct (no duplicate to sum).
        """
        if distinct:
            ids = np.asarray(item_ids, dtype=np.int64)
            conf = np.asarray(confidences, dtype=np.float64)
        else:
            ids, conf = _summed(item_ids, confidences)
        coef = np.maximum(conf, 0.0)
        extra = np.abs(conf) - 1.0
        sel = np.flatnonzero(np.abs(extra) > 1e-12)
        if ids.size == 0 or sel.size == 0:
            return ids, coef
        chosen = ids[sel]
        q = self.item_products
        if q is not None:
            q_sr = q.take(chosen, 0).take(ids, 1)  # Y_s G⁻¹ Y_rᵀ (k, m)
        else:
            q_sr = self.item_factors[chosen] @ self.projector[ids].T
        small = q_sr[:, sel]  # Y_s G⁻¹ Y_sᵀ (k, k), a copy
        small.flat[::len(sel) + 1] += 1.0 / extra[sel]
        rhs = q_sr @ coef  # Y_s G⁻¹ b
        z = None
        if (extra[sel] > 0).all():
            _, z, info = _dposv(small, rhs)  # SPD: Cholesky
            if info != 0:  # numerically not positive definite
                z = None
        if z is None:  # a weight below zero (a confidence under 1): indefinite, LU
            z = np.linalg.solve(small, rhs)
        coef[sel] -= z
        return ids, coef


def _summed(item_ids: np.ndarray, confidences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item ids and confidences as arrays, duplicates summed like a CSR row's."""
    ids = np.asarray(item_ids, dtype=np.int64).ravel()
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    if ids.shape != conf.shape:
        raise ValueError("item_ids and confidences must have the same length")
    if ids.size and np.unique(ids).size != ids.size:
        ids, inverse = np.unique(ids, return_inverse=True)
        conf = np.bincount(inverse, weights=conf)
    return ids, conf


def fold_in_many(
    user_items: object,
    item_factors: np.ndarray,
    gram: np.ndarray,
) -> np.ndarray:
    """:func:`fold_in` for each row of a CSR matrix (confidences already alpha-scaled).

    A convenience for batch use (e.g. scoring residents unseen at training time); serving
    should call :func:`fold_in` directly with the resident's recent events.
    """
    import scipy.sparse as sp

    rows = sp.csr_matrix(user_items)
    out = np.zeros((rows.shape[0], gram.shape[0]))
    for u in range(rows.shape[0]):
        lo, hi = rows.indptr[u], rows.indptr[u + 1]
        out[u] = fold_in(rows.indices[lo:hi], rows.data[lo:hi], item_factors, gram)
    return out
