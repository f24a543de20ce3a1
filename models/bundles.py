r"""Bundle scoring: which bundles of urban services to offer a resident, and why.

A resident's score for bundle :math:`b` mixes two signals (formula and rationale in
``docs/models.md``):

.. math::

    s(u, b) = z_u\big(\text{collab}(u, b)\big)
              + \text{mix} \cdot z_u\Big(\sum_{i} L_{b i}\; \text{affinity}(u, i)\Big)

* ``collab`` — a model fitted on the resident × bundle matrix (by default
  :class:`~bouquet.models.ease.CrossViewEASE`, which also reads the resident × service
  matrix and the bundle composition as side information);
* ``affinity`` — a model fitted on resident × service interactions (by default item kNN),
  aggregated over each bundle's services with :math:`L` = the bundle × service composition
  with rows divided by ``|b| ** aggregation_norm`` (0 = sum, 1 = mean, 0.5 = normalised sum);
* :math:`z_u` standardises each resident's row (zero mean, unit variance) so that ``mix`` means
  the same thing whatever the two models' score scales are.

Bundles a resident already holds are removed with ``recommend(..., exclude=holdings)``.

Everything is sparse matrices with integer ids, so the same code scores the Youshu benchmark
(users × book lists, users × books, list × book) and a city (residents × bundles, residents ×
services, bundle × service from the catalog). Mapping ids to names is the caller's job; pass
``service_names`` to :meth:`BundleScorer.explain` to get readable text.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import NotFittedError, Recommender, check_csr
from bouquet.models.ease import CrossViewEASE, _row_normalise
from bouquet.models.knn import ItemKNNRecommender, _rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reason:
    """Why a bundle was recommended, in a form both an API and a UI can use.

    Attributes
    ----------
    kind : {"services", "bundles", "popular"}
        ``services``: driven by services the resident already uses; ``bundles``: by bundles
        they hold ("residents who hold X also took this"); ``popular``: no personal signal
        dominates — "popular with residents like you".
    service_ids : list of int
        Top contributing services (always ones the resident actually used).
    bundle_ids : list of int
        Top contributing held bundles.
    text : str
        Human-readable sentence.
    """

    kind: str
    service_ids: list[int] = field(default_factory=list)
    bundle_ids: list[int] = field(default_factory=list)
    text: str = ""


class BundleScorer(Recommender):
    """Mix a resident–bundle model with service affinity aggregated over bundle composition.

    Parameters
    ----------
    bundle_model : Recommender, optional
        Template fitted on resident × bundle (cloned in ``fit``). If its ``fit`` accepts
        ``side_items``/``composition`` (like :class:`CrossViewEASE`), it receives them.
        Default: ``CrossViewEASE()``.
    item_model : Recommender, optional
        Template fitted on resident × service (cloned in ``fit``). Default:
        ``ItemKNNRecommender(K=200)``.
    mix : float
        Weight of the service-affinity term; 0 disables it (and skips fitting
        ``item_model``).
    aggregation_norm : float
        Exponent of the bundle-size normalisation of the composition (see module docstring).
    batch_size : int
        Users scored at once (bounds memory: the service scores of a batch are dense).

    Attributes
    ----------
    bundle_model_ : Recommender
        Fitted collaborative model.
    item_model_ : Recommender or None
        Fitted service model (None without side data or with ``mix=0``).
    aggregation_ : scipy.sparse.csr_matrix or None
        ``(n_bundles, n_services)`` normalised composition :math:`L`.
    n_items_, n_side_items_ : int
        Number of bundles and services.
    """

    def __init__(
        self,
        bundle_model: Recommender | None = None,
        item_model: Recommender | None = None,
        mix: float = 0.05,
        aggregation_norm: float = 0.5,
        batch_size: int = 1024,
    ) -> None:
        self.bundle_model = bundle_model
        self.item_model = item_model
        self.mix = mix
        self.aggregation_norm = aggregation_norm
        self.batch_size = batch_size

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        user_items: sp.csr_matrix,
        side_items: sp.csr_matrix | None = None,
        composition: sp.csr_matrix | None = None,
        **kwargs: Any,
    ) -> BundleScorer:
        """Fit both parts.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix
            Residents × bundles (interactions or holdings, as confidences).
        side_items : scipy.sparse.csr_matrix, optional
            Residents × services, same rows. Without it only the bundle signal is used.
        composition : scipy.sparse.csr_matrix, optional
            Bundles × services (1 where the bundle contains the service). Without it the
            affinity term is off and the bundle model gets no composition.
        """
        x = check_csr(user_items)
        u = None if side_items is None else check_csr(side_items, "side_items")
        c = None if composition is None else check_csr(composition, "composition")
        if u is not None and u.shape[0] != x.shape[0]:
            raise ValueError("side_items must have one row per row of user_items")
        if c is not None and c.shape[0] != x.shape[1]:
            raise ValueError("composition must have one row per bundle (column of user_items)")
        template = self.bundle_model if self.bundle_model is not None else CrossViewEASE()
        self.bundle_model_ = template.clone()
        side_kw = {}
        if _accepts(self.bundle_model_.fit, "side_items"):
            side_kw = {"side_items": u, "composition": c}
        self.bundle_model_.fit(x, **side_kw, **kwargs)

        self.item_model_ = None
        self.aggregation_ = None
        self.n_side_items_ = 0
        if u is not None and c is not None and self.mix > 0:
            if c.shape[1] != u.shape[1]:
                raise ValueError("composition and side_items disagree on the number of services")
            c = c.astype(np.float64)
            c.data[:] = 1.0
            self.aggregation_ = _row_normalise(c, self.aggregation_norm)
            template = self.item_model if self.item_model is not None else _default_item_model()
            self.item_model_ = template.clone().fit(u, **kwargs)
            self.n_side_items_ = u.shape[1]
        self.n_users_, self.n_items_ = x.shape
        return self

    @classmethod
    def from_parts(
        cls,
        bundle_model: Recommender,
        item_model: Recommender | None,
        composition: sp.csr_matrix | None,
        mix: float = 0.05,
        aggregation_norm: float = 0.5,
        batch_size: int = 1024,
    ) -> BundleScorer:
        """Assemble a fitted scorer from already-fitted parts, without refitting.

        Why: ``mix`` and ``aggregation_norm`` only act at scoring time, so tuning them on a
        validation split should not refit two models per grid point. The result is the
        same object ``fit`` would have produced with these parts (it saves and loads alike).

        Parameters
        ----------
        bundle_model : Recommender
            Fitted on residents × bundles.
        item_model : Recommender or None
            Fitted on residents × services (None: bundle signal only).
        composition : scipy.sparse.csr_matrix or None
            Bundles × services; required with ``item_model``.
        """
        if not bundle_model.is_fitted or (item_model is not None and not item_model.is_fitted):
            raise NotFittedError("from_parts needs fitted models")
        model = cls(
            bundle_model=bundle_model.clone(),
            item_model=None if item_model is None else item_model.clone(),
            mix=mix,
            aggregation_norm=aggregation_norm,
            batch_size=batch_size,
        )
        model.bundle_model_ = bundle_model
        model.item_model_ = None
        model.aggregation_ = None
        model.n_side_items_ = 0
        if item_model is not None and mix > 0:
            if composition is None:
                raise ValueError("an item model needs the bundle composition")
            c = check_csr(composition, "composition").astype(np.float64)
            c.data[:] = 1.0
            if c.shape != (bundle_model.n_items_, item_model.n_items_):
                raise ValueError(
                    f"composition must be ({bundle_model.n_items_}, {item_model.n_items_}), "
                    f"got {c.shape}"
                )
            model.aggregation_ = _row_normalise(c, aggregation_norm)
            model.item_model_ = item_model
            model.n_side_items_ = item_model.n_items_
        model.n_users_ = getattr(bundle_model, "n_users_", 0)
        model.n_items_ = bundle_model.n_items_
        return model

    # ------------------------------------------------------------------ scoring
    def _collab(self, ids: np.ndarray, rows: Any, side: Any) -> np.ndarray:
        kw = {}
        if _accepts(self.bundle_model_._score, "side_items") and side is not None:
            kw = {"side_items": side}
        return np.asarray(self.bundle_model_.score(ids, rows, **kw), dtype=np.float64)

    def _affinity(self, ids: np.ndarray, side: sp.csr_matrix) -> np.ndarray:
        model = self.item_model_
        sim = getattr(model, "similarity_", None)
        if sim is not None and sp.issparse(sim):
            # item kNN: stay sparse — (side @ S) @ L^T never materialises users x services
            return ((side @ sim) @ self.aggregation_.T).toarray().astype(np.float64)
        item_scores = np.asarray(model.score(ids, side), dtype=np.float64)
        return np.asarray(self.aggregation_ @ item_scores.T).T

    def _parts(self, ids: np.ndarray, rows: Any, side: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Row-standardised collaborative and affinity scores for one batch."""
        collab = _standardise(self._collab(ids, rows, side))
        aff = None
        if self.item_model_ is not None and self.mix > 0:
            if side is None:
                raise ValueError("this BundleScorer uses services: pass side_items")
            aff = _standardise(self._affinity(ids, side))
        return collab, aff

    def _score(
        self,
        ids: np.ndarray,
        user_items: sp.csr_matrix | None = None,
        side_items: sp.csr_matrix | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Mixed bundle scores, in batches of ``batch_size`` users.

        Parameters
        ----------
        ids : numpy.ndarray of int
            Residents (rows of the training matrices for models with per-user state).
        user_items : scipy.sparse.csr_matrix
            One row of bundle interactions per resident.
        side_items : scipy.sparse.csr_matrix, optional
            One row of service interactions per resident (needed if fitted with services).
        """
        rows = None if user_items is None else _rows(user_items, len(ids), self.n_items_)
        side = None
        if side_items is not None and self.n_side_items_:
            side = _rows(side_items, len(ids), self.n_side_items_)
        elif side_items is not None:
            side = check_csr(side_items, "side_items")
        out = np.empty((len(ids), self.n_items_), dtype=np.float64)
        for lo in range(0, len(ids), self.batch_size):
            sl = slice(lo, lo + self.batch_size)
            collab, aff = self._parts(
                ids[sl],
                None if rows is None else rows[sl],
                None if side is None else side[sl],
            )
            out[sl] = collab if aff is None else collab + self.mix * aff
        return out

    # ------------------------------------------------------------------ reasons
    def contributions(
        self,
        user_id: int,
        user_items_row: sp.csr_matrix,
        side_items_row: sp.csr_matrix | None,
        bundle_id: int,
    ) -> tuple[dict[int, float], dict[int, float]]:
        """Additive contributions to ``score(user, bundle)`` of held bundles and used services.

        Both parts are expressed on the scale of the final (standardised) score. Services get
        credit from the bundle model's side weights (if any) and from the affinity term; only
        services the resident actually used can appear.

        Returns
        -------
        bundles, services : dict
            ``{id: contribution}`` for held bundles and used services.
        """
        self._check_fitted()
        row = _rows(user_items_row, 1, self.n_items_)
        side = None
        if side_items_row is not None and self.n_side_items_:
            side = _rows(side_items_row, 1, self.n_side_items_)
        ids = np.array([user_id])
        bundles: dict[int, float] = {}
        services: dict[int, float] = {}
        collab_raw = self._collab(ids, row, side)
        sd_c = _row_std(collab_raw)[0]
        model = self.bundle_model_
        if sd_c > 0:
            try:
                held, contrib = model.explain(row, bundle_id)
                for j, v in zip(held.tolist(), contrib.tolist(), strict=True):
                    bundles[j] = bundles.get(j, 0.0) + v / sd_c
            except NotImplementedError:
                pass
            if side is not None and hasattr(model, "explain_side"):
                used, contrib = model.explain_side(side, bundle_id)
                for j, v in zip(used.tolist(), contrib.tolist(), strict=True):
                    services[j] = services.get(j, 0.0) + v / sd_c
        if self.item_model_ is not None and side is not None and side.nnz:
            sd_a = _row_std(self._affinity(ids, side))[0]
            lrow = self.aggregation_[bundle_id]
            if sd_a > 0 and lrow.nnz:
                try:
                    used, contrib = self.item_model_.explain(side, lrow.indices, lrow.data)
                    for j, v in zip(used.tolist(), contrib.tolist(), strict=True):
                        services[j] = services.get(j, 0.0) + self.mix * v / sd_a
                except NotImplementedError:
                    # no exact decomposition: credit the used services inside the bundle
                    inside = np.intersect1d(side.indices, lrow.indices)
                    for j in inside.tolist():
                        services[j] = services.get(j, 0.0) + self.mix / max(1, inside.size)
        return bundles, services

    def explain_bundle(
        self,
        user_id: int,
        user_items_row: sp.csr_matrix,
        side_items_row: sp.csr_matrix | None,
        bundle_id: int,
        n: int = 2,
        service_names: Any = None,
        bundle_names: Any = None,
    ) -> Reason:
        """The human-readable reason for recommending ``bundle_id`` to a resident.

        Rule: add up the positive contributions of used services and of held bundles; the
        larger side names its top ``n`` ids ("because you use X and Y" / "because you hold
        X"); with no positive personal contribution the reason is "popular with residents
        like you" (cold start, or a score driven by the population rather than the resident).

        Parameters
        ----------
        service_names, bundle_names : mapping or sequence, optional
            Id → display name; ids are shown when omitted.
        """
        bundles, services = self.contributions(user_id, user_items_row, side_items_row, bundle_id)
        pos_s = {k: v for k, v in services.items() if v > 0}
        pos_b = {k: v for k, v in bundles.items() if v > 0}
        total_s, total_b = sum(pos_s.values()), sum(pos_b.values())
        if total_s <= 0 and total_b <= 0:
            return Reason("popular", text="popular with residents like you")
        if total_s >= total_b:
            top = sorted(pos_s, key=lambda k: (-pos_s[k], k))[:n]
            names = [_name(service_names, k, "service") for k in top]
            return Reason("services", service_ids=top, text=f"because you use {_join(names)}")
        top = sorted(pos_b, key=lambda k: (-pos_b[k], k))[:n]
        names = [_name(bundle_names, k, "bundle") for k in top]
        return Reason("bundles", bundle_ids=top, text=f"because you hold {_join(names)}")


# ---------------------------------------------------------------------- helpers
def _default_item_model() -> Recommender:
    return ItemKNNRecommender(K=200, weighting="cosine")


def _accepts(func: Any, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _row_std(m: np.ndarray) -> np.ndarray:
    return np.asarray(m, dtype=np.float64).std(axis=1)


def _standardise(m: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance rows; constant rows become all zeros (no signal)."""
    m = np.asarray(m, dtype=np.float64)
    mean = m.mean(axis=1, keepdims=True)
    sd = m.std(axis=1, keepdims=True)
    return np.divide(m - mean, sd, out=np.zeros_like(m), where=sd > 0)


def _name(names: Any, key: int, kind: str) -> str:
    if names is None:
        return f"{kind} {key}"
    try:
        return str(names[key])
    except (KeyError, IndexError):
        return f"{kind} {key}"


def _join(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


__all__ = ["BundleScorer", "NotFittedError", "Reason"]
