"""Linear item-to-item models (EASE, cross-view EASE, item kNN, the bundle scorer).

A resident is described by two input rows — their services and their bundles, as the
confidences training built — and every score is a sum of products with weight matrices::

    scores(kind) = Σ_groups coef_g · norm_g( Σ_terms∈g  input(term) @ W_term )

``input`` is the row of the term's source (services or bundles), as confidences or as a
0/1 pattern (``binary``); ``norm`` is the identity or a per-resident standardisation (the
bundle scorer mixes two signals of different scales on z-scores). So the fold-in of recent
events is the same product with the recent-event vector, and a resident's score of a
history plus new events is the sum of both parts (exactly, without standardisation).

**Serving form.** A dense item-to-bundle matrix can be far larger than a Redis string may
hold (22.9k bundles: ~2 GB); :meth:`LinearModel.sparsified` keeps the ``k`` largest weights
(by magnitude) of every target column, and training and the bundle benchmark measure what
that costs in accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from bouquet.models.confidence import Strengths
from bouquet.models.deployable import (
    ArtifactError,
    DeployableModel,
    RecentContributions,
    register_family,
)

SOURCES = ("s", "b")  # an input row: services or bundles


@dataclass(frozen=True)
class LinearTerm:
    """One product ``input(source) @ weights`` contributing to ``target``'s scores.

    ``group`` collects terms that are summed before their group's normalisation.
    """

    source: str  # "s" | "b"
    target: str  # "s" | "b"
    weights: sp.csr_matrix  # (n_source_items, n_target_items)
    binary: bool = False
    group: int = 0


@dataclass(frozen=True)
class TermGroup:
    """How a target's group of terms enters its score: ``coef · norm(sum)``."""

    target: str
    group: int
    coef: float = 1.0
    standardise: bool = False


@register_family
@dataclass(kw_only=True)
class LinearModel(DeployableModel):
    """A linear model: weight terms, their groups, and the residents' input rows."""

    family: ClassVar[str] = "linear"

    terms: list[LinearTerm]
    groups: list[TermGroup]
    #: Weights kept per target column in the serving form (None: dense as fitted).
    top_k: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        n_s, n_b = len(self.service_ids), len(self.bundle_ids)
        size = {"s": n_s, "b": n_b}
        for term in self.terms:
            term.weights.sum_duplicates()  # one entry per (row, column): recent_scores adds rows
            if term.weights.shape != (size[term.source], size[term.target]):
                raise ArtifactError(f"a {term.source}→{term.target} term has shape "
                                    f"{term.weights.shape}")
        known = {(g.target, g.group) for g in self.groups}
        for kind in ("s", "b"):
            if not any(t.target == kind for t in self.terms):
                raise ArtifactError(f"a linear model needs terms for both targets; none "
                                    f"scores {'bundles' if kind == 'b' else 'services'}")
        missing = {(t.target, t.group) for t in self.terms} - known
        if missing:
            raise ArtifactError(f"terms in undeclared groups {sorted(missing)}")

    # --- scoring ------------------------------------------------------------------------
    def _inputs(self, rows: np.ndarray) -> dict[str, sp.csr_matrix]:
        rows = np.asarray(rows, dtype=np.int64)
        return {"s": self.resident_services[rows], "b": self.resident_bundles[rows]}

    def _combine(self, inputs: Mapping[str, sp.csr_matrix], kind: str) -> np.ndarray:
        n = next(iter(inputs.values())).shape[0]
        out = np.zeros((n, len(self.item_ids(kind))), dtype=np.float64)
        for group in self.groups:
            if group.target == kind:
                part = self._group_part(inputs, group)
                out += group.coef * (_standardise(part) if group.standardise else part)
        return out

    def _group_part(self, inputs: Mapping[str, sp.csr_matrix], group: TermGroup
                    ) -> np.ndarray:
        """One group's sum of products before its normalisation, one row per input row."""
        n = next(iter(inputs.values())).shape[0]
        part = np.zeros((n, len(self.item_ids(group.target))), dtype=np.float64)
        for term in self.terms:
            if term.target == group.target and term.group == group.group:
                x = inputs[term.source]
                product = (_binary(x) if term.binary else x) @ term.weights
                part += product.toarray() if sp.issparse(product) else product
        return part

    def score(self, rows: np.ndarray, kind: str) -> np.ndarray:
        return self._combine(self._inputs(rows), kind)

    def recent_scores(self, strengths: Strengths, kind: str) -> np.ndarray | None:
        """The same sums of products as :meth:`score`, on the recent-event row: only the
        weight rows of the few items just touched are read (a request never builds a sparse
        matrix)."""
        inputs = {"s": self._recent_row(strengths.services),
                  "b": self._recent_row(strengths.bundles)}
        if not any(len(ids) for ids, _ in inputs.values()):
            return None
        n_items = len(self.item_ids(kind))
        out = np.zeros(n_items, dtype=np.float64)
        for group in self.groups:
            if group.target != kind:
                continue
            part = np.zeros(n_items, dtype=np.float64)
            for term in self.terms:
                if term.target == kind and term.group == group.group:
                    ids, values = inputs[term.source]
                    if len(ids):
                        _add_rows(part, term.weights, ids,
                                  np.ones_like(values) if term.binary else values)
            if group.standardise:
                part = _standardise(part[None, :])[0]
            out += group.coef * part
        return out

    def recent_contributions(self, strengths: Strengths, kind: str, items: Sequence[int]
                             ) -> RecentContributions:
        """Each recent item's ``input · W[j, item]`` summed over the terms that read it,
        scaled like its group (``coef / σ`` of the recent row's group when standardised)."""
        inputs = {"s": self._recent_row(strengths.services),
                  "b": self._recent_row(strengths.bundles)}
        columns = np.asarray(items, dtype=np.int64)
        found: dict[tuple[str, int], np.ndarray] = {}
        for group in self.groups:
            if group.target != kind:
                continue
            scale = group.coef
            if group.standardise:
                part = np.zeros(len(self.item_ids(kind)))
                for term in self._terms_of(group):
                    ids, values = inputs[term.source]
                    _add_rows(part, term.weights, ids,
                              np.ones_like(values) if term.binary else values)
                sd = float(part.std())
                if sd <= 0:
                    continue
                scale /= sd
            for term in self._terms_of(group):
                ids, values = inputs[term.source]
                if not len(ids):
                    continue
                values = np.ones_like(values) if term.binary else values
                block = term.weights[ids][:, columns].toarray()  # (recent ids, items)
                for j, v, row in zip(ids.tolist(), values.tolist(), block, strict=True):
                    key = (term.source, j)
                    found[key] = found.get(key, 0.0) + scale * v * row
        if not found:
            return RecentContributions([], np.zeros((0, len(columns))))
        return RecentContributions(list(found), np.vstack(list(found.values())))

    def _terms_of(self, group: TermGroup) -> list[LinearTerm]:
        return [t for t in self.terms if t.target == group.target and t.group == group.group]

    def _recent_row(self, strengths: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """Strengths as the input row training built: confidences by the model's rule."""
        kept = {i: s for i, s in strengths.items() if s > 0}
        ids = np.fromiter(kept.keys(), dtype=np.int64, count=len(kept))
        values = self.rule.confidence(np.fromiter(kept.values(), dtype=np.float64,
                                                  count=len(kept)))
        return ids, values

    # --- serving form ---------------------------------------------------------------------
    def sparsified(self, k: int | None) -> LinearModel:
        """The model with only the ``k`` largest-magnitude weights of each target column of
        every term (``None``: unchanged)."""
        if k is None:
            return self
        terms = [replace(t, weights=top_k_per_column(t.weights, k)) for t in self.terms]
        return replace(self, terms=terms, top_k=int(k))

    @property
    def weights_nnz(self) -> int:
        return int(sum(t.weights.nnz for t in self.terms))

    # --- files --------------------------------------------------------------------------
    def _contributions(self, row: int, kind: str, items: np.ndarray, services: np.ndarray,
                       bundles: np.ndarray) -> np.ndarray:
        """Exact for a sum of products: history item ``j`` of a term's source adds
        ``input_j · W[j, i]`` to target ``i``, scaled like its group (``coef / σ`` of the
        resident's row when the group is standardised; the mean shifts every item alike)."""
        inputs = self._inputs(np.array([row]))
        history = {"s": services, "b": bundles}
        offset = {"s": 0, "b": len(services)}
        out = np.zeros((len(services) + len(bundles), len(items)))
        for group in self.groups:
            if group.target != kind:
                continue
            scale = group.coef
            if group.standardise:
                part = self._group_part(inputs, group)
                sd = float(part.std())
                if sd <= 0:
                    continue
                scale /= sd
            for term in self.terms:
                if term.target != kind or term.group != group.group:
                    continue
                ids = history[term.source]
                if not len(ids):
                    continue
                x = inputs[term.source]
                values = np.ones(len(ids)) if term.binary else x.data.astype(np.float64)
                block = term.weights[ids][:, items].toarray()  # (m, k)
                lo = offset[term.source]
                out[lo:lo + len(ids)] += scale * values[:, None] * block
        return out

    def _family_arrays(self) -> dict[str, Any]:
        return {f"term{i}": term.weights for i, term in enumerate(self.terms)}

    def _family_meta(self) -> dict[str, Any]:
        return {
            "terms": [{"source": t.source, "target": t.target, "binary": t.binary,
                       "group": t.group} for t in self.terms],
            "groups": [{"target": g.target, "group": g.group, "coef": g.coef,
                        "standardise": g.standardise} for g in self.groups],
            "top_k": self.top_k,
        }

    @classmethod
    def _from_parts(cls, common: dict[str, Any], meta: Mapping[str, Any],
                    arrays: Mapping[str, Any]) -> LinearModel:
        try:
            terms = [LinearTerm(weights=sp.csr_matrix(arrays[f"term{i}"]), **spec)
                     for i, spec in enumerate(meta["terms"])]
            groups = [TermGroup(**spec) for spec in meta["groups"]]
            return cls(**common, terms=terms, groups=groups, top_k=meta.get("top_k"))
        except KeyError as exc:
            raise ArtifactError(f"linear model lacks {exc}") from None


def _add_rows(out: np.ndarray, weights: sp.csr_matrix, rows: np.ndarray,
              values: np.ndarray) -> None:
    """``out += Σ_i values[i] · weights[rows[i], :]`` reading only those CSR rows."""
    indptr, indices, data = weights.indptr, weights.indices, weights.data
    for row, value in zip(rows.tolist(), values.tolist(), strict=True):
        lo, hi = indptr[row], indptr[row + 1]
        if hi > lo:
            out[indices[lo:hi]] += value * data[lo:hi]


def top_k_per_column(weights: sp.spmatrix | np.ndarray, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest-magnitude entries of each column (ties: lower row first), as
    float32 CSR. A dense input is cut in column blocks, never copied whole into a sparse
    matrix first (a dense 32,770 × 4,771 weight matrix would take 1.2 GB as CSR)."""
    if not sp.issparse(weights):
        dense = np.asarray(weights)
        n_rows, n_cols = dense.shape
        if k >= n_rows:
            return sp.csr_matrix(dense, dtype=np.float32)
        rows, cols, vals = [], [], []
        for lo in range(0, n_cols, 256):
            block = dense[:, lo:lo + 256]
            # stable ordering by (-|w|, row): sort the candidates argpartition keeps
            part = np.argpartition(-np.abs(block), k - 1, axis=0)[:k]
            for j in range(block.shape[1]):
                picked = part[:, j]
                order = np.lexsort((picked, -np.abs(block[picked, j])))
                chosen = np.sort(picked[order])
                rows.append(chosen)
                cols.append(np.full(len(chosen), lo + j))
                vals.append(block[chosen, j])
        return sp.csr_matrix((np.concatenate(vals).astype(np.float32),
                              (np.concatenate(rows), np.concatenate(cols))),
                             shape=dense.shape)
    csc = sp.csc_matrix(weights, dtype=np.float32)
    csc.sum_duplicates()
    data, indices, indptr = [], [], [0]
    for col in range(csc.shape[1]):
        lo, hi = csc.indptr[col], csc.indptr[col + 1]
        values, rows_ = csc.data[lo:hi], csc.indices[lo:hi]
        if hi - lo > k:
            keep = np.sort(np.lexsort((rows_, -np.abs(values)))[:k])
            values, rows_ = values[keep], rows_[keep]
        data.append(values)
        indices.append(rows_)
        indptr.append(indptr[-1] + len(values))
    out = sp.csc_matrix((np.concatenate(data) if data else np.zeros(0, np.float32),
                         np.concatenate(indices) if indices else np.zeros(0, np.int32),
                         np.array(indptr)), shape=csc.shape)
    return out.tocsr()


def _binary(m: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(m, copy=True)
    out.data = (out.data != 0).astype(out.dtype)
    return out


def _standardise(m: np.ndarray) -> np.ndarray:
    """Each row to zero mean and unit variance (rows with no variance: zeros)."""
    mean = m.mean(axis=1, keepdims=True)
    std = m.std(axis=1, keepdims=True)
    return np.divide(m - mean, std, out=np.zeros_like(m), where=std > 0)


# --- from fitted recommenders -----------------------------------------------------------
def item_weights(model: Any) -> tuple[sp.csr_matrix, bool]:
    """The item-to-item weights of a fitted EASE or item-kNN recommender, and whether it
    reads 0/1 patterns."""
    weights = getattr(model, "weights_", None)
    if weights is None:
        weights = getattr(model, "similarity_", None)
    if weights is None:
        raise TypeError(f"{type(model).__name__} has no item-to-item weights")
    return sp.csr_matrix(weights, dtype=np.float32), bool(getattr(model, "binary", False))


def per_target_terms(services_model: Any, bundles_model: Any
                     ) -> tuple[list[LinearTerm], list[TermGroup]]:
    """Terms of two item-to-item models, one per target (services → services, bundles →
    bundles), summed without normalisation."""
    terms = []
    for kind, model in (("s", services_model), ("b", bundles_model)):
        weights, binary = item_weights(model)
        terms.append(LinearTerm(source=kind, target=kind, weights=weights, binary=binary))
    return terms, [TermGroup("s", 0), TermGroup("b", 0)]


def bundle_scorer_terms(scorer: Any, services_model: Any, top_k: int | None = None
                        ) -> tuple[list[LinearTerm], list[TermGroup]]:
    """Terms of a fitted :class:`~bouquet.models.bundles.BundleScorer` for bundles, and of
    ``services_model`` (an item-to-item model on services) for services.

    The scorer is ``z(x W_t + u W_s) + mix · z(u S Lᵀ)``: its collaborative part (a
    cross-view EASE, or any item-to-item model on bundles) and its service-affinity part
    (item kNN similarities ``S`` aggregated over the composition ``L``). ``top_k`` keeps
    the largest weights of each target column (the serving form of a large catalogue), cut
    from the dense matrices directly.
    """
    def kept(weights: Any) -> sp.csr_matrix:
        if top_k is None:
            return sp.csr_matrix(weights, dtype=np.float32)
        return top_k_per_column(weights, top_k)

    collab = scorer.bundle_model_
    terms: list[LinearTerm] = []
    if hasattr(collab, "target_weights_"):
        binary = bool(collab.binary)
        terms.append(LinearTerm("b", "b", kept(collab.target_weights_), binary, 0))
        if collab.side_weights_ is not None:
            terms.append(LinearTerm("s", "b", kept(collab.side_weights_), binary, 0))
    else:
        weights, binary = item_weights(collab)
        terms.append(LinearTerm("b", "b", kept(weights), binary, 0))
    groups = [TermGroup("b", 0, 1.0, True)]
    if scorer.item_model_ is not None and scorer.mix > 0:
        similarity, binary = item_weights(scorer.item_model_)
        affinity = kept(similarity @ scorer.aggregation_.T)
        terms.append(LinearTerm("s", "b", affinity, binary, 1))
        groups.append(TermGroup("b", 1, float(scorer.mix), True))
    weights, binary = item_weights(services_model)
    terms.append(LinearTerm("s", "s", kept(weights), binary, 0))
    groups.append(TermGroup("s", 0))
    return terms, groups
