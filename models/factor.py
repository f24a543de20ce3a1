"""Factor models (ALS): residents, services and bundles as vectors in one space.

Scoring is linear in a resident vector ``u``::

    service score(s) = u · y_s          bundle score(b) = u · v_b

``v_b`` are the bundle *scoring* vectors in the service factor space (for ALS: learned
bundle factors plus the mean of the member services' factors, see
:mod:`bouquet.pipelines.candidates`), so one dot product scores a bundle. A resident seen a
second ago gets ``u`` by the ALS fold-in of their recent service confidences
(:class:`~bouquet.models.foldin.FoldIn`): ``c = alpha · confidence(strength)`` by the
model's own rule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bouquet.models.confidence import Strengths
from bouquet.models.deployable import (
    ArtifactError,
    DeployableModel,
    RecentContributions,
    register_family,
)
from bouquet.models.foldin import FoldIn

#: Largest services × items matrix precomputed for the fold-in (float64: 32 MB).
_PRECOMPUTE_MAX_ENTRIES = 4_000_000


def _row(matrix: Any, row: int) -> np.ndarray:
    return matrix.data[matrix.indptr[row]:matrix.indptr[row + 1]]


@register_family
@dataclass(kw_only=True)
class FactorModel(DeployableModel):
    """A factor model: ``service_factors`` (S × f), ``bundle_factors`` (B × f, scoring
    vectors), ``resident_factors`` (n × f; empty in the serving view), and the ALS
    ``regularization`` and ``alpha`` its fold-in must use."""

    family: ClassVar[str] = "factor"
    resident_arrays: ClassVar[tuple[str, ...]] = (*DeployableModel.resident_arrays,
                                                  "resident_factors")

    service_factors: np.ndarray
    bundle_factors: np.ndarray
    resident_factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    regularization: float = 0.01
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self.service_factors = np.ascontiguousarray(self.service_factors, dtype=np.float32)
        self.bundle_factors = np.ascontiguousarray(self.bundle_factors, dtype=np.float32)
        f = self.service_factors.shape[1]
        self.resident_factors = np.ascontiguousarray(
            self.resident_factors, dtype=np.float32).reshape(-1, f)
        super().__post_init__()
        for name, shape in (("service_factors", (len(self.service_ids), f)),
                            ("bundle_factors", (len(self.bundle_ids), f)),
                            ("resident_factors", (len(self.resident_ids), f))):
            if getattr(self, name).shape != shape:
                raise ArtifactError(f"{name} has shape {getattr(self, name).shape}, "
                                    f"expected {shape}")

    @property
    def factors(self) -> int:
        return int(self.service_factors.shape[1])

    def _items(self, kind: str) -> np.ndarray:
        return self.bundle_factors if kind == "b" else self.service_factors

    # --- scoring ------------------------------------------------------------------------
    def score(self, rows: np.ndarray, kind: str) -> np.ndarray:
        users = self.resident_factors[np.asarray(rows, dtype=np.int64)]
        return (users @ self._items(kind).T).astype(np.float64)

    @functools.cached_property
    def foldin(self) -> FoldIn:
        return FoldIn(self.service_factors, self.regularization)

    def fold_in(self, strengths: Strengths) -> np.ndarray | None:
        """The resident vector of recent service strengths alone; None when nothing weighs."""
        found = self._coefficients(strengths)
        if found is None:
            return None
        rows, coef = found
        return coef @ self.foldin.projector[rows]

    def recent_scores(self, strengths: Strengths, kind: str) -> np.ndarray | None:
        found = self._coefficients(strengths)
        if found is None:
            return None
        rows, coef = found
        scores = self._scores_of_projection(kind)
        if scores is not None:  # B·u = (Y G⁻¹ Bᵀ)[rows]ᵀ γ: one small product per request
            return coef @ scores[rows]
        return self._items(kind).astype(np.float64) @ (coef @ self.foldin.projector[rows])

    def recent_contributions(self, strengths: Strengths, kind: str, items: Sequence[int]
                             ) -> RecentContributions:
        """``score_i = Σ_r γ_r · (Y G⁻¹)_r · v_i``: each recent service's term (the fold-in's
        own decomposition; recent bundle events reach it through their services), read off
        the precomputed ``Y G⁻¹ Bᵀ`` when the catalogue has one."""
        found = self._coefficients(strengths)
        if found is None:
            return RecentContributions([], np.zeros((0, len(items))))
        rows, coef = found
        columns = np.asarray(items, dtype=np.int64)
        scores = self._scores_of_projection(kind)
        if scores is not None:
            block = scores[np.ix_(rows, columns)]
        else:
            block = self.foldin.projector[rows] @ self._items(kind)[columns].astype(np.float64).T
        return RecentContributions([("s", r) for r in rows.tolist()], coef[:, None] * block)

    def _scores_of_projection(self, kind: str) -> np.ndarray | None:
        """``Y G⁻¹ Bᵀ`` (services × items), precomputed once per loaded model when it is
        small (a city catalogue: a few hundred kB), so a request never forms ``u``; None
        for a catalogue where it would not be (then ``u`` is formed, then scored)."""
        cache = self.__dict__.setdefault("_projection_scores", {})
        if kind not in cache:
            items = self._items(kind)
            small = len(self.service_ids) * len(items) <= _PRECOMPUTE_MAX_ENTRIES
            cache[kind] = np.ascontiguousarray(
                self.foldin.projector @ items.astype(np.float64).T) if small else None
        return cache[kind]

    def _coefficients(self, strengths: Strengths) -> tuple[np.ndarray, np.ndarray] | None:
        # one request asks for the scores, then for the reasons of a few items, with the
        # same strengths: solved once (a strong reference, so identity cannot be reused)
        memo = self.__dict__.get("_last_coefficients")
        if memo is not None and memo[0] is strengths:
            return memo[1]
        found = self._solve_coefficients(strengths)
        self.__dict__["_last_coefficients"] = (strengths, found)
        return found

    def _solve_coefficients(self, strengths: Strengths
                            ) -> tuple[np.ndarray, np.ndarray] | None:
        positive = {i: s for i, s in strengths.services.items() if s > 0}
        if not positive:
            return None
        ids = np.fromiter(positive.keys(), dtype=np.int64, count=len(positive))
        s = np.fromiter(positive.values(), dtype=np.float64, count=len(positive))
        return self.foldin.coefficients(ids, self.alpha * self.rule.confidence(s),
                                        distinct=True)

    def explain(self, rows: np.ndarray, kind: str, items: np.ndarray) -> np.ndarray:
        """:meth:`DeployableModel.explain` for many residents at once: the same
        decomposition as :meth:`_contributions`, with each resident's history services
        padded to the longest (a padded service has confidence 1 and a zero vector, so it
        adds nothing) and every resident's ``A`` solved in one batched call."""
        rows = np.asarray(rows, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.zeros(items.shape, dtype=np.int64)
        history = self.resident_services
        counts = np.diff(history.indptr)[rows]
        width = int(counts.max()) if len(rows) else 0
        if width == 0:
            return out
        slot = np.arange(width)[None, :]
        present = slot < counts[:, None]
        # positions in the CSR arrays; a padded slot repeats a real one (masked out below)
        where = history.indptr[rows][:, None] + np.minimum(slot,
                                                           np.maximum(counts - 1, 0)[:, None])
        services = np.where(present, history.indices[where], 0)
        c = np.where(present, self.alpha * history.data[where].astype(np.float64), 1.0)
        y = self.foldin.item_factors[services] * present[..., None]  # (n, m, f)
        a = self.foldin.gram[None] + np.swapaxes(y * (c - 1.0)[..., None], 1, 2) @ y
        wanted = items >= 0
        targets = self._items(kind)[np.maximum(items, 0)].astype(np.float64)  # (n, k, f)
        solved = np.linalg.solve(a, np.swapaxes(targets, 1, 2))  # (n, f, k)
        contrib = np.maximum(c, 0.0)[..., None] * (y @ solved)  # (n, m, k)
        contrib = np.where(present[..., None], contrib, -np.inf)
        best = contrib.argmax(axis=1)  # (n, k): the history service adding most
        value = np.take_along_axis(contrib, best[:, None, :], 1)[:, 0, :]
        drivers = self.service_drivers.data[np.take_along_axis(where, best, 1)]
        out[:] = np.where(wanted & (value > 0), drivers, 0)
        return out

    def _contributions(self, row: int, kind: str, items: np.ndarray, services: np.ndarray,
                       bundles: np.ndarray) -> np.ndarray:
        """implicit's ALS explanation: with ``A = G + Y_hᵀ(C_h − I)Y_h`` over the resident's
        services ``h``, the score ``v_iᵀ A⁻¹ Y_hᵀ c_h`` splits into ``c_j · v_iᵀ A⁻¹ y_j``
        per history service ``j``. Bundle rows do not enter a factor model's resident vector
        (bundle events reach it shared over their services), so they contribute 0."""
        c = self.alpha * _row(self.resident_services, row).astype(np.float64)
        y = self.foldin.item_factors[services]
        a = self.foldin.gram + (y.T * (c - 1.0)) @ y
        targets = self._items(kind)[items].astype(np.float64)  # (k, f)
        solved = np.linalg.solve(a, targets.T)  # A⁻¹ v_i, (f, k)
        out = np.zeros((len(services) + len(bundles), len(items)))
        out[:len(services)] = np.maximum(c, 0.0)[:, None] * (y @ solved)
        return out

    # --- files --------------------------------------------------------------------------
    def _family_arrays(self) -> dict[str, Any]:
        return {"service_factors": self.service_factors, "bundle_factors": self.bundle_factors,
                "resident_factors": self.resident_factors}

    def _family_meta(self) -> dict[str, Any]:
        return {"regularization": float(self.regularization), "alpha": float(self.alpha),
                "factors": self.factors}

    @classmethod
    def _from_parts(cls, common: dict[str, Any], meta: Mapping[str, Any],
                    arrays: Mapping[str, Any]) -> FactorModel:
        try:
            return cls(**common, service_factors=arrays["service_factors"],
                       bundle_factors=arrays["bundle_factors"],
                       resident_factors=arrays["resident_factors"],
                       regularization=float(meta["regularization"]),
                       alpha=float(meta.get("alpha", 1.0)))
        except KeyError as exc:
            raise ArtifactError(f"factor model lacks {exc}") from None
