"""Bouquet's model as an MLflow Model (a ``pyfunc`` flavour), logged by ``bouquet train``.

MLflow logs this file as the model's code ("models from code": nothing is pickled). The
Bouquet artifact directory travels with it as the artifact ``bouquet_model``, so
``mlflow.pyfunc.load_model("models:/bouquet-bundles@champion")`` answers with the model's
own ranking — a data scientist can score residents in a notebook, and the MLflow UI shows
the model with its signature and input example.

``predict`` ranks bundles by the model alone (a resident the model never saw gets the
city-wide popular list). It does not apply serving's rules — holdings, zones, eligibility,
consent, dismissed bundles, re-ranking by recent events — which live in the API, and
serving never loads a model from MLflow: it reads the published keyspace in Redis.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from bouquet.models.base import top_n
from bouquet.models.deployable import load_model_dir

#: Name of the MLflow artifact holding Bouquet's model directory.
ARTIFACT = "bouquet_model"
DEFAULT_K = 10


class BouquetRecommender(PythonModel):
    """``predict(DataFrame[resident_id, k?]) -> DataFrame[resident_id, rank, bundle_id,
    score]``."""

    def load_context(self, context: Any) -> None:
        self.model = load_model_dir(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        model = self.model
        ks = model_input["k"] if "k" in model_input else pd.Series(DEFAULT_K,
                                                                   index=model_input.index)
        city = model.popular_bundles[0].astype(np.float64)
        out = []
        for resident, k in zip(model_input["resident_id"], ks, strict=True):
            row = model.resident_row(str(resident))
            scores = city[None, :] if row is None else model.score(np.array([row]), "b")
            ids, values = top_n(scores, int(k) if k == k else DEFAULT_K)
            for rank, (item, value) in enumerate(zip(ids[0], values[0], strict=True), 1):
                if item >= 0:
                    out.append((str(resident), rank, model.bundle_ids[item], float(value)))
        return pd.DataFrame(out, columns=["resident_id", "rank", "bundle_id", "score"])


mlflow.models.set_model(BouquetRecommender())
