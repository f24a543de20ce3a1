"""Recommendation models behind one small interface (see ``docs/models.md``).

Every model follows the scikit-learn estimator contract plus ``score``/``recommend`` and saves
to a single pickle-free ``.npz`` file::

    from bouquet.models import ALSRecommender, load_model

    model = ALSRecommender(factors=64).fit(resident_services)
    ids, scores = model.recommend(resident_ids, exclude=holdings_rows, n=10)
    model.save("als.npz")
    same = load_model("als.npz")

Trained models are served through one contract, :class:`DeployableModel` (factor and linear
families; see :mod:`bouquet.models.deployable`).

Exports are resolved lazily (PEP 562): importing a light submodule such as
``bouquet.models.factor`` or ``bouquet.models.foldin`` must not pull in the training
libraries (implicit, threadpoolctl) that serving does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfidenceRule": "confidence",
    "DeployableModel": "deployable",
    "FactorModel": "factor",
    "LinearModel": "linear",
    "load_model_dir": "deployable",
    "ALSRecommender": "als",
    "BPRRecommender": "bpr",
    "BundleScorer": "bundles",
    "Reason": "bundles",
    "CrossViewEASE": "ease",
    "EASERecommender": "ease",
    "GroupPopularityRecommender": "popularity",
    "PopularityRecommender": "popularity",
    "ItemKNNRecommender": "knn",
    "NotFittedError": "base",
    "Recommender": "base",
    "load_model": "base",
    "registered_models": "base",
    "als_gram": "foldin",
    "fold_in": "foldin",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bouquet.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bouquet.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
