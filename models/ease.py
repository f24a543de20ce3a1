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
See ``docs/models.md`` for the derivation of the primal, dual (user-space) and low-rank solvers
and for how :mod:`bouquet.models.solvers` chooses one before allocating anything.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr, explain_targets
from bouquet.models.knn import _rows
from bouquet.models.solvers import (
    SolverEstimate,
    choose,
    lowrank_columns,
    lowrank_estimate,
    pinned_blas,
    seconds_for,
)

log = logging.getLogger(__name__)

#: Column chunk of the (side items × chunk) temporaries in the dual solver.
_CHUNK = 512
#: Extra columns and subspace iterations of the low-rank solver's randomised range finder.
_OVERSAMPLE, _POWER_ITERATIONS = 16, 3
#: The dual EASE factorises in float32 when the kernel's condition number is provably below
#: this (float32 then keeps about 3 significant digits of every weight in the worst case,
#: far more than a ranking needs); float64 otherwise.
_FLOAT32_MAX_CONDITION = 1e4
#: Largest dense service co-use matrix the low-rank solver builds (bytes).
_DENSE_CO_USE_BYTES = 2.0**30
_GB = 2.0**30
#: Rows of the float64 copy :func:`_gram` holds at a time.
_GRAM_ROWS = 65_536


class EASERecommender(Recommender):
    """Closed-form item-item linear model with a zero diagonal (EASE).

    Parameters
    ----------
    l2 : float
        Ridge penalty :math:`\\lambda`. Larger values trust co-occurrence less; on sparse
        data the best value is typically hundreds (tune it on a validation split).
    binary : bool
        Fit on the interaction pattern (True) or on the confidence values.
    solver : {"auto", "primal", "dual", "lowrank"}
        How to get :math:`(X^\\top X + \\lambda I)^{-1}` (see :mod:`bouquet.models.solvers`):
        ``primal`` inverts the ``items × items`` Gram, ``dual`` factorises the
        ``users × users`` kernel (Woodbury; same model), ``lowrank`` keeps the top ``rank``
        eigenpairs and the exact diagonal (an approximation). ``auto`` takes ``primal``, else
        ``dual``, if it fits in memory and is estimated within ``max_seconds``; otherwise the
        fastest that fits in memory.
    rank : int
        Rank of the ``lowrank`` solver.
    max_seconds : float
        Time budget of an exact solve under ``auto`` (estimated before starting).
    max_memory_gb : float or None
        Memory a solve may plan to use; None: 80 % of what is available at fit time.

    Attributes
    ----------
    weights_ : numpy.ndarray
        ``(n_items, n_items)`` float32 :math:`B`; ``scores = user_items @ weights_``.
    n_items_ : int
        Number of items.
    solver_ : str
        The solver ``fit`` used.
    solver_estimate_ : dict
        Its planned peak memory (GB) and time (s), as estimated before fitting.
    """

    def __init__(
        self,
        l2: float = 500.0,
        binary: bool = True,
        solver: str = "auto",
        rank: int = 512,
        max_seconds: float = 60.0,
        max_memory_gb: float | None = None,
    ) -> None:
        self.l2 = l2
        self.binary = binary
        self.solver = solver
        self.rank = rank
        self.max_seconds = max_seconds
        self.max_memory_gb = max_memory_gb

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> EASERecommender:
        """Solve for :math:`B` with the solver chosen from the estimates (``solver_``)."""
        x = _prepare(user_items, self.binary)
        plan = choose(self.estimates(x), self.solver, self.max_seconds, self.max_memory_gb,
                      f"EASE on {x.shape[0]} users x {x.shape[1]} items")
        with pinned_blas():
            if plan.solver == "primal":
                weights = self._fit_primal(x)
            elif plan.solver == "dual":
                weights = self._fit_dual(x, np.dtype(plan.dtype))
            else:
                weights = self._fit_lowrank(x)
        self.weights_ = weights
        self.n_users_, self.n_items_ = x.shape
        self.solver_ = plan.solver
        self.solver_estimate_ = plan.as_dict()
        return self

    def estimates(self, user_items: sp.csr_matrix) -> list[SolverEstimate]:
        """Peak memory and time of each solver on ``user_items`` (exact ones first, in the
        order ``auto`` prefers them)."""
        x = _prepare(user_items, self.binary)
        m, n = x.shape
        rows, cols = np.diff(x.indptr), np.bincount(x.indices, minlength=n)
        gram_pairs = float(np.sum(rows.astype(np.float64) ** 2))  # sparse XᵀX work
        kernel_pairs = float(np.sum(cols.astype(np.float64) ** 2))  # sparse XXᵀ work
        primal = SolverEstimate(
            "primal", exact=True,
            peak_gb=(20.0 * n * n + 12.0 * min(n * n, gram_pairs)) / _GB,
            seconds=seconds_for(2.0 * n**3, 2.0 * gram_pairs, itemsize=8),
            dense_dim=n, dtype="float64",
        )
        dtype = _dual_dtype(x, self.l2)
        size = dtype.itemsize
        dual = SolverEstimate(
            "dual", exact=True,
            peak_gb=(size * m * m + 12.0 * min(m * m, kernel_pairs) + 4.0 * n * n
                     + (size + 4.0) * _CHUNK * max(m, n)) / _GB,
            seconds=seconds_for(float(m) ** 3, 2.0 * (kernel_pairs + x.nnz * (m + n)), size),
            dense_dim=m, dtype=dtype.name,
        )
        lowrank = lowrank_estimate(m, n, n, n, x.nnz, self.rank, _OVERSAMPLE, _POWER_ITERATIONS)
        return [primal, dual, lowrank]

    def _fit_primal(self, x: sp.csr_matrix) -> np.ndarray:
        """Invert the ``items × items`` Gram (LU, float64)."""
        gram = _gram(x)
        gram[np.diag_indices_from(gram)] += self.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = p / (-np.diag(p))
        b[np.diag_indices_from(b)] = 0.0
        return b.astype(np.float32)

    def _fit_dual(self, x: sp.csr_matrix, dtype: np.dtype) -> np.ndarray:
        r"""Woodbury: :math:`B_{ij} = Q_{ij} / (1 - Q_{jj})` with
        :math:`Q = X^\top (XX^\top + \lambda I)^{-1} X` (:math:`\lambda` cancels).

        The ``users × users`` kernel is inverted in place (Cholesky, then the inverse from the
        factor); :math:`Q` is built a column chunk at a time with sparse products, so the peak
        is the kernel, the ``items × items`` output and one chunk.
        """
        m, n = x.shape
        kernel = (x @ x.T).astype(dtype).toarray()
        kernel[np.diag_indices_from(kernel)] += dtype.type(self.l2)
        kt = kernel.T  # the same symmetric matrix in Fortran order: LAPACK works in place
        potrf, potri = scipy.linalg.get_lapack_funcs(("potrf", "potri"), (kt,))
        factor, info = potrf(kt, lower=0, overwrite_a=1, clean=0)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE dual: Cholesky failed (info={info})")
        inverse, info = potri(factor, lower=0, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE dual: inverse failed (info={info})")
        del factor
        _mirror_lower(inverse.T)  # the C-order view holds the lower triangle
        w = inverse.T
        xt = sp.csr_matrix(x.T)
        q = np.empty((n, n), dtype=np.float32)
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            wx = xt[lo:hi] @ w  # (chunk × users) = (W X[:, chunk])ᵀ
            q[:, lo:hi] = xt @ wx.T
        del w, inverse, kernel
        d = np.maximum(1.0 - np.diag(q).astype(np.float64), 1e-12)
        q /= d.astype(np.float32)
        q[np.diag_indices_from(q)] = 0.0
        return q

    def _fit_lowrank(self, x: sp.csr_matrix) -> np.ndarray:
        """Top-``rank`` eigenpairs plus the exact diagonal (:func:`lowrank_columns`)."""
        xt = sp.csr_matrix(x.T)
        col_sq = _col_sq(x)
        h, c = lowrank_columns(
            lambda om: x @ om, lambda y: xt @ y, x.shape, col_sq, x.shape[1], self.l2,
            self.rank, _OVERSAMPLE, _POWER_ITERATIONS,
        )
        b = h @ c
        b[np.diag_indices_from(b)] = 0.0
        return b

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
    solver : {"auto", "primal", "dual", "lowrank"}
        ``primal`` inverts the feature Gram (cost cubic in the number of features: services +
        bundles); ``dual`` solves in user space via the Woodbury identity (cost cubic in the
        number of users); both give the same model. ``lowrank`` keeps the top ``rank``
        eigenpairs of the feature Gram and its exact diagonal (an approximation, linear in the
        data). ``auto`` takes the exact solver of the smaller dimension, else the other, if it
        fits in memory and is estimated within ``max_seconds``; otherwise the fastest that fits
        in memory (see :mod:`bouquet.models.solvers`).
    rank : int
        Rank of the ``lowrank`` solver.
    max_seconds : float
        Time budget of an exact solve under ``auto`` (estimated before starting).
    max_memory_gb : float or None
        Memory a solve may plan to use; None: 80 % of what is available at fit time.
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
    solver_ : str
        The solver ``fit`` used.
    solver_estimate_ : dict
        Its planned peak memory (GB) and time (s), as estimated before fitting.
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
        rank: int = 512,
        max_seconds: float = 60.0,
        max_memory_gb: float | None = None,
    ) -> None:
        self.l2 = l2
        self.side_weight = side_weight
        self.projected_weight = projected_weight
        self.composition_weight = composition_weight
        self.projected_norm = projected_norm
        self.composition_norm = composition_norm
        self.solver = solver
        self.binary = binary
        self.rank = rank
        self.max_seconds = max_seconds
        self.max_memory_gb = max_memory_gb

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
        x, u, blocks, lp, lc, n_side = self._blocks(user_items, side_items, composition)
        n_users, n_items = x.shape
        n_features = n_items + sum(_widths(blocks, n_items).values())
        plan = choose(
            self._estimates(x, u, blocks, lp, lc, n_side),
            self.solver,
            self.max_seconds,
            self.max_memory_gb,
            f"CrossViewEASE on {n_users} users x {n_features} features",
        )
        projected_sq = None
        if "projected" in blocks:
            if plan.solver == "lowrank":
                # never stored: often far denser than the inputs (a popular service is in
                # thousands of bundles); the low-rank solver only needs its column norms
                projected_sq = _projected_col_sq(u, lp)
            else:
                # the exact solvers take it dense (the dual one by BLAS syrk)
                blocks["projected"] = (u @ lp.T).toarray()
        mass = float(x.multiply(x).sum()) or 1.0
        weight = {
            "side": self.side_weight,
            "projected": self.projected_weight,
            "composition": self.composition_weight,
        }
        scales: dict[str, float] = {}
        for name, block in blocks.items():
            block_mass = _sq_norm(block) if block is not None else float(projected_sq.sum())
            scales[name] = float(np.sqrt(weight[name] * mass / block_mass)) if block_mass else 0.0
        log.info(
            "CrossViewEASE: %d users, %d targets, %d features (%s), %s solver",
            n_users,
            n_items,
            n_features,
            ", ".join(blocks) or "targets only",
            plan.solver,
        )
        with pinned_blas():
            if plan.solver == "primal":
                w_t, w_s = self._fit_primal(x, blocks, scales, lp, lc, n_side)
            elif plan.solver == "dual":
                w_t, w_s = self._fit_dual(x, u, blocks, scales, lp, lc, n_side)
            else:
                w_t, w_s = self._fit_lowrank(x, u, blocks, scales, lp, lc, n_side,
                                             projected_sq)
        self.target_weights_ = w_t.astype(np.float32, copy=False)
        self.side_weights_ = None if w_s is None else w_s.astype(np.float32, copy=False)
        self.block_scales_ = scales
        self.n_users_, self.n_items_ = n_users, n_items
        self.n_side_items_ = int(n_side) if self.side_weights_ is not None else 0
        self.solver_ = plan.solver
        self.solver_estimate_ = plan.as_dict()
        return self

    def estimates(
        self,
        user_items: sp.csr_matrix,
        side_items: sp.csr_matrix | None = None,
        composition: sp.csr_matrix | None = None,
    ) -> list[SolverEstimate]:
        """Peak memory and time of each solver on these inputs (exact ones first, in the
        order ``auto`` prefers them)."""
        x, u, blocks, lp, lc, n_side = self._blocks(user_items, side_items, composition)
        return self._estimates(x, u, blocks, lp, lc, n_side)

    def _blocks(self, user_items, side_items, composition):
        """Validated inputs and the side blocks of :math:`A`, sparse and unscaled; the
        projected block :math:`UL_p^\top` is ``None`` until a solver needs it stored."""
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
        blocks: dict[str, sp.csr_matrix | np.ndarray | None] = {}
        lp = lc = None
        if u is not None and self.side_weight > 0:
            blocks["side"] = u
        if u is not None and c is not None and self.projected_weight > 0:
            lp = _row_normalise(c, self.projected_norm).astype(np.float32)
            blocks["projected"] = None
        if c is not None and self.composition_weight > 0:
            lc = _row_normalise(c, self.composition_norm).astype(np.float32)
            blocks["composition"] = sp.csr_matrix(x @ lc)
        return x, u, blocks, lp, lc, n_side

    def _estimates(self, x, u, blocks, lp, lc, n_side) -> list[SolverEstimate]:
        """The three solvers' needs, exact ones in ``auto``'s order (smaller dimension first).

        Counts used: the dense sizes of each solver's matrices, its cubic factorisation and
        dense products at the assumed BLAS rate, and its sparse products by the number of
        multiply-adds they perform (column counts squared for the user kernel, row counts
        squared for the feature Gram).
        """
        m, n_t = x.shape
        f = n_t + sum(_widths(blocks, n_t).values())
        n_s = n_side if ("side" in blocks or "projected" in blocks) else 0
        mats = [x, *(b for b in blocks.values() if b is not None)]
        row_nnz = sum(np.diff(b.indptr).astype(np.float64) for b in mats)
        if "projected" in blocks:
            # at most the bundles holding each service the user used (fewer where they overlap)
            bundles_per_service = np.diff(sp.csc_matrix(lp).indptr).astype(np.float64)
            row_nnz = row_nnz + np.minimum(u @ bundles_per_service, n_t)
        nnz_a = float(np.sum(row_nnz))
        gram_pairs = float(np.sum(row_nnz**2))
        kernel_mats = [b for k, b in blocks.items() if k != "projected"] + [x]
        n_services = 0 if u is None else u.shape[1]
        kernel_pairs = float(
            sum(np.sum(np.bincount(b.indices, minlength=b.shape[1]).astype(np.float64) ** 2)
                for b in kernel_mats)
        )
        dense_proj = 4.0 * m * n_t if "projected" in blocks else 0.0
        outputs = 12.0 * (n_t * n_t + n_s * n_t)  # float64 weights, then their float32 copies
        primal = SolverEstimate(
            "primal", exact=True,
            peak_gb=(max(12.0 * f * f, 8.0 * f * f + 24.0 * f * n_t) + outputs + dense_proj
                     + 12.0 * (nnz_a + min(f * f, gram_pairs))) / _GB,
            seconds=seconds_for(f**3 / 3.0 + 2.0 * f * f * n_t, 2.0 * gram_pairs, itemsize=8),
            dense_dim=f, dtype="float64",
        )
        side_nnz = 0.0 if u is None else float(u.nnz)
        link_nnz = float((0 if lp is None else lp.nnz) + (0 if lc is None else lc.nnz))
        dual = SolverEstimate(
            "dual", exact=True,
            peak_gb=(4.0 * m * m + 12.0 * min(m * m, kernel_pairs) + dense_proj
                     + 4.0 * m * n_t + 24.0 * n_t * n_t + 4.0 * n_s * n_t) / _GB,
            seconds=seconds_for(
                m**3 / 3.0 + 2.0 * m * m * n_t + (m * m * n_t if "projected" in blocks else 0.0),
                2.0 * (kernel_pairs + (x.nnz + side_nnz + 2 * link_nnz) * n_t),
                itemsize=4,
            ),
            dense_dim=m, dtype="float32",
        )
        product_nnz = x.nnz + side_nnz + link_nnz
        extra_gb, extra_s = 0.0, 0.0
        if "projected" in blocks:  # its column norms through the service co-use matrix
            co_use_pairs = float(np.sum(np.diff(u.indptr).astype(np.float64) ** 2))
            if 4.0 * n_services**2 <= _DENSE_CO_USE_BYTES:
                extra_gb = 4.0 * n_services**2 / _GB
                extra_s = seconds_for(sparse_flops=2.0 * (co_use_pairs + lp.nnz * n_services))
            else:  # sparse route: the co-use matrix and its product with Lp, bounded by pairs
                extra_gb = 24.0 * min(co_use_pairs, float(n_services) ** 2) / _GB
                extra_s = seconds_for(sparse_flops=4.0 * co_use_pairs * lp.nnz / n_services)
        lowrank = lowrank_estimate(
            m, f, n_t, n_t + n_s, product_nnz, self.rank, _OVERSAMPLE, _POWER_ITERATIONS,
            extra_gb=extra_gb,
        )
        lowrank = dataclasses.replace(lowrank, seconds=lowrank.seconds + extra_s)
        exact = [primal, dual] if f <= m else [dual, primal]
        return [*exact, lowrank]

    def _fit_primal(self, x, blocks, scales, lp, lc, n_side):
        """Invert the (features × features) Gram; keep only the target columns of B."""
        mats = [x] + [
            sp.csr_matrix(b) * scales[k] if isinstance(b, np.ndarray) else b * scales[k]
            for k, b in blocks.items()
        ]
        a = sp.hstack(mats, format="csr")
        gram = _gram(a)
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

    def _fit_lowrank(self, x, u, blocks, scales, lp, lc, n_side, projected_sq):
        r"""Low-rank-plus-diagonal solve (:func:`~bouquet.models.solvers.lowrank_columns`).

        :math:`A` is never stored: products go through its sparse factors,
        :math:`A\Omega = X(\Omega_t + w_c L_c\Omega_c) + U(w_s\Omega_s + w_p L_p^\top\Omega_p)`
        and the transpose likewise. The target columns of :math:`B` come back as
        :math:`HC`, so the linear maps of each block are folded into :math:`H`'s rows first
        (``features × rank``) and the two weight matrices are single dense products.
        """
        n_users, n_items = x.shape
        names = list(blocks)
        widths = _widths(blocks, n_items)
        bounds, start = {}, n_items
        for k in names:
            bounds[k] = (start, start + widths[k])
            start += widths[k]
        n_features = start
        w = {k: np.float32(scales[k]) for k in names}
        xt = sp.csr_matrix(x.T)
        ut = None if u is None else sp.csr_matrix(u.T)
        lpt = None if lp is None else sp.csr_matrix(lp.T)
        lct = None if lc is None else sp.csr_matrix(lc.T)

        def part(om: np.ndarray, k: str) -> np.ndarray:
            lo, hi = bounds[k]
            return om[lo:hi]

        def matmat(om: np.ndarray) -> np.ndarray:
            on_x = om[:n_items].copy()
            if "composition" in bounds:
                on_x += w["composition"] * (lc @ part(om, "composition"))
            out = x @ on_x
            on_u = None
            if "side" in bounds:
                on_u = w["side"] * part(om, "side")
            if "projected" in bounds:
                proj = w["projected"] * (lpt @ part(om, "projected"))
                on_u = proj if on_u is None else on_u + proj
            if on_u is not None:
                out += u @ on_u
            return out

        def rmatmat(y: np.ndarray) -> np.ndarray:
            out = np.empty((n_features, y.shape[1]), dtype=np.float32)
            xy = xt @ y
            out[:n_items] = xy
            uy = None if ut is None else ut @ y
            for k in names:
                lo, hi = bounds[k]
                if k == "side":
                    out[lo:hi] = w[k] * uy
                elif k == "projected":
                    out[lo:hi] = w[k] * (lp @ uy)
                else:
                    out[lo:hi] = w[k] * (lct @ xy)
            return out

        col_sq = [_col_sq(x)] + [
            scales[k] ** 2 * (projected_sq if k == "projected" else _col_sq(blocks[k]))
            for k in names
        ]
        h, c = lowrank_columns(
            matmat, rmatmat, (n_users, n_features), np.concatenate(col_sq), n_items, self.l2,
            self.rank, _OVERSAMPLE, _POWER_ITERATIONS,
        )
        # fold each block's linear map into H's rows, then one product per weight matrix
        h_t = h[:n_items].copy()
        if "composition" in bounds:
            lo, hi = bounds["composition"]
            h_t += w["composition"] * (lc @ h[lo:hi])
        w_t = h_t @ c
        # B's zero diagonal lives in the target block's rows only
        diag = np.einsum("ij,ji->i", h[:n_items], c)
        w_t[np.diag_indices_from(w_t)] -= diag
        w_s = None
        if "side" in bounds or "projected" in bounds:
            h_s = np.zeros((n_side, h.shape[1]), dtype=np.float32)
            if "side" in bounds:
                lo, hi = bounds["side"]
                h_s += w["side"] * h[lo:hi]
            if "projected" in bounds:
                lo, hi = bounds["projected"]
                h_s += w["projected"] * (lpt @ h[lo:hi])
            w_s = h_s @ c
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


def _dual_dtype(x: sp.csr_matrix, l2: float) -> np.dtype:
    """float32 when the kernel :math:`XX^\\top + \\lambda I` is provably well conditioned.

    Its condition number is at most :math:`1 + \\lVert X\\rVert_2^2 / \\lambda`, and
    :math:`\\lVert X\\rVert_2^2 \\le \\lVert X^\\top X\\rVert_\\infty \\le
    \\max_j (|X|^\\top |X| \\mathbf{1})_j` — one sparse product to bound.
    """
    a = abs(x)
    bound = float(np.max(a.T @ np.asarray(a.sum(axis=1)).ravel(), initial=0.0))
    return np.dtype(np.float32 if 1.0 + bound / l2 <= _FLOAT32_MAX_CONDITION else np.float64)


def _widths(blocks: dict[str, Any], n_items: int) -> dict[str, int]:
    """Columns of each side block (the projected block has one per target)."""
    return {k: n_items if k == "projected" else b.shape[1] for k, b in blocks.items()}


def _projected_col_sq(u: sp.csr_matrix, lp: sp.csr_matrix) -> np.ndarray:
    r"""Column sums of squares of :math:`UL_p^\top` without forming it:
    :math:`\operatorname{diag}(L_p\,U^\top U\,L_p^\top)`, a bundle chunk at a time.

    The service co-use matrix :math:`U^\top U` is taken dense when it is small (float32
    holds its integer counts exactly), sparse otherwise.
    """
    co_use = sp.csr_matrix(u.T @ u)
    n_b = lp.shape[0]
    if 4.0 * co_use.shape[0] ** 2 > _DENSE_CO_USE_BYTES:
        return np.asarray((lp @ co_use).multiply(lp).sum(axis=1), dtype=np.float64).ravel()
    dense = co_use.toarray()
    out = np.empty(n_b)
    for lo in range(0, n_b, 4 * _CHUNK):
        blk = lp[lo : lo + 4 * _CHUNK]
        out[lo : lo + blk.shape[0]] = np.einsum("ij,ij->i", np.asarray(blk @ dense),
                                                 blk.toarray(), dtype=np.float64)
    return out


def _col_sq(m: sp.csr_matrix) -> np.ndarray:
    """Column sums of squares (float64)."""
    data = m.data.astype(np.float64)
    return np.bincount(m.indices, weights=data * data, minlength=m.shape[1])


def _mirror_lower(a: np.ndarray) -> None:
    """Copy the lower triangle of square ``a`` onto its upper one, in place, a block of rows
    at a time (no full-size temporary)."""
    n = a.shape[0]
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        a[lo:hi, hi:] = a[hi:, lo:hi].T
        blk = a[lo:hi, lo:hi]
        iu = np.triu_indices(hi - lo, 1)
        blk[iu] = blk.T[iu]


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


def _gram(a: sp.csr_matrix) -> np.ndarray:
    """``a.T @ a`` as dense float64, summed in float64 a block of rows at a time.

    Sparse products accumulate in the operands' dtype: over millions of float32 rows the
    rounding of a Gram's entries outgrows a small ridge and the matrix stops being positive
    definite (Cholesky fails). Casting one block at a time keeps the float64 copy small.
    """
    gram = np.zeros((a.shape[1], a.shape[1]))
    for start in range(0, a.shape[0], _GRAM_ROWS):
        part = a[start:start + _GRAM_ROWS].astype(np.float64)
        gram += (part.T @ part).toarray()
    return gram
