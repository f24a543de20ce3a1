"""What a serving process holds of one published version, and the real-time maths on it.

``bouquet publish`` materialises, beside every resident's precomputed lists, the small part
of the model that serving needs (service factors, a bundle matrix in the same factor space,
the regularised Gram matrix) under the version's own key. A serving process therefore loads
the model *and* the lists of one version from one place, atomically with the pointer, and
never needs MLflow on the request path (MLflow down does not stop serving).

Lists are stored packed (8 bytes an entry: item index, reason index, float32 score) rather
than as JSON: see :func:`pack_list` and docs/serving.md for the measured sizes.

The fold-in is the implicit-ALS least-squares step for one resident, restricted to the
recent events: ``u = (YᵀY + λI + Yᵣᵀ(Cᵣ−I)Yᵣ)⁻¹ Yᵣᵀcᵣ`` where ``Yᵣ`` are the factors of the
few services just touched. ``YᵀY + λI`` is precomputed at publish, so a request costs one
f×f solve (f = factors), not a pass over the catalogue.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg.lapack import dposv as _dposv

#: One entry of a packed list: index into the version's id list, index into its reason
#: vocabulary, score. Little-endian, 8 bytes.
ENTRY = np.dtype([("i", "<u2"), ("r", "<u2"), ("s", "<f4")])
_FORMAT = b"\x01"  # first byte of every packed list: format version


def pack_list(items: np.ndarray, scores: np.ndarray, reasons: np.ndarray | None = None) -> bytes:
    """Pack one ranked list (best first) into bytes."""
    out = np.empty(len(items), dtype=ENTRY)
    out["i"] = items
    out["r"] = 0 if reasons is None else reasons
    out["s"] = scores
    return _FORMAT + out.tobytes()


def pack_rows(items: np.ndarray, scores: np.ndarray, reasons: np.ndarray) -> list[bytes]:
    """Pack many lists of equal length at once (rows of 2-D arrays); returns one value per row."""
    n, k = items.shape
    out = np.empty((n, k), dtype=ENTRY)
    out["i"] = items
    out["r"] = reasons
    out["s"] = scores
    raw = out.tobytes()
    width = k * ENTRY.itemsize
    return [_FORMAT + raw[row * width:(row + 1) * width] for row in range(n)]


def unpack_list(raw: bytes | None) -> np.ndarray:
    """The entries of a packed list (empty for None or an unknown format)."""
    if not raw or raw[:1] != _FORMAT or (len(raw) - 1) % ENTRY.itemsize:
        return np.empty(0, dtype=ENTRY)
    return np.frombuffer(raw, dtype=ENTRY, offset=1)


@dataclass
class ServingModel:
    """The serving part of one published version (immutable once loaded)."""

    version: str
    model_version: str
    run_id: str
    bundle_ids: list[str]
    service_ids: list[str]
    reason_vocab: list[str]
    service_factors: np.ndarray  # (n_services, f) float32
    bundle_matrix: np.ndarray  # (n_bundles, f) float32, same factor space
    regularization: float = 0.01
    alpha: float = 1.0
    #: The training confidence rule (:func:`bouquet.models.artifact.confidence`); None
    #: folds the raw strengths in as confidences.
    log_alpha: float | None = None
    half_life_days: float | None = None
    #: The training event weights (None: the serving settings' weights).
    event_weights: dict[str, float] | None = None
    published_at: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    #: Popular lists of this version: (kind, neighbourhood) -> packed entries.
    popular: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.service_factors = np.ascontiguousarray(self.service_factors, dtype=np.float32)
        self.bundle_matrix = np.ascontiguousarray(self.bundle_matrix, dtype=np.float32)
        f = self.service_factors.shape[1]
        # Solved in float64: the Gram matrix of a few hundred items is well conditioned
        # with λI, and f×f float64 solves are as fast as float32 ones at this size.
        y64 = self.service_factors.astype(np.float64)
        self.gram = y64.T @ y64 + self.regularization * np.eye(f)
        # (YᵀY + λI)⁻¹ and Y(YᵀY + λI)⁻¹, so a fold-in of m recent services is an m×m solve
        # (Woodbury identity) instead of an f×f one: m is a handful, f is 64 or more.
        self.gram_inv = np.linalg.inv(self.gram)
        self._y64 = y64
        self._y_ginv = y64 @ self.gram_inv
        # Y G⁻¹ Yᵀ (services × services) and Y G⁻¹ Bᵀ (services × bundles): with them a
        # request gets the re-ranking scores B·u (or Y·u) of the fold-in straight from the
        # recent services' rows, never forming u (see recent_scores). A city catalogue has
        # tens to hundreds of services: a few hundred kB at most.
        self._q = np.ascontiguousarray(self._y_ginv @ y64.T)
        self._p = np.ascontiguousarray(self._y_ginv @ self.bundle_matrix.astype(np.float64).T)
        self.bundle_index = {b: i for i, b in enumerate(self.bundle_ids)}
        self.service_index = {s: i for i, s in enumerate(self.service_ids)}

    # --- real time -----------------------------------------------------------------------
    def fold_in(self, strengths: Mapping[int, float]) -> np.ndarray | None:
        """Resident factors from recent service strengths ``{service_index: s}`` alone.

        Strengths (Σ weight · decay) become confidences with the training rule, then the
        same normal equations as implicit's ``recalculate_user`` are solved (confidence
        scaled by the model's ``alpha``); None when there is nothing to fold in.
        """
        if not strengths:
            return None
        idx = np.fromiter(strengths.keys(), dtype=np.intp, count=len(strengths))
        s = np.fromiter(strengths.values(), dtype=np.float64, count=len(strengths))
        keep = s > 0
        if not keep.any():
            return None
        idx, s = idx[keep], s[keep]
        c = self.alpha * (1.0 + self.log_alpha * np.log1p(s) if self.log_alpha is not None
                          else s)
        y = self._y64[idx]  # (m, f)
        w = self._y_ginv[idx]  # (m, f) = Y_r G⁻¹
        pb = w.T @ c  # G⁻¹ Y_rᵀ c
        extra = c - 1.0  # confidence above the unobserved baseline of 1
        sel = extra > 1e-12
        if not sel.any():
            return pb
        if not sel.all():
            y, w, extra = y[sel], w[sel], extra[sel]
        # (G + Y_rᵀ D Y_r)⁻¹ b = G⁻¹b − W ᵀ (D⁻¹ + W Y_rᵀ)⁻¹ W b,  W = Y_r G⁻¹, D = diag(c − 1)
        small = w @ y.T
        small[np.diag_indices_from(small)] += 1.0 / extra
        _, z, info = _dposv(small, y @ pb)  # SPD: Cholesky, without numpy's wrapper cost
        if info != 0:
            z = np.linalg.solve(small, y @ pb)
        return pb - w.T @ z

    def recent_scores(self, strengths: Mapping[int, float], kind: str = "b"
                      ) -> np.ndarray | None:
        """Every bundle's (``kind`` ``b``) or service's (``s``) score for the fold-in of
        ``strengths`` — ``B·u`` or ``Y·u`` with ``u = fold_in(strengths)`` — in float64,
        None when there is nothing to fold in.

        The same normal equations as :meth:`fold_in`, rewritten on the precomputed
        ``Q = Y G⁻¹ Yᵀ`` and ``P = Y G⁻¹ Bᵀ``: with ``W = Y_r G⁻¹``,
        ``u = Wᵀ (c − z)`` where ``z = (Q_ss + D⁻¹)⁻¹ Q_sr c`` (``s``: the recent services
        whose confidence exceeds the baseline 1, ``D = diag(c_s − 1)``), so
        ``B·u = P_rᵀ (c − z)``. One m×m Cholesky solve and one (m × items) product — about
        a dozen small numpy calls instead of the thirty of fold-in plus scoring, which
        dominated the ranking's cost per request.
        """
        idx = [i for i, v in strengths.items() if v > 0]
        if not idx:
            return None
        alpha, log_alpha = self.alpha, self.log_alpha
        if log_alpha is not None:
            c = [alpha * (1.0 + log_alpha * math.log1p(strengths[i])) for i in idx]
        else:
            c = [alpha * strengths[i] for i in idx]
        rows = np.array(idx, dtype=np.intp)
        coef = np.array(c)
        sel = [j for j, cj in enumerate(c) if cj - 1.0 > 1e-12]
        if sel:
            inv_extra = [1.0 / (c[j] - 1.0) for j in sel]
            if len(sel) == len(idx):
                small = self._q.take(rows, 0).take(rows, 1)  # Q_rr, a fresh array
                rhs = small @ coef
                s_rows = rows
            else:
                s_rows = rows[sel]
                q_sr = self._q.take(s_rows, 0).take(rows, 1)
                rhs = q_sr @ coef
                small = q_sr[:, sel]
            small.flat[::len(sel) + 1] += inv_extra
            _, z, info = _dposv(small, rhs, overwrite_a=1)  # SPD: Cholesky
            if info != 0:  # numerically not positive definite: a general solve
                q_ss = self._q.take(s_rows, 0).take(s_rows, 1)
                z = np.linalg.solve(q_ss + np.diag(inv_extra), rhs)
            if len(sel) == len(idx):
                coef -= z
            else:
                coef[sel] -= z
        return coef @ (self._p if kind == "b" else self._q).take(rows, 0)

    def bundle_scores(self, user: np.ndarray) -> np.ndarray:
        return self.bundle_matrix @ user.astype(np.float32)

    def service_scores(self, user: np.ndarray) -> np.ndarray:
        return self.service_factors @ user.astype(np.float32)

    # --- storage -------------------------------------------------------------------------
    def to_blob(self) -> bytes:
        """The arrays as ``.npz`` bytes (ids and scalars go in the version's meta hash)."""
        buf = io.BytesIO()
        np.savez(buf, service_factors=self.service_factors, bundle_matrix=self.bundle_matrix)
        return buf.getvalue()

    def meta_fields(self) -> dict[str, str]:
        return {
            "model_version": self.model_version,
            "run_id": self.run_id,
            "bundle_ids": json.dumps(self.bundle_ids),
            "service_ids": json.dumps(self.service_ids),
            "reason_vocab": json.dumps(self.reason_vocab),
            "regularization": repr(float(self.regularization)),
            "alpha": repr(float(self.alpha)),
            "log_alpha": "" if self.log_alpha is None else repr(float(self.log_alpha)),
            "half_life_days": "" if not self.half_life_days else repr(float(self.half_life_days)),
            "event_weights": json.dumps(self.event_weights) if self.event_weights else "",
            "factors": str(self.service_factors.shape[1]),
        }

    @classmethod
    def from_stored(cls, version: str, meta: Mapping[str, str], blob: bytes) -> ServingModel:
        """Rebuild from a version's meta hash and model blob (as written by publish)."""
        arrays = np.load(io.BytesIO(blob), allow_pickle=False)
        return cls(
            version=version,
            model_version=meta["model_version"],
            run_id=meta.get("run_id", ""),
            bundle_ids=json.loads(meta["bundle_ids"]),
            service_ids=json.loads(meta["service_ids"]),
            reason_vocab=json.loads(meta["reason_vocab"]),
            service_factors=arrays["service_factors"],
            bundle_matrix=arrays["bundle_matrix"],
            regularization=float(meta.get("regularization", 0.01)),
            alpha=float(meta.get("alpha", 1.0)),
            log_alpha=float(meta["log_alpha"]) if meta.get("log_alpha") else None,
            half_life_days=float(meta["half_life_days"]) if meta.get("half_life_days") else None,
            event_weights=json.loads(meta["event_weights"]) if meta.get("event_weights")
            else None,
            published_at=meta.get("published_at", ""),
            meta=dict(meta),
        )


def composition_matrix(bundle_services: Sequence[Iterable[str]], service_ids: Sequence[str],
                       service_factors: np.ndarray) -> np.ndarray:
    """Bundle vectors as the mean of their services' factors: the bundle matrix for models
    that learn no bundle factors of their own (a bundle is liked for what it contains)."""
    index = {s: i for i, s in enumerate(service_ids)}
    out = np.zeros((len(bundle_services), service_factors.shape[1]), dtype=np.float32)
    for row, services in enumerate(bundle_services):
        members = [index[s] for s in services if s in index]
        if members:
            out[row] = service_factors[members].mean(axis=0)
    return out


def decode_meta(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash reply (bytes keys and values) as ``str -> str``."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}
