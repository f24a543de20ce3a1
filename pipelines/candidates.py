"""Everything a training run fits and compares, behind one small interface.

A *candidate* is fitted on a :class:`~bouquet.pipelines.dataset.Dataset` and scores its rows
for both targets — services and bundles — so evaluation, search and the champion's
re-evaluation treat the main model and every baseline alike. The recommenders themselves
live in :mod:`bouquet.models` (ALS, BPR, item kNN, EASE, popularity, the cross-view bundle
scorer); this module only wires them to the two matrices.

The main model, :class:`ALSBundleModel` (kind ``als``), is written here because the
deployable artifact needs something ``bouquet.models`` does not provide as one class: ALS
resident and service factors *plus* bundle vectors in the same factor space, so serving can
fold a resident's last few events in and score bundles with one dot product:

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

from bouquet.pipelines.dataset import Dataset

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("services", "bundles")
MAIN_KINDS: tuple[str, ...] = ("als",)
BASELINES: tuple[str, ...] = ("popularity", "popularity_neighbourhood", "ease", "itemknn", "bpr",
                              "crossview")
#: Baselines that answer for residents without history (the cold-start fallbacks).
COLD_CAPABLE: tuple[str, ...] = ("popularity", "popularity_neighbourhood")


class Candidate:
    """Fit on a dataset, then score rows of it for ``services`` and ``bundles``."""

    kind: str = ""

    def fit(self, data: Dataset, progress: bool = False) -> Candidate:
        raise NotImplementedError

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def scorer(self, target: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda rows: self.score(target, rows)

    def get_params(self) -> dict[str, Any]:
        return {}


# --- the main model ------------------------------------------------------------------------


@dataclass
class ALSBundleModel(Candidate):
    """ALS on services, bundle factors by an item half-step, linear bundle scoring."""

    # Defaults tuned on the demo city (56 services, 24 bundles; docs/training.md): few
    # factors and strong regularisation, because residents touch a handful of services.
    factors: int = 16
    regularization: float = 50.0
    alpha: float = 0.25
    iterations: int = 15
    cf_weight: float = 1.0
    affinity_weight: float = 0.25
    aggregation_norm: float = 1.0
    random_state: int = 0
    kind: str = field(default="als", init=False)

    def get_params(self) -> dict[str, Any]:
        return {"factors": self.factors, "regularization": self.regularization,
                "alpha": self.alpha, "iterations": self.iterations,
                "cf_weight": self.cf_weight, "affinity_weight": self.affinity_weight,
                "aggregation_norm": self.aggregation_norm, "random_state": self.random_state}

    def fit(self, data: Dataset, progress: bool = False) -> ALSBundleModel:
        from bouquet.models.als import ALSRecommender

        started = time.perf_counter()
        self.als_ = ALSRecommender(factors=self.factors, regularization=self.regularization,
                                   alpha=self.alpha, iterations=self.iterations,
                                   random_state=self.random_state, show_progress=progress)
        self.als_.fit(data.services)
        users = self.als_.user_factors_
        self.service_factors_ = self.als_.item_factors_
        self.bundle_cf_factors_ = bundle_half_step(users, data.bundles, self.alpha,
                                                   self.regularization)
        self.composition_ = normalised_composition(data.bundle_ids, _members(data),
                                                   data.service_ids, self.aggregation_norm)
        self.bundle_factors_ = (self.cf_weight * self.bundle_cf_factors_
                                + self.affinity_weight
                                * (self.composition_ @ self.service_factors_)).astype(np.float32)
        self.user_factors_ = users
        log.info("ALS fitted on %d residents × %d services in %.1f s", *data.services.shape,
                 time.perf_counter() - started)
        return self

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        users = self.user_factors_[rows]
        items = self.service_factors_ if target == "services" else self.bundle_factors_
        return users @ items.T

    def to_artifact(self, data: Dataset, popularity: tuple[np.ndarray, np.ndarray],
                    extra_meta: dict[str, Any]) -> Any:
        """The deployable artifact of this model fitted on ``data``."""
        from bouquet.models.artifact import Artifact

        popular_services, popular_bundles = popularity
        return Artifact.build(
            resident_ids=data.resident_ids, resident_factors=self.user_factors_,
            service_factors=self.service_factors_, bundle_cf_factors=self.bundle_cf_factors_,
            bundle_factors=self.bundle_factors_,
            service_ids=data.service_ids, bundle_ids=data.bundle_ids,
            bundle_services=_members(data), neighbourhoods=data.neighbourhoods,
            popular_services=popular_services, popular_bundles=popular_bundles,
            resident_neighbourhood=data.neighbourhood,
            cf_weight=self.cf_weight, affinity_weight=self.affinity_weight,
            aggregation_norm=self.aggregation_norm, regularization=self.regularization,
            alpha=self.alpha, dataset_params=data.params.to_dict(), model_kind=self.kind,
            model_params=self.get_params(), extra_meta=extra_meta)


def bundle_half_step(users: np.ndarray, bundles: sp.csr_matrix, alpha: float,
                     regularization: float) -> np.ndarray:
    """Bundle factors with the resident factors fixed: per bundle column the ALS normal
    equations ``(UᵀU + λI + Uᵀ(C_b − I)U) x_b = Uᵀ C_b p_b`` (confidences × alpha)."""
    from bouquet.models.foldin import als_gram, fold_in

    gram = als_gram(users, regularization)
    by_bundle = sp.csc_matrix(bundles)
    out = np.zeros((bundles.shape[1], users.shape[1]), dtype=np.float32)
    for b in range(bundles.shape[1]):
        lo, hi = by_bundle.indptr[b], by_bundle.indptr[b + 1]
        if hi > lo:
            out[b] = fold_in(by_bundle.indices[lo:hi], by_bundle.data[lo:hi] * alpha, users,
                             gram)
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


# --- baselines ------------------------------------------------------------------------------


class PerTarget(Candidate):
    """One :mod:`bouquet.models` recommender per target, fitted on that target's matrix."""

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
        return self

    def _fit_kwargs(self, data: Dataset) -> dict[str, Any]:
        return {}

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        user_items = _matrix(self.data_, target)[rows] if self.needs_rows else None
        return np.asarray(self.models_[target].score(rows, user_items), dtype=np.float64)


class NeighbourhoodPopularity(PerTarget):
    """Popularity within the resident's declared neighbourhood (serving's cold start)."""

    def _fit_kwargs(self, data: Dataset) -> dict[str, Any]:
        return {"groups": _labels(data.neighbourhoods, data.neighbourhood)}

    def score_groups(self, target: str, neighbourhood: np.ndarray) -> np.ndarray:
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


class Popularity(PerTarget):
    def score_groups(self, target: str, neighbourhood: np.ndarray) -> np.ndarray:
        return np.tile(self.models_[target].item_popularity_, (len(neighbourhood), 1))


class CrossView(Candidate):
    """``bouquet.models.bundles.BundleScorer`` (cross-view EASE + service kNN affinity) for
    bundles, its service kNN for services: the strongest item-based baseline."""

    kind = "crossview"

    def get_params(self) -> dict[str, Any]:
        from bouquet.models.bundles import BundleScorer

        return {k: v for k, v in BundleScorer().get_params().items()
                if isinstance(v, (int, float, str, bool))}

    def fit(self, data: Dataset, progress: bool = False) -> CrossView:
        from bouquet.models.bundles import BundleScorer

        self.data_ = data
        composition = (sp.csr_matrix(_composition_01(data)))
        self.model_ = BundleScorer().fit(data.bundles, side_items=data.services,
                                         composition=composition)
        return self

    def score(self, target: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        side = self.data_.services[rows]
        if target == "services":
            return np.asarray(self.model_.item_model_.score(rows, side), dtype=np.float64)
        return self.model_.score(rows, self.data_.bundles[rows], side_items=side)


def _composition_01(data: Dataset) -> sp.csr_matrix:
    return normalised_composition(data.bundle_ids, _members(data), data.service_ids, 0.0)


def _matrix(data: Dataset, target: str) -> sp.csr_matrix:
    return data.services if target == "services" else data.bundles


def _labels(neighbourhoods: tuple[str, ...], codes: np.ndarray) -> list[str | None]:
    return [neighbourhoods[c] if c >= 0 else None for c in np.asarray(codes).tolist()]


# --- factory --------------------------------------------------------------------------------


def make_candidate(kind: str, params: dict[str, Any] | None = None) -> Candidate:
    """A fresh, unfitted candidate of ``kind`` (main model or baseline)."""
    params = dict(params or {})
    if kind == "als":
        return ALSBundleModel(**params)
    from bouquet import models as m

    if kind == "popularity":
        return Popularity(kind, lambda: m.PopularityRecommender(**params), needs_rows=False)
    if kind == "popularity_neighbourhood":
        return NeighbourhoodPopularity(
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
                     f"{', '.join(MAIN_KINDS + BASELINES)}")
