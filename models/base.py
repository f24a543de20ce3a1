"""The one recommender interface every Bouquet model implements.

Why a base class of our own rather than implicit's: implicit returns ``None`` from ``fit``, keeps
learned state without trailing underscores and pickles nothing but also saves only factors. The
training pipeline, MLflow and serving need one contract instead (scikit-learn's estimator
contract plus a recommender's ``score``/``recommend``), so each model file is a thin wrapper and
everything shared — masking, top-N selection, the not-fitted check, parameter introspection and
pickle-free persistence — lives here once.

Conventions (all models)
------------------------
* Rows are users (residents), columns are items (services, or bundles for a bundle model).
* ``user_items`` passed to :meth:`Recommender.score` / :meth:`Recommender.recommend` holds **one
  row per requested user**, in the order of ``user_ids`` (implicit >= 0.5 convention); models
  that only need learned user state (factor models) accept ``None``.
* Learned attributes end with ``_``; ``__init__`` only stores hyper-parameters.
* ``save(path)`` writes a single ``.npz`` file: arrays (dense, or CSR as four arrays) plus one
  JSON document (class, hyper-parameters, scalars) stored as a unicode array under
  ``__meta__``. Loading uses ``allow_pickle=False``, so an artifact never executes code and
  needs nothing from the training process.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.base import clone as sklearn_clone
from sklearn.exceptions import NotFittedError as _SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

log = logging.getLogger(__name__)

#: Version of the on-disk layout written by :meth:`Recommender.save`.
FORMAT_VERSION = 1

_REGISTRY: dict[str, type[Recommender]] = {}


#: Raised when a model is used before :meth:`Recommender.fit` — scikit-learn's own (a
#: ``ValueError`` and an ``AttributeError``), so callers catching sklearn's catch ours.
NotFittedError = _SklearnNotFittedError


def check_csr(matrix: Any, name: str = "user_items") -> sp.csr_matrix:
    """Return ``matrix`` as a canonical CSR matrix (sorted indices, duplicates summed).

    Models index ``.indices``/``.data`` directly, so a COO or non-canonical input would give
    silently wrong results rather than an error; converting once here avoids that.
    """
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    out = sp.csr_matrix(matrix)
    if not out.has_canonical_format:
        out = out.copy()
        out.sum_duplicates()
    return out


def as_user_ids(user_ids: Any) -> tuple[np.ndarray, bool]:
    """Normalise ``user_ids`` to a 1-D int64 array; also say whether a scalar was given."""
    scalar = np.isscalar(user_ids)
    ids = np.atleast_1d(np.asarray(user_ids, dtype=np.int64))
    if ids.ndim != 1:
        raise ValueError("user_ids must be an int or a 1-D array of ints")
    return ids, scalar


class Recommender(BaseEstimator, ABC):
    """Abstract recommender with the scikit-learn estimator contract.

    ``get_params``, ``set_params``, ``repr`` and cloning come from scikit-learn's
    ``BaseEstimator`` (hyper-parameters are ``__init__``'s arguments, stored unchanged);
    subclasses implement :meth:`fit` and :meth:`_score`; :meth:`recommend`, :meth:`save` and
    :meth:`load` are shared. Subclasses are registered by class name so that :meth:`load`
    (or :func:`bouquet.models.load_model`) can rebuild any of them from a file.
    """

    #: Attribute whose presence means "fitted"; every ``fit`` sets it.
    _fitted_attr: ClassVar[str] = "n_items_"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def clone(self) -> Recommender:
        """A new unfitted model with the same hyper-parameters (sub-models cloned too)."""
        return sklearn_clone(self)

    # ------------------------------------------------------------------ fitted state
    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` (or :meth:`load`) has set the learned attributes."""
        return hasattr(self, self._fitted_attr)

    def _check_fitted(self) -> None:
        check_is_fitted(self, self._fitted_attr,
                        msg=f"This {type(self).__name__} instance is not fitted yet; call "
                            "fit() first or load a saved model.")

    def _learned_attributes(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    # ------------------------------------------------------------------ API
    @abstractmethod
    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> Recommender:
        """Learn from a users × items confidence matrix.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix
            Users × items, non-zero entries are confidences (e.g. weighted event counts).
            Items a user never touched are absent, not zero-valued entries.
        **kwargs
            Model-specific extra inputs (side information, group labels, ``show_progress``).

        Returns
        -------
        self
            The fitted model, so calls can be chained (``Model(...).fit(X).recommend(...)``).
        """

    def score(
        self, user_ids: Any, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Dense scores of the given users for every item.

        Parameters
        ----------
        user_ids : int or array-like of int
            Users to score (row indices of the training matrix for models with per-user
            state).
        user_items : scipy.sparse.csr_matrix, optional
            One row per user in ``user_ids`` with that user's interactions. Required by
            item-based models (kNN, EASE); ignored by models that use learned user state.

        Returns
        -------
        numpy.ndarray
            ``(len(user_ids), n_items)`` float array (1-D when ``user_ids`` is a scalar).
            Higher is better; scores are comparable within a row, not across models.
        """
        self._check_fitted()
        ids, scalar = as_user_ids(user_ids)
        out = self._score(ids, user_items, **kwargs)
        return out[0] if scalar else out

    @abstractmethod
    def _score(
        self, ids: np.ndarray, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """What each model implements: :meth:`score` for a 1-D array of user ids, as a 2-D
        array. :meth:`score` has already checked the model is fitted and will drop the
        first axis for a scalar id, so every model shares one contract."""

    def recommend(
        self,
        user_ids: Any,
        user_items: sp.csr_matrix | None = None,
        n: int = 10,
        exclude: sp.csr_matrix | None = None,
        filter_items: Any = None,
        **score_kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items per user from :meth:`score`, after masking.

        Implemented once here so that every model masks and breaks ties identically: masked
        items get ``-inf``, candidates are found with ``argpartition`` (O(items)) and only the
        top ``n`` are sorted, by descending score then ascending item id (deterministic).

        Parameters
        ----------
        user_ids : int or array-like of int
            Users to recommend for.
        user_items : scipy.sparse.csr_matrix, optional
            One row per user, passed to :meth:`score`.
        n : int
            Number of items per user (capped at the number of items).
        exclude : scipy.sparse.csr_matrix, optional
            One row per user; every stored entry (e.g. items the user already holds) is never
            recommended to that user. ``None`` excludes nothing — pass ``user_items`` itself to
            get implicit's ``filter_already_liked_items`` behaviour.
        filter_items : array-like of int, optional
            Item ids never recommended to anyone in this call (unavailable in a zone, retired).
        **score_kwargs
            Passed through to :meth:`score` (side information, group labels…).

        Returns
        -------
        ids : numpy.ndarray
            ``(len(user_ids), n)`` int64 item ids, best first. If fewer than ``n`` items are
            left after masking, trailing entries are ``-1``.
        scores : numpy.ndarray
            Matching float64 scores (``-inf`` for the ``-1`` padding).
        """
        self._check_fitted()
        ids, scalar = as_user_ids(user_ids)
        scores = np.array(self.score(ids, user_items, **score_kwargs), dtype=np.float64)
        scores = scores.reshape(len(ids), -1)
        n_items = scores.shape[1]
        if exclude is not None:
            exclude = check_csr(exclude, "exclude")
            if exclude.shape != scores.shape:
                raise ValueError(
                    f"exclude must have one row per user and {n_items} columns, got {exclude.shape}"
                )
            rows, cols = exclude.nonzero()
            scores[rows, cols] = -np.inf
        if filter_items is not None:
            scores[:, np.asarray(filter_items, dtype=np.int64)] = -np.inf
        top_ids, top_scores = top_n(scores, n)
        if scalar:
            return top_ids[0], top_scores[0]
        return top_ids, top_scores

    def explain(
        self, user_items_row: sp.csr_matrix, item_ids: Any, weights: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """How much each item the user interacted with contributes to a score.

        Used for human-readable reasons ("because you use X and Y"). Only models whose score
        is a sum over the user's items can answer exactly; others raise
        ``NotImplementedError``.

        Parameters
        ----------
        user_items_row : scipy.sparse.csr_matrix
            ``(1, n_items)``: the user's interactions.
        item_ids : int or array-like of int
            Item(s) whose score is explained.
        weights : array-like of float, optional
            Explain ``sum_k weights[k] * score(item_ids[k])`` (default: plain sum), e.g. a
            bundle's score as the weighted sum of its services' scores.

        Returns
        -------
        interacted : numpy.ndarray
            Ids of the user's items (the row's non-zero columns).
        contributions : numpy.ndarray
            Contribution of each of them (same order).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot explain its scores")

    # ------------------------------------------------------------------ persistence
    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, arrays) describing this model; recursive for sub-models."""
        meta: dict[str, Any] = {"class": type(self).__name__, "params": {}, "attrs": {}}
        arrays: dict[str, np.ndarray] = {}
        for name, value in self.get_params(deep=False).items():
            if isinstance(value, Recommender):
                # A hyper-parameter sub-model is a template: only its class and parameters.
                sub_meta, _ = value._state()
                sub_meta["attrs"] = {}
                meta["params"][name] = {"__recommender__": sub_meta}
            else:
                meta["params"][name] = _jsonable(value, f"hyper-parameter {name}")
        for name, value in self._learned_attributes().items():
            if isinstance(value, Recommender):
                sub_meta, sub_arrays = value._state()
                meta["attrs"][name] = {"__recommender__": sub_meta}
                arrays.update({f"{name}/{k}": v for k, v in sub_arrays.items()})
            elif sp.issparse(value):
                csr = sp.csr_matrix(value)
                meta["attrs"][name] = {"__csr__": list(csr.shape)}
                arrays[f"{name}.data"] = csr.data
                arrays[f"{name}.indices"] = csr.indices
                arrays[f"{name}.indptr"] = csr.indptr
            elif isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"cannot save object array {name} without pickle")
                meta["attrs"][name] = {"__array__": True}
                arrays[name] = value
            else:
                meta["attrs"][name] = _jsonable(value, f"attribute {name}")
        return meta, arrays

    @classmethod
    def _from_state(
        cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str = ""
    ) -> Recommender:
        klass = _REGISTRY.get(meta["class"]) or _import_model_class(meta["class"])
        if klass is None:
            raise ValueError(f"unknown model class {meta['class']!r} in saved file")
        params = {}
        for name, value in meta["params"].items():
            if isinstance(value, dict) and "__recommender__" in value:
                params[name] = cls._from_state(value["__recommender__"], {}, "")
            else:
                params[name] = value
        model = klass(**params)
        for name, value in meta["attrs"].items():
            if isinstance(value, dict) and "__recommender__" in value:
                sub = cls._from_state(value["__recommender__"], arrays, f"{prefix}{name}/")
                setattr(model, name, sub)
            elif isinstance(value, dict) and "__csr__" in value:
                p = f"{prefix}{name}"
                setattr(
                    model,
                    name,
                    sp.csr_matrix(
                        (arrays[f"{p}.data"], arrays[f"{p}.indices"], arrays[f"{p}.indptr"]),
                        shape=tuple(value["__csr__"]),
                    ),
                )
            elif isinstance(value, dict) and "__array__" in value:
                setattr(model, name, arrays[f"{prefix}{name}"])
            else:
                setattr(model, name, value)
        model._after_load()
        return model

    def _after_load(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op
        """Hook to rebuild caches (not saved) after :meth:`load`."""

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one ``.npz`` file (no pickle).

        Parameters
        ----------
        path : str or pathlib.Path
            Target file; ``.npz`` is appended if missing (as numpy would do anyway).

        Returns
        -------
        pathlib.Path
            The file actually written.
        """
        self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta, arrays = self._state()
        meta["format_version"] = FORMAT_VERSION
        doc = json.dumps(meta, sort_keys=True)
        np.savez(path, __meta__=np.array(doc), **arrays)
        log.info("saved %s to %s", type(self).__name__, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Rebuild a model saved with :meth:`save`.

        Called on the base class it returns whatever class the file holds; called on a
        subclass it also checks the file holds that class (or a subclass of it).
        """
        path = Path(path)
        if not path.exists() and path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"{path}: format version {meta.get('format_version')}, "
                    f"expected {FORMAT_VERSION}"
                )
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
        model = cls._from_state(meta, arrays)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def _jsonable(value: Any, what: str) -> Any:
    """Convert numpy scalars to Python ones and refuse anything JSON cannot carry."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value)
    except TypeError as exc:
        raise TypeError(f"{what} of type {type(value).__name__} is not JSON-serialisable") from exc
    return value


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``n`` of a dense score matrix, ties broken by ascending column id.

    ``-inf`` entries are treated as unavailable and reported as id ``-1``.

    Parameters
    ----------
    scores : numpy.ndarray
        ``(users, items)`` float matrix.
    n : int
        How many to keep per row (capped at the number of columns).

    Returns
    -------
    ids, scores : numpy.ndarray
        ``(users, n)`` each.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    n_rows, n_items = scores.shape
    n = max(0, min(int(n), n_items))
    if n == 0:
        return np.empty((n_rows, 0), np.int64), np.empty((n_rows, 0), np.float64)
    if n < n_items:
        # argpartition does not break ties by id, so widen the candidate set to every item
        # tied with the n-th best score before the final exact sort.
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        kth = np.take_along_axis(scores, part, 1).min(axis=1, keepdims=True)
        cand_mask = scores >= kth
        ids = np.empty((n_rows, n), np.int64)
        vals = np.empty((n_rows, n), np.float64)
        counts = cand_mask.sum(axis=1)
        simple = counts == n
        if simple.any():
            p = part[simple]
            s = np.take_along_axis(scores[simple], p, 1)
            order = np.lexsort((p, -s), axis=1)
            ids[simple] = np.take_along_axis(p, order, 1)
            vals[simple] = np.take_along_axis(s, order, 1)
        for r in np.flatnonzero(~simple):
            c = np.flatnonzero(cand_mask[r])
            s = scores[r, c]
            order = np.lexsort((c, -s))[:n]
            ids[r] = c[order]
            vals[r] = s[order]
    else:
        cols = np.broadcast_to(np.arange(n_items), scores.shape)
        order = np.lexsort((cols, -scores), axis=1)
        ids = order.astype(np.int64)
        vals = np.take_along_axis(scores, order, 1)
    unavailable = ~np.isfinite(vals) & (vals < 0)
    ids[unavailable] = -1
    return ids, vals


def explain_targets(item_ids: Any, weights: Any) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the ``item_ids``/``weights`` arguments of :meth:`Recommender.explain`."""
    targets = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
    w = np.ones(targets.size) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != targets.shape:
        raise ValueError("weights must have one entry per item id")
    return targets, w


#: Modules holding the built-in models: imported on demand by :meth:`Recommender.load`, so
#: loading never needs the caller to have imported the right module first.
_MODEL_MODULES = ("als", "bpr", "knn", "ease", "popularity", "bundles")


def _import_model_class(name: str) -> type[Recommender] | None:
    import importlib

    for module in _MODEL_MODULES:
        if name in _REGISTRY:
            break
        try:
            importlib.import_module(f"bouquet.models.{module}")
        except ImportError:  # e.g. a serving process that blocks implicit: skip that module
            log.debug("could not import bouquet.models.%s", module)
    return _REGISTRY.get(name)


def registered_models() -> dict[str, type[Recommender]]:
    """Concrete model classes known to :meth:`Recommender.load`, by class name."""
    return dict(_REGISTRY)


def load_model(path: str | Path) -> Recommender:
    """Load any Bouquet model saved with :meth:`Recommender.save`."""
    return Recommender.load(path)
