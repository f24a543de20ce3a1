"""Everything a training run fits and compares, behind one small interface.

A *candidate* is fitted on a :class:`~bouquet.pipelines.dataset.Dataset` and scores its rows
for both targets — services and bundles — so evaluation, search and the champion's
re-evaluation treat every model alike. The recommenders themselves live in
:mod:`bouquet.models`; this module wires them to the two matrices.

A **deployable** candidate (:data:`DEPLOYABLE_KINDS`) turns into a
:class:`~bouquet.models.deployable.DeployableModel` — a factor model for ALS, a linear model
for EASE, item kNN and the cross-view bundle scorer — and is *evaluated through it*: the
scores judged on the hold-out are those publish and serving will compute. Baselines that
cannot be served (popularity, BPR) score directly.

The ALS candidate, :class:`ALSBundleModel`, is written here because the factor model needs
what no single recommender provides: ALS resident and service factors *plus* bundle vectors
in the same factor space, so serving can fold a resident's last few events in and score
bundles with one dot product:

1. ALS (:class:`bouquet.models.als.ALSRecommender`) on residents × services — whose
   confidences already include bundle-level events shared over their services;
2. learned bundle factors ``x_b`` by one ALS *item* half-step on residents × bundles with the
   resident factors fixed (the exact least squares ALS would solve for a new item column);
3. bundle scoring vectors ``v_b = cf_weight · x_b + affinity_weight · Σ_s L_bs y_s``, with
   ``L`` the composition normalised by ``|b| ** aggregation_norm`` (1 = mean of the member
   services' factors: a bundle is liked for what it contains).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.deployable import DeployableModel
from bouquet.models.factor import FactorModel
from bouquet.models.linear import LinearModel, bundle_scorer_terms, per_target_terms
from bouquet.pipelines.dataset import Dataset

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("services", "bundles")
#: Candidates that can become the champion (they have a serving form).
DEPLOYABLE_KINDS: tuple[str, ...] = ("als", "ease", "itemknn", "crossview")
#: Candidates evaluated for comparison only.
BASELINES: tuple[str, ...] = ("popularity", "popularity_neighbourhood", "popularity_segment",
                              "bpr")
#: Baselines that answer for residents without history (the cold-start fallbacks).
COLD_CAPABLE: tuple[str, ...] = ("popularity", "popularity_neighbourhood",
                                 "popularity_segment")
KIND_OF_TARGET = {"services": "s", "bundles": "b"}


class Candidate:
    """Fit on a dataset, then score rows of it for ``services`` and ``bundles``."""

    kind: str = ""

    @property
    def deployable(self) -> bool:
        return self.kind in DEPLOYABLE_KINDS

    def fit(self, data: Dataset, progress: bool = False) -> Candidate:
        raise NotImplementedError

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        """Scores of dataset ``rows``; a deployable candidate scores through its deployable
        model, so what is evaluated is what would be served."""
        return self.model_.score(np.asarray(rows), KIND_OF_TARGET[target])

    def scorer(self, target: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda rows: self.score(target, rows)

    def get_params(self) -> dict[str, Any]:
        return {}

    def to_deployable(self, data: Dataset, popular: tuple[np.ndarray, np.ndarray] | None = None,
                      meta: dict[str, Any] | None = None) -> DeployableModel:
        """The serving form of this candidate fitted on ``data``, with the popularity
        fallbacks ``popular`` = (services table, bundles table) and provenance ``meta``."""
        raise TypeError(f"{self.kind} is a baseline: it has no serving form")


def _common(data: Dataset, kind: str, params: dict[str, Any],
            popular: tuple[np.ndarray, np.ndarray] | None,
            meta: dict[str, Any] | None) -> dict[str, Any]:
    """The fields every deployable model takes from the dataset it was fitted on."""
    n_nb = 1 + len(data.neighbourhoods)
    services, bundles = popular if popular is not None else (
        np.zeros((n_nb, len(data.service_ids))), np.zeros((n_nb, len(data.bundle_ids))))
    # the fallbacks of a model that will be served: segment popularity and the counts
    # exploration samples from (a model fitted for evaluation only needs neither)
    segments = segment_tables(data) if popular is not None else {}
    return {
        **segments,
        "service_ids": list(data.service_ids), "bundle_ids": list(data.bundle_ids),
        "bundle_services": {b: list(s) for b, s in data.bundle_services.items()},
        "neighbourhoods": list(data.neighbourhoods), "rule": data.params,
        "popular_services": services, "popular_bundles": bundles,
        "resident_ids": data.resident_ids, "resident_neighbourhood": data.neighbourhood,
        "resident_services": data.services, "resident_bundles": data.bundles,
        "service_drivers": data.service_drivers, "bundle_drivers": data.bundle_drivers,
        "meta": {"model_kind": kind, "model_params": dict(params), **dict(meta or {})},
    }


# --- the factor model ------------------------------------------------------------------------


@dataclass
class ALSBundleModel(Candidate):
    """ALS on services, bundle factors by an item half-step, linear bundle scoring."""

    # Defaults for a city catalogue (tens of services, a few dozen bundles): few factors,
    # and a regularisation and confidence scale that keep the factors away from zero — with
    # λ=50, α=0.25 on a demo-city log the factors shrank to ~1e-11 and every resident got
    # the same ranking (docs/training.md).
    factors: int = 16
    regularization: float = 5.0
    alpha: float = 5.0
    iterations: int = 15
    cf_weight: float = 1.0
    affinity_weight: float = 0.25
    aggregation_norm: float = 1.0
    random_state: int = 0
    #: implicit's threads (0: all cores). Each row's solve is independent, so the factors do
    #: not depend on it; on a shared machine one thread can be several times faster.
    num_threads: int = 0
    kind: str = field(default="als", init=False)

    def get_params(self) -> dict[str, Any]:
        return {"factors": self.factors, "regularization": self.regularization,
                "alpha": self.alpha, "iterations": self.iterations,
                "cf_weight": self.cf_weight, "affinity_weight": self.affinity_weight,
                "aggregation_norm": self.aggregation_norm, "random_state": self.random_state,
                "num_threads": self.num_threads}

    def fit(self, data: Dataset, progress: bool = False) -> ALSBundleModel:
        from bouquet.models.als import ALSRecommender

        started = time.perf_counter()
        als = ALSRecommender(factors=self.factors, regularization=self.regularization,
                             alpha=self.alpha, iterations=self.iterations,
                             random_state=self.random_state, show_progress=progress,
                             num_threads=self.num_threads)
        als.fit(data.services)
        users = als.user_factors_
        service_factors = als.item_factors_
        learned = bundle_half_step(users, data.bundles, self.alpha, self.regularization)
        composition = normalised_composition(data.bundle_ids, _members(data),
                                             data.service_ids, self.aggregation_norm)
        self.bundle_factors_ = (self.cf_weight * learned + self.affinity_weight
                                * (composition @ service_factors)).astype(np.float32)
        self.user_factors_, self.service_factors_ = users, service_factors
        self.model_ = self.to_deployable(data)
        log.info("ALS fitted on %d residents × %d services in %.1f s", *data.services.shape,
                 time.perf_counter() - started)
        return self

    def to_deployable(self, data: Dataset, popular: tuple[np.ndarray, np.ndarray] | None = None,
                      meta: dict[str, Any] | None = None) -> FactorModel:
        provenance = {"bundle_scoring": {
            "formula": "u · (cf_weight · x_b + affinity_weight · "
                       "sum_{s in b} y_s / |b| ** aggregation_norm)",
            "cf_weight": self.cf_weight, "affinity_weight": self.affinity_weight,
            "aggregation_norm": self.aggregation_norm}, **dict(meta or {})}
        return FactorModel(**_common(data, self.kind, self.get_params(), popular, provenance),
                           service_factors=self.service_factors_,
                           bundle_factors=self.bundle_factors_,
                           resident_factors=self.user_factors_,
                           regularization=self.regularization, alpha=self.alpha)


def bundle_half_step(users: np.ndarray, bundles: sp.csr_matrix, alpha: float,
                     regularization: float) -> np.ndarray:
    """Bundle factors with the resident factors fixed: per bundle column the ALS normal
    equations ``(UᵀU + λI + Uᵀ(C_b − I)U) x_b = Uᵀ C_b p_b`` (confidences × alpha)."""
    from bouquet.models.foldin import FoldIn

    solver = FoldIn(users, regularization)
    by_bundle = sp.csc_matrix(bundles)
    out = np.zeros((bundles.shape[1], users.shape[1]), dtype=np.float32)
    for b in range(bundles.shape[1]):
        lo, hi = by_bundle.indptr[b], by_bundle.indptr[b + 1]
        if hi > lo:
            out[b] = solver.solve(by_bundle.indices[lo:hi], by_bundle.data[lo:hi] * alpha)
    return out


def normalised_composition(bundle_ids: tuple[str, ...], members: dict[str, list[str]],
                           service_ids: tuple[str, ...], norm: float) -> sp.csr_matrix:
    """Bundles × services, ``|b| ** -norm`` for each member (1 = mean, 0 = sum)."""
    index = {s: i for i, s in enumerate(service_ids)}
    rows, cols, vals = [], [], []
    for b, bundle in enumerate(bundle_ids):
        ids = [index[s] for s in members.get(bundle, ()) if s in index]
        rows += [b] * len(ids)
        cols += ids
        vals += [len(ids) ** -float(norm)] * len(ids)
    return sp.csr_matrix((np.array(vals, dtype=np.float32), (rows, cols)),
                         shape=(len(bundle_ids), len(service_ids)))


def _members(data: Dataset) -> dict[str, list[str]]:
    return {b: list(s) for b, s in data.bundle_services.items()}


# --- linear models ----------------------------------------------------------------------------


class PerTarget(Candidate):
    """One :mod:`bouquet.models` recommender per target, fitted on that target's matrix.

    EASE and item kNN are deployable as linear models; BPR and the popularity baselines are
    scored directly.
    """

    def __init__(self, kind: str, factory: Callable[[], Any], needs_rows: bool) -> None:
        self.kind = kind
        self.factory = factory
        self.needs_rows = needs_rows

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.factory().get_params().items()
                if isinstance(v, (int, float, str, bool)) or v is None}

    def fit(self, data: Dataset, progress: bool = False) -> PerTarget:
        self.data_ = data
        self.models_ = {}
        for target in TARGETS:
            self.models_[target] = self.factory().fit(_matrix(data, target),
                                                      **self._fit_kwargs(data))
        if self.deployable:
            self.model_ = self.to_deployable(data)
        return self

    def _fit_kwargs(self, data: Dataset) -> dict[str, Any]:
        return {}

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        if self.deployable:
            return super().score(target, rows)
        rows = np.asarray(rows)
        user_items = _matrix(self.data_, target)[rows] if self.needs_rows else None
        return np.asarray(self.models_[target].score(rows, user_items), dtype=np.float64)

    def to_deployable(self, data: Dataset, popular: tuple[np.ndarray, np.ndarray] | None = None,
                      meta: dict[str, Any] | None = None) -> LinearModel:
        if not self.deployable:
            return super().to_deployable(data, popular, meta)
        terms, groups = per_target_terms(self.models_["services"], self.models_["bundles"])
        return LinearModel(**_common(data, self.kind, self.get_params(), popular, meta),
                           terms=terms, groups=groups)


class NeighbourhoodPopularity(PerTarget):
    """Popularity within the resident's declared neighbourhood (serving's cold start)."""

    def _fit_kwargs(self, data: Dataset) -> dict[str, Any]:
        return {"groups": _labels(data.neighbourhoods, data.neighbourhood)}

    def score_groups(self, target: str, neighbourhood: np.ndarray,
                     segment: np.ndarray | None = None) -> np.ndarray:
        """Scores for residents known only by their neighbourhood code (-1 = unknown)."""
        labels = _labels(self.data_.neighbourhoods, neighbourhood)
        ids = np.full(len(labels), -1)
        return np.asarray(self.models_[target].score(ids, None, groups=labels))

    def popular_table(self, target: str) -> np.ndarray:
        """``(1 + N) × items``: city-wide row, then one row per catalog neighbourhood."""
        model = self.models_[target]
        codes = np.arange(-1, len(self.data_.neighbourhoods))
        table = self.score_groups(target, codes)
        table[0] = model.item_popularity_
        return table


def segment_tables(data: Dataset) -> dict[str, Any]:
    """The segment cold start and exploration counts of a model fitted on ``data``:
    per segment (neighbourhood × age band × household) the share of its residents with
    every service and bundle, pooled over segments by their attributes
    (:func:`~bouquet.models.popularity.additive_group_rates`: a segment of a few residents
    says little alone, its neighbourhood, age band and household say more), the
    recommendations shown and taken per bundle (city, then each segment), and how often
    each offer is used by those who have it."""
    out: dict[str, Any] = {"segments": list(data.segments)}
    for target in TARGETS:
        out[f"segment_popular_{target}"] = segment_rates(data, target)
    out["bundle_shown"], out["bundle_taken"] = data.bundle_shown, data.bundle_taken
    out["bundle_use_rate"] = data.bundle_use_rate
    out["service_use_rate"] = data.service_use_rate
    return out


def segment_rates(data: Dataset, target: str) -> np.ndarray:
    """``segments × items``: the share of each segment's residents with each item, pooled
    over segments by their attributes (what the segment cold start serves)."""
    from bouquet.core.profile import segment_levels
    from bouquet.models.popularity import additive_group_rates, group_counts

    counts, sizes = group_counts(_matrix(data, target), data.segment, len(data.segments))
    return additive_group_rates(counts, sizes, segment_levels(data.neighbourhoods))


class Popularity(PerTarget):
    def score_groups(self, target: str, neighbourhood: np.ndarray,
                     segment: np.ndarray | None = None) -> np.ndarray:
        return np.tile(self.models_[target].item_popularity_, (len(neighbourhood), 1))


class SegmentPopularity(NeighbourhoodPopularity):
    """What serving shows a consenting resident without a list of their own: the popular
    list of their segment (:func:`segment_rates`), and their neighbourhood's when their
    segment is not declared. Evaluated as a baseline so that a version without a champion
    serves segment lists only when they beat popularity on the hold-out."""

    def fit(self, data: Dataset, progress: bool = False) -> SegmentPopularity:
        super().fit(data, progress)
        self.rates_ = {target: segment_rates(data, target) for target in TARGETS}
        return self

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        return self._by_segment(target, super().score(target, rows), self.data_.segment[rows])

    def score_groups(self, target: str, neighbourhood: np.ndarray,
                     segment: np.ndarray | None = None) -> np.ndarray:
        scores = super().score_groups(target, neighbourhood)
        return scores if segment is None else self._by_segment(target, scores, segment)

    def _by_segment(self, target: str, scores: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """``scores`` with the rows of residents of a declared segment replaced by its
        rates (a row is ranked on its own, so the two scales need not agree)."""
        scores = np.array(scores, dtype=np.float64)
        known = np.asarray(segment) >= 0
        scores[known] = self.rates_[target][np.asarray(segment)[known]]
        return scores


class CrossView(Candidate):
    """``bouquet.models.bundles.BundleScorer`` (cross-view EASE + service kNN affinity) for
    bundles, its service kNN for services: the strongest item-based model."""

    kind = "crossview"

    def get_params(self) -> dict[str, Any]:
        from bouquet.models.bundles import BundleScorer

        return {k: v for k, v in BundleScorer().get_params().items()
                if isinstance(v, (int, float, str, bool))}

    def fit(self, data: Dataset, progress: bool = False) -> CrossView:
        from bouquet.models.bundles import BundleScorer
        from bouquet.models.knn import ItemKNNRecommender

        composition = normalised_composition(data.bundle_ids, _members(data), data.service_ids,
                                             0.0)
        self.scorer_ = BundleScorer().fit(data.bundles, side_items=data.services,
                                          composition=composition)
        # Services are scored by the scorer's own service model when it has one.
        self.services_model_ = self.scorer_.item_model_ or ItemKNNRecommender(
            K=200, weighting="cosine").fit(data.services)
        self.model_ = self.to_deployable(data)
        return self

    def to_deployable(self, data: Dataset, popular: tuple[np.ndarray, np.ndarray] | None = None,
                      meta: dict[str, Any] | None = None) -> LinearModel:
        terms, groups = bundle_scorer_terms(self.scorer_, self.services_model_)
        return LinearModel(**_common(data, self.kind, self.get_params(), popular, meta),
                           terms=terms, groups=groups)


def _matrix(data: Dataset, target: str) -> sp.csr_matrix:
    return data.services if target == "services" else data.bundles


def _labels(neighbourhoods: tuple[str, ...], codes: np.ndarray) -> list[str | None]:
    return [neighbourhoods[c] if c >= 0 else None for c in np.asarray(codes).tolist()]


# --- factory --------------------------------------------------------------------------------


def make_candidate(kind: str, params: dict[str, Any] | None = None) -> Candidate:
    """A fresh, unfitted candidate of ``kind`` (deployable model or baseline)."""
    params = dict(params or {})
    if kind == "als":
        return ALSBundleModel(**params)
    from bouquet import models as m

    if kind == "popularity":
        return Popularity(kind, lambda: m.PopularityRecommender(**params), needs_rows=False)
    if kind == "popularity_neighbourhood":
        return NeighbourhoodPopularity(
            kind, lambda: m.GroupPopularityRecommender(**params), needs_rows=False)
    if kind == "popularity_segment":
        return SegmentPopularity(
            kind, lambda: m.GroupPopularityRecommender(**params), needs_rows=False)
    if kind == "ease":
        return PerTarget(kind, lambda: m.EASERecommender(**{"l2": 50.0, **params}),
                         needs_rows=True)
    if kind == "itemknn":
        return PerTarget(kind, lambda: m.ItemKNNRecommender(**{"K": 50, **params}),
                         needs_rows=True)
    if kind == "bpr":
        return PerTarget(kind, lambda: m.BPRRecommender(
            **{"factors": 32, "iterations": 50, "num_threads": 0, **params}), needs_rows=False)
    if kind == "crossview":
        return CrossView()
    raise ValueError(f"unknown model kind {kind!r}; choose one of "
                     f"{', '.join(DEPLOYABLE_KINDS + BASELINES)}")
