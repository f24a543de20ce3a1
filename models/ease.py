r"""EASE: a closed-form linear item-item model, and its cross-view extension.

EASE (Steck, "Embarrassingly Shallow Autoencoders", WWW 2019) learns an item-item weight
matrix :math:`B` minimising :math:`\lVert X - XB \rVert_F^2 + \lambda \lVert B \rVert_F^2`
subject to :math:`\operatorname{diag}(B) = 0` (an item may not predict itself). The solution is
closed form:

.. math::  P = (X^\top X + \lambda I)^{-1}, \qquad B = I - P \,\operatorname{diag}(P)^{-1},

i.e. :math:`B_{ij} = -P_{ij} / P_{jj}` off the diagonal and 0 on it. It needs no sampling, no
epochs and no seed, and on small catalogues (urban services: hundreds; bundles: tens to
thousands) it is one :math:`n \times n` inversion — seconds — while usually beating matrix
factorisation on ranking metrics.

:class:`CrossViewEASE` applies the same estimator to a *richer description of each user*: the
target interactions (user × bundle) concatenated with side views (user × service, and both
projected through the bundle × service composition). The targets are still only the bundle
columns, so the model answers "which bundles", but it learns from everything the resident did.
See ``docs/models.md`` for the derivation of the primal and dual (user-space) solvers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr, explain_targets
from bouquet.models.knn import _rows

log = logging.getLogger(__name__)

#: Column chunk of the (side items × chunk) temporaries in the dual solver.
_CHUNK = 512


class EASERecommender(Recommender):
    """Closed-form item-item linear model with a zero diagonal (EASE).

    Parameters
    ----------
    l2 : float
        Ridge penalty :math:`\\lambda`. Larger values trust co-occurrence less; on sparse
        data the best value is typically hundreds (tune it on a validation split).
    binary : bool
        Fit on the interaction pattern (True) or on the confidence values.

    Attributes
    ----------
    weights_ : numpy.ndarray
        ``(n_items, n_items)`` float32 :math:`B`; ``scores = user_items @ weights_``.
    n_items_ : int
        Number of items.
    """

    def __init__(self, l2: float = 500.0, binary: bool = True) -> None:
        self.l2 = l2
        self.binary = binary

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> EASERecommender:
        """Solve for :math:`B` (dense :math:`n \\times n` inversion, O(n³))."""
        x = _prepare(user_items, self.binary)
        n_items = x.shape[1]
        if n_items > 30_000:
            log.warning("EASE on %d items needs a %d^2 dense inverse", n_items, n_items)
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        self.weights_ = b.astype(np.float32)
        self.n_users_, self.n_items_ = x.shape
        return self

    def _score(
        self, ids: np.ndarray, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """``user_items @ weights_`` (``user_items`` is required)."""
        rows = _rows(user_items, len(ids), self.n_items_)
        if self.binary:
            rows = _binary(rows)
        return np.asarray(rows @ self.weights_)

    def explain(
        self, user_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact: item ``j`` contributes ``x_j * sum_k w_k * B[j, item_k]``."""
        self._check_fitted()
        return _linear_contributions(self.weights_, user_items_row, item_ids, weights,
                                     self.binary)


class CrossViewEASE(Recommender):
    r"""EASE on a user profile spanning the target view and a linked side view.

    Built for bundles: targets are user × bundle interactions :math:`X`, the side view is user ×
    service interactions :math:`U`, and the composition :math:`C` (bundle × service) links them.
    Each user is described by four blocks

    .. math::

        A = \big[\; X \;\big|\; w_s U \;\big|\; w_p\, U L_p^\top \;\big|\; w_c\, X L_c \;\big]

    (:math:`L_p, L_c` are :math:`C` with rows divided by bundle size to the power
    ``projected_norm`` / ``composition_norm``): bundles held, services used, services used
    projected onto the bundles that contain them, and the services inside the bundles held. EASE
    is solved on :math:`A` for the bundle columns only (each column's problem is independent).
    Because every block is linear in :math:`(X, U)`, the fitted model collapses to two matrices,

    .. math::  \text{score}(u) = x_u W_{\text{target}} + u_u W_{\text{side}} ,

    so scoring, saving and explaining are as simple as for plain EASE.

    Block weights are *relative*: each side block is first rescaled so its squared Frobenius
    norm equals that of :math:`X`, then multiplied by the weight. A weight of 0 (or a missing
    input) drops the block; with no side view at all the model is exactly EASE on :math:`X`.

    Parameters
    ----------
    l2 : float
        Ridge penalty :math:`\lambda`.
    side_weight : float
        Weight of the raw side view :math:`U` (needs ``side_items``).
    projected_weight : float
        Weight of :math:`U L_p^\top` (needs ``side_items`` and ``composition``).
    composition_weight : float
        Weight of :math:`X L_c` (needs ``composition``).
    projected_norm, composition_norm : float
        Bundle-size normalisation exponents (0 = sum, 1 = mean, 0.5 = in between).
    solver : {"auto", "primal", "dual"}
        ``primal`` inverts the feature Gram (cost cubic in the number of features: services +
        bundles); ``dual`` solves in user space via the Woodbury identity (cost cubic in the
        number of users). ``auto`` picks the smaller; both give the same model.
    binary : bool
        Use interaction patterns rather than confidence values.

    Attributes
    ----------
    target_weights_ : numpy.ndarray
        ``(n_items, n_items)`` float32 :math:`W_{\text{target}}` (bundle → bundle).
    side_weights_ : numpy.ndarray or None
        ``(n_side_items, n_items)`` float32 :math:`W_{\text{side}}` (service → bundle), or
        ``None`` when fitted without a side view.
    block_scales_ : dict
        Effective multipliers :math:`w_s, w_p, w_c` after rescaling.
    n_items_, n_side_items_ : int
        Number of target items (bundles) and side items (services, 0 if none).
    """

    def __init__(
        self,
        l2: float = 1000.0,
        side_weight: float = 1.0,
        projected_weight: float = 1.0,
        composition_weight: float = 2.0,
        projected_norm: float = 0.5,
        composition_norm: float = 1.0,
        solver: str = "auto",
        binary: bool = True,
    ) -> None:
        self.l2 = l2
        self.side_weight = side_weight
        self.projected_weight = projected_weight
        self.composition_weight = composition_weight
        self.projected_norm = projected_norm
        self.composition_norm = composition_norm
        self.solver = solver
        self.binary = binary

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        user_items: sp.csr_matrix,
        side_items: sp.csr_matrix | None = None,
        composition: sp.csr_matrix | None = None,
        **kwargs: Any,
    ) -> CrossViewEASE:
        """Fit on targets ``user_items`` with optional ``side_items`` and ``composition``.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix
            Users × targets (bundles).
        side_items : scipy.sparse.csr_matrix, optional
            Users × side items (services), same rows.
        composition : scipy.sparse.csr_matrix, optional
            Targets × side items: which services each bundle contains.
        """
        x = _prepare(user_items, self.binary)
        n_users, n_items = x.shape
        u = None if side_items is None else _prepare(side_items, self.binary)
        c = None if composition is None else check_csr(composition, "composition")
        if u is not None and u.shape[0] != n_users:
            raise ValueError(f"side_items has {u.shape[0]} rows, user_items {n_users}")
        if c is not None:
            if c.shape[0] != n_items:
                raise ValueError(f"composition has {c.shape[0]} rows for {n_items} items")
            if u is not None and c.shape[1] != u.shape[1]:
                raise ValueError("composition and side_items disagree on the number of items")
            c = c.astype(np.float64)
            c.data[:] = 1.0
        n_side = u.shape[1] if u is not None else (c.shape[1] if c is not None else 0)

        mass = float(x.multiply(x).sum()) or 1.0
        blocks: dict[str, sp.csr_matrix | np.ndarray] = {}
        scales: dict[str, float] = {}
        lp = lc = None
        if u is not None and self.side_weight > 0:
            blocks["side"] = u
        if u is not None and c is not None and self.projected_weight > 0:
            lp = _row_normalise(c, self.projected_norm).astype(np.float32)
            blocks["projected"] = (u @ lp.T).toarray()
        if c is not None and self.composition_weight > 0:
            lc = _row_normalise(c, self.composition_norm).astype(np.float32)
            blocks["composition"] = sp.csr_matrix(x @ lc)
        weight = {
            "side": self.side_weight,
            "projected": self.projected_weight,
            "composition": self.composition_weight,
        }
        for name, block in blocks.items():
            block_mass = _sq_norm(block)
            scales[name] = float(np.sqrt(weight[name] * mass / block_mass)) if block_mass else 0.0

        n_features = n_items + sum(b.shape[1] for b in blocks.values())
        solver = self.solver
        if solver == "auto":
            solver = "primal" if n_features <= n_users else "dual"
        log.info(
            "CrossViewEASE: %d users, %d targets, %d features (%s), %s solver",
            n_users,
            n_items,
            n_features,
            ", ".join(blocks) or "targets only",
            solver,
        )
        if solver == "primal":
            w_t, w_s = self._fit_primal(x, blocks, scales, lp, lc, n_side)
        elif solver == "dual":
            w_t, w_s = self._fit_dual(x, u, blocks, scales, lp, lc, n_side)
        else:
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {self.solver!r}")
        self.target_weights_ = w_t.astype(np.float32, copy=False)
        self.side_weights_ = None if w_s is None else w_s.astype(np.float32, copy=False)
        self.block_scales_ = scales
        self.n_users_, self.n_items_ = n_users, n_items
        self.n_side_items_ = int(n_side) if self.side_weights_ is not None else 0
        return self

    def _fit_primal(self, x, blocks, scales, lp, lc, n_side):
        """Invert the (features × features) Gram; keep only the target columns of B."""
        mats = [x] + [
            sp.csr_matrix(b) * scales[k] if isinstance(b, np.ndarray) else b * scales[k]
            for k, b in blocks.items()
        ]
        a = sp.hstack(mats, format="csr")
        gram = (a.T @ a).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        n_items = x.shape[1]
        eye = np.zeros((gram.shape[0], n_items))
        eye[np.arange(n_items), np.arange(n_items)] = 1.0
        p = scipy.linalg.cho_solve(scipy.linalg.cho_factor(gram, overwrite_a=True), eye)
        diag = p[np.arange(n_items), np.arange(n_items)]
        b = p / -diag
        b[np.arange(n_items), np.arange(n_items)] = 0.0
        # split B's rows by block and fold the linear feature maps back into two matrices
        offsets, start = {}, n_items
        for k, blk in blocks.items():
            offsets[k] = (start, start + blk.shape[1])
            start += blk.shape[1]
        w_t = b[:n_items].copy()
        w_s = np.zeros((n_side, n_items)) if ("side" in blocks or "projected" in blocks) else None
        if "composition" in blocks:
            lo, hi = offsets["composition"]
            w_t += scales["composition"] * (lc @ b[lo:hi])
        if "side" in blocks:
            lo, hi = offsets["side"]
            w_s += scales["side"] * b[lo:hi]
        if "projected" in blocks:
            lo, hi = offsets["projected"]
            w_s += scales["projected"] * (lp.T @ b[lo:hi])
        return w_t, w_s

    def _fit_dual(self, x, u, blocks, scales, lp, lc, n_side):
        r"""Solve in user space: :math:`Y = (AA^\top + \lambda I)^{-1} X` (Woodbury).

        With :math:`d_j = 1 - x_j^\top y_j`, EASE's target columns are
        :math:`B_{:,j} = A^\top y_j / d_j` off the diagonal (0 on it), so only an
        ``n_users × n_users`` Cholesky factorisation is needed. Everything is float32 and
        the big products are done in place or in column chunks, so the peak stays near the
        kernel (n_users² floats) plus ``side_weights_`` (measured figures for Youshu are in
        ``docs/benchmarks-bundles.md``).
        """
        n_users, n_items = x.shape
        # sparse blocks first (one dense conversion), then the dense block by BLAS syrk, which
        # computes one triangle only: Cholesky reads only that triangle.
        k_sparse = x @ x.T
        for k, blk in blocks.items():
            if isinstance(blk, np.ndarray):
                continue
            s2 = np.float32(scales[k] ** 2)
            if k == "composition":
                # (X Lc)(X Lc)^T = X (Lc Lc^T) X^T: the bundle-overlap matrix is far smaller
                k_sparse = k_sparse + s2 * (x @ (lc @ lc.T) @ x.T)
            else:
                k_sparse = k_sparse + s2 * (blk @ blk.T)
        kernel = k_sparse.astype(np.float32).toarray()
        del k_sparse
        # kernel is symmetric, so its transpose view is the same matrix in Fortran order,
        # which lets LAPACK/BLAS work in place on it.
        kt = kernel.T
        dense = blocks.pop("projected", None)
        if dense is not None:
            syrk = scipy.linalg.blas.get_blas_funcs("syrk", (dense,))
            kt = syrk(
                scales["projected"] ** 2, dense, beta=1.0, c=kt, trans=0, lower=0, overwrite_c=1
            )
            del dense
        kt[np.diag_indices_from(kt)] += np.float32(self.l2)
        factor = scipy.linalg.cho_factor(kt, lower=False, overwrite_a=True, check_finite=False)
        y = scipy.linalg.cho_solve(factor, x.toarray(), overwrite_b=True, check_finite=False)
        del factor, kt, kernel
        y = np.asarray(y, dtype=np.float32)
        d = 1.0 - np.asarray(x.multiply(y).sum(axis=0), dtype=np.float64).ravel()
        d = np.maximum(d, 1e-12)
        q = np.asarray(x.T @ y, dtype=np.float64)  # X^T Y, targets x targets
        w_t = q.copy()
        w_t[np.diag_indices_from(w_t)] = 0.0
        if lc is not None and "composition" in scales:
            s2 = scales["composition"] ** 2
            lct = sp.csr_matrix(lc.T)
            for lo in range(0, n_items, _CHUNK):  # chunks bound the (side x chunk) temporary
                hi = min(n_items, lo + _CHUNK)
                w_t[:, lo:hi] += s2 * (lc @ (lct @ q[:, lo:hi]))
        w_t /= d
        w_s = None
        if u is not None and ("side" in scales or "projected" in scales):
            r = np.asarray(u.T @ y, dtype=np.float32)  # U^T Y, side items x targets
            del y
            w_s = r  # scaled in place below; r is not used afterwards except via lp @ r
            if lp is not None and "projected" in scales:
                s2 = np.float32(scales["projected"] ** 2)
                projected = np.asarray(lp @ r, dtype=np.float32)  # targets x targets
            else:
                projected = None
            w_s *= np.float32(scales.get("side", 0.0) ** 2)
            if projected is not None:
                lpt = sp.csr_matrix(lp.T)
                for lo in range(0, n_items, _CHUNK):
                    hi = min(n_items, lo + _CHUNK)
                    w_s[:, lo:hi] += s2 * (lpt @ projected[:, lo:hi])
            w_s /= d.astype(np.float32)
        return w_t, w_s

    # ------------------------------------------------------------------ scoring
    def _score(
        self,
        ids: np.ndarray,
        user_items: sp.csr_matrix | None = None,
        side_items: sp.csr_matrix | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """``user_items @ target_weights_ + side_items @ side_weights_``.

        ``side_items`` (one row per user) is required when the model was fitted with a side
        view; pass an empty row for a user with no side interactions.
        """
        rows = _rows(user_items, len(ids), self.n_items_)
        if self.binary:
            rows = _binary(rows)
        out = np.asarray(rows @ self.target_weights_, dtype=np.float32)
        if self.side_weights_ is not None:
            if side_items is None:
                raise ValueError(
                    "this CrossViewEASE was fitted with a side view: pass side_items "
                    "(one row per user, empty rows for users without side interactions)"
                )
            side = _rows(side_items, len(ids), self.n_side_items_)
            if self.binary:
                side = _binary(side)
            out += np.asarray(side @ self.side_weights_, dtype=np.float32)
        return out

    def explain(
        self, user_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Contributions of the user's *targets* (bundles held); see :meth:`explain_side`."""
        self._check_fitted()
        return _linear_contributions(self.target_weights_, user_items_row, item_ids, weights,
                                     self.binary)

    def explain_side(
        self, side_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Contributions of the user's *side items* (services used) to the targets' score."""
        self._check_fitted()
        if self.side_weights_ is None:
            row = check_csr(side_items_row)
            return row.indices.copy(), np.zeros(row.nnz)
        return _linear_contributions(self.side_weights_, side_items_row, item_ids, weights,
                                     self.binary)


# ---------------------------------------------------------------------- helpers
def _binary(m: sp.csr_matrix) -> sp.csr_matrix:
    m = m.copy()
    m.data = (m.data != 0).astype(np.float32)
    return m


def _linear_contributions(weights_matrix: np.ndarray, row: Any, item_ids: Any, weights: Any,
                          binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """For a linear item-item model: interacted item ``j`` contributes
    ``x_j * sum_k w_k * W[j, item_k]`` (exact, the score is linear in the row)."""
    row = check_csr(row)
    if binary:
        row = _binary(row)
    targets, w = explain_targets(item_ids, weights)
    contrib = weights_matrix[row.indices][:, targets].astype(np.float64) @ w
    return row.indices.copy(), row.data * contrib


def _prepare(user_items: Any, binary: bool) -> sp.csr_matrix:
    x = check_csr(user_items).astype(np.float32)
    x.eliminate_zeros()
    return _binary(x) if binary else x


def _row_normalise(m: sp.csr_matrix, power: float) -> sp.csr_matrix:
    """Divide each row by (its sum) ** power; empty rows stay empty."""
    sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    inv = np.zeros_like(sums)
    nz = sums > 0
    inv[nz] = sums[nz] ** -power
    return sp.csr_matrix(sp.diags(inv) @ m)


def _sq_norm(block: sp.csr_matrix | np.ndarray) -> float:
    if isinstance(block, np.ndarray):
        return float(np.einsum("ij,ij->", block, block, dtype=np.float64))
    return float(block.multiply(block).sum())
