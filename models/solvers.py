r"""Choosing how a closed-form linear model solves, before allocating anything.

EASE and :class:`~bouquet.models.ease.CrossViewEASE` need the inverse of a regularised Gram
matrix, :math:`P = (A^\top A + \lambda I)^{-1}`, and then a few columns (or all) of
:math:`B = -P\,\mathrm{diag}(P)^{-1}` with a zero diagonal. There are three ways to get them:

* ``primal`` — factorise the ``features × features`` Gram: memory and time grow with the
  catalog (``n²`` floats, ``n³`` flops);
* ``dual`` — the Woodbury identity, :math:`P = (I - A^\top (AA^\top + \lambda I)^{-1} A)/\lambda`:
  only a ``users × users`` system is factorised (``m²`` floats, ``m³`` flops), plus the output;
* ``lowrank`` — keep the top ``rank`` eigenpairs of :math:`A^\top A` (randomised SVD through
  sparse products) and the exact diagonal of the rest, and invert that by Woodbury
  (:func:`lowrank_columns`): time is linear in the data and ``rank``, plus the output. It is
  exact when ``rank`` reaches the rank of ``A``.

Each model estimates every way's peak memory and time from shapes and non-zero counts
(:class:`SolverEstimate`), then :func:`choose` picks one: the exact ways in the model's own
order of preference, the first that fits in memory and in the time budget; otherwise the
fastest way that fits in memory (usually ``lowrank``); if none fits, a
:class:`SolverDoesNotFitError` that gives the numbers. Time estimates use fixed assumed rates
(below), not a measurement, so the same data always gets the same solver on any machine with
enough memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.linalg

log = logging.getLogger(__name__)

#: Sustained dense-BLAS rate assumed per core, in GFLOP/s, by element size (float32 and
#: float64). Measured on the 2-core development machine while it was shared with other jobs:
#: Cholesky + inverse of 18 528² float32 at 72 GFLOP/s and of 20 000² float64 at 28 GFLOP/s on
#: both cores; quiet machines are faster, so estimates err on the slow side.
DENSE_GFLOPS_PER_CORE = {4: 30.0, 8: 14.0}
#: Rate assumed for scipy's sparse × dense products (single-threaded, memory-bound).
SPARSE_GFLOPS = 0.8
#: Largest square matrix handed to one LAPACK factorisation. scipy's bundled OpenBLAS
#: (0.3.30, 32-bit indices) segfaults in double-precision Cholesky and LU from about
#: 22 800² on the development machine; Cholesky + inverse and LU inverse of 20 000² were
#: checked to complete, so nothing above is attempted whatever the memory.
MAX_DENSE_DIM = 20_000
#: Share of the memory available at fit time a solver may plan to use.
MEMORY_SHARE = 0.8

_GB = 2.0**30


class SolverDoesNotFitError(MemoryError):
    """No way of solving fits in memory (or within LAPACK's safe size) on this machine."""


@dataclass(frozen=True)
class SolverEstimate:
    """What one way of solving would need: planned peak memory and time.

    Attributes
    ----------
    solver : str
        ``"primal"``, ``"dual"`` or ``"lowrank"``.
    exact : bool
        Whether it gives the closed-form model (``lowrank``: only at full rank).
    peak_gb : float
        Memory the fit would hold at its peak (GiB), outputs included.
    seconds : float
        Estimated wall time at the assumed rates.
    dense_dim : int
        Side of the largest matrix factorised by LAPACK (0: none).
    dtype : str
        Precision of the factorisation.
    """

    solver: str
    exact: bool
    peak_gb: float
    seconds: float
    dense_dim: int = 0
    dtype: str = "float64"

    def as_dict(self) -> dict[str, float | str | bool | int]:
        """JSON-able, rounded (for ``solver_estimate_`` and MLflow)."""
        out = asdict(self)
        out["peak_gb"] = round(self.peak_gb, 3)
        out["seconds"] = round(self.seconds, 1)
        return out

    def __str__(self) -> str:
        dim = f", {self.dense_dim}² {self.dtype} factorisation" if self.dense_dim else ""
        return f"{self.solver}: {self.peak_gb:.2f} GB, ~{self.seconds:.0f} s{dim}"


def blas_threads() -> int:
    """Cores this process may use: the BLAS thread count during a solve."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pinned_blas(threads: int | None = None) -> Any:
    """A context pinning every BLAS library to ``threads`` (default :func:`blas_threads`).

    threadpoolctl is imported here rather than at module level: loading a fitted model to
    score it must not need the training-time libraries.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(blas_threads() if threads is None else threads, "blas")


def seconds_for(dense_flops: float = 0.0, sparse_flops: float = 0.0, itemsize: int = 8) -> float:
    """Estimated wall time of ``dense_flops`` BLAS/LAPACK work and ``sparse_flops`` scipy
    sparse-product work at the assumed rates."""
    dense_rate = DENSE_GFLOPS_PER_CORE[itemsize] * blas_threads() * 1e9
    return dense_flops / dense_rate + sparse_flops / (SPARSE_GFLOPS * 1e9)


def available_gb() -> float:
    """Memory available to a new allocation now (GiB)."""
    import psutil

    return psutil.virtual_memory().available / _GB


def choose(
    estimates: Sequence[SolverEstimate],
    requested: str,
    max_seconds: float,
    max_memory_gb: float | None,
    model: str,
) -> SolverEstimate:
    """Pick a solver from ``estimates`` (exact ones in order of preference).

    ``requested`` other than ``"auto"`` is honoured if it fits in memory, whatever its time.
    ``"auto"``: the first exact solver that fits in memory and in ``max_seconds``; else the
    fastest that fits in memory. Raises :class:`SolverDoesNotFitError` when none fits.
    ``max_memory_gb=None`` means :data:`MEMORY_SHARE` of the memory available now.
    """
    by_name = {e.solver: e for e in estimates}
    if requested != "auto" and requested not in by_name:
        raise ValueError(f"solver must be 'auto' or one of {sorted(by_name)}, got {requested!r}")
    budget = MEMORY_SHARE * available_gb() if max_memory_gb is None else float(max_memory_gb)

    def fits(e: SolverEstimate) -> bool:
        return e.peak_gb <= budget and e.dense_dim <= MAX_DENSE_DIM

    candidates = [by_name[requested]] if requested != "auto" else list(estimates)
    fitting = [e for e in candidates if fits(e)]
    if not fitting:
        raise SolverDoesNotFitError(
            f"{model}: no solver fits — memory budget {budget:.2f} GB"
            + ("" if max_memory_gb is not None else f" ({MEMORY_SHARE:.0%} of available)")
            + f", largest safe dense factorisation {MAX_DENSE_DIM}²; needed: "
            + "; ".join(str(e) for e in candidates)
        )
    if requested != "auto":
        chosen = fitting[0]
    else:
        in_time = [e for e in fitting if e.exact and e.seconds <= max_seconds]
        chosen = in_time[0] if in_time else min(fitting, key=lambda e: e.seconds)
    if chosen.seconds > max_seconds:
        log.warning("%s: %s solver estimated at %.0f s, above max_seconds=%.0f",
                    model, chosen.solver, chosen.seconds, max_seconds)
    others = "; ".join(str(e) for e in estimates if e is not chosen) or "none"
    log.info("%s: %s (budget %.2f GB, %.0f s; other solvers: %s)", model, chosen, budget,
             max_seconds, others)
    return chosen


# ---------------------------------------------------------------------- the low-rank way
def lowrank_estimate(
    n_rows: int, n_features: int, n_targets: int, n_out_rows: int, product_nnz: float,
    rank: int, oversample: int, power_iterations: int, extra_gb: float = 0.0,
) -> SolverEstimate:
    """Estimate :func:`lowrank_columns` and the ``n_out_rows × n_targets`` float32 output.

    ``product_nnz`` is the number of stored entries touched by one product with the feature
    matrix (through its sparse factors); ``extra_gb`` what the caller holds besides.
    """
    width = min(rank + oversample, n_rows, n_features)
    k = min(rank, width)
    passes = 2 * (power_iterations + 1)
    sparse = passes * 2.0 * product_nnz * width
    dense = (
        passes * 2.0 * (n_rows + n_features) * width**2  # orthonormalisations
        + 4.0 * n_features * width**2  # SVD of the projected (width × features) matrix
        + 2.0 * n_out_rows * k * n_targets  # the output
    )
    peak = (
        4.0 * (3 * (n_rows + n_features) * width)  # blocks of the range finder (float32)
        + 8.0 * n_features * width  # the projected matrix in float64 for the SVD
        + 4.0 * n_out_rows * n_targets
    ) / _GB + extra_gb
    return SolverEstimate("lowrank", exact=k >= min(n_rows, n_features), peak_gb=peak,
                          seconds=seconds_for(dense, sparse, itemsize=4), dtype="float32")


def lowrank_columns(
    matmat: Callable[[np.ndarray], np.ndarray],
    rmatmat: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int],
    col_sq_norms: np.ndarray,
    n_targets: int,
    l2: float,
    rank: int,
    oversample: int = 16,
    power_iterations: int = 3,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""EASE's target columns from a low-rank-plus-diagonal Gram, in factored form.

    With the top ``rank`` right singular pairs of :math:`A` (``m × F``), the Gram is
    approximated as :math:`G \approx V S V^\top + \operatorname{diag}(r)` where :math:`r` is
    the exact diagonal of what the rank misses (``col_sq_norms`` minus the captured part), so
    every feature keeps its own mass. Then, with :math:`\Lambda = \operatorname{diag}(r) +
    \lambda I` and :math:`H = \Lambda^{-1} V S^{1/2}`, Woodbury gives
    :math:`P = \Lambda^{-1} - H M H^\top`, :math:`M = (I + S^{1/2} V^\top \Lambda^{-1} V
    S^{1/2})^{-1}`, and EASE's column :math:`j` is :math:`B_{:,j} = H M H_j^\top / P_{jj}`
    off the diagonal.

    Parameters
    ----------
    matmat, rmatmat : callable
        ``Ω ↦ A Ω`` (``F × w`` → ``m × w``) and ``Y ↦ Aᵀ Y`` (``m × w`` → ``F × w``), float32.
    shape : (int, int)
        ``(m, F)``.
    col_sq_norms : numpy.ndarray
        ``diag(AᵀA)``, length ``F``.
    n_targets : int
        The first ``n_targets`` features are the targets (EASE's output columns).

    Returns
    -------
    H, C : numpy.ndarray
        ``F × k`` and ``k × n_targets`` float32 with ``B[:, :n_targets] = H @ C`` except on
        the diagonal (``B[j, j] = 0``), which the caller zeroes.
    """
    m, f = shape
    width = min(rank + oversample, m, f)
    rng = np.random.default_rng(random_state)
    # randomised range finder with subspace iterations (Halko, Martinsson & Tropp 2011, alg.
    # 4.4); sklearn's randomized_svd needs A as a stored matrix, and A's projected block has
    # many times more stored entries than the sparse factors it is applied through.
    # Like sklearn, the intermediate blocks are only LU-normalised (several times cheaper than
    # QR on a tall block, and enough to keep the columns apart); one QR at the end.
    y = matmat(rng.standard_normal((f, width), dtype=np.float32))
    for _ in range(power_iterations):
        y = matmat(_lu_normalised(rmatmat(_lu_normalised(y))))
    with _one_thread():
        q, _ = scipy.linalg.qr(y, mode="economic", overwrite_a=True, check_finite=False)
    # SVD of the (width × F) matrix Qᵀ A through its width × width Gram: a GEMM and a small
    # eigenproblem instead of a bidiagonalisation over F columns (ten times faster at F = 57 k;
    # squaring only costs accuracy in the smallest singular values, which are cut anyway).
    at_q = np.asarray(rmatmat(q), dtype=np.float64)  # F × width = (Qᵀ A)ᵀ
    with _one_thread():
        evals, evecs = scipy.linalg.eigh(at_q.T @ at_q, overwrite_a=True, check_finite=False)
    order = np.argsort(evals)[::-1][: min(rank, width)]
    s = np.sqrt(np.maximum(evals[order], 0.0))
    keep = s > s[0] * 1e-6 if s.size else s > 0
    s, evecs = s[keep], evecs[:, order[keep]]
    k = len(s)
    v = (at_q @ evecs) / s  # F × k, right singular vectors of A
    captured = (v**2) @ (s**2)
    resid = np.maximum(np.asarray(col_sq_norms, dtype=np.float64) - captured, 0.0)
    lam = resid + l2
    vs = v * s  # V S^½ (s are singular values of A, i.e. square roots of G's eigenvalues)
    h = vs / lam[:, None]
    inner = np.eye(k) + vs.T @ h
    with _one_thread():
        m_inv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(inner), np.eye(k))
    ht = h[:n_targets]
    hm_t = ht @ m_inv
    p_diag = 1.0 / lam[:n_targets] - np.einsum("ij,ij->i", hm_t, ht)
    c = (hm_t / p_diag[:, None]).T  # k × n_targets
    return h.astype(np.float32), np.ascontiguousarray(c, dtype=np.float32)


def _one_thread() -> Any:
    """LU, QR and eigh of tall-skinny or small blocks are synchronisation-bound: on the
    shared 2-core machine a second BLAS thread made them 3-15x slower whenever another
    process held a core, while one thread is steady. Big products keep every core."""
    return pinned_blas(1)


def _lu_normalised(y: np.ndarray) -> np.ndarray:
    with _one_thread():
        pl, _ = scipy.linalg.lu(y, permute_l=True, overwrite_a=True, check_finite=False)
    return pl
