"""Every deployable family through the product: trained by ``bouquet train`` on a small
simulated city, registered in MLflow, published to Redis, served by the API with the fold-in
of what the resident just did."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import anyio
import numpy as np
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings
from bouquet.models.cadence import cadence_weights, weigh
from bouquet.models.factor import FactorModel
from bouquet.models.linear import LinearModel
from bouquet.pipelines.publish import Publisher, load_registered
from bouquet.pipelines.train import TrainOptions, train
from tests.serving.support import client_for, push_recent, set_profile

pytestmark = pytest.mark.slow
CATALOG = load_catalog()
FAMILY = {"als": FactorModel, "ease": LinearModel, "crossview": LinearModel}


@pytest.fixture(scope="module")
def city_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bouquet.simulation.runner import simulate

    state = tmp_path_factory.mktemp("families-city")
    settings = Settings(env="test", state_dir=state)
    simulate(settings, residents=1500, weeks=8, seed=11, end=date(2025, 6, 2), progress=False,
             save_residents=False)
    return settings.event_log_path


@pytest.mark.parametrize("kind", sorted(FAMILY))
def test_a_family_is_trained_registered_published_and_folded_in(make_settings, city_log,
                                                                 tmp_path, kind) -> None:
    settings: Settings = make_settings(event_log_dir=city_log, mlflow_tracking_uri=None,
                                       state_dir=tmp_path / "state")
    report = train(settings, TrainOptions(candidates=(kind,), baselines=(), force=True,
                                          progress=False, refit=False))
    assert report.model == kind and report.decision.promote
    model, version, _ = load_registered(settings)
    assert isinstance(model, FAMILY[kind]) and model.meta["model_kind"] == kind
    published = Publisher(settings, neighbourhoods=CATALOG.neighbourhood_ids).publish(
        model, model_version=version)
    assert published.residents == model.n_residents

    rid = str(model.resident_ids[3])
    row = model.resident_row(rid)
    set_profile(settings, rid, consent="1")
    service = CATALOG.service_ids[5]
    push_recent(settings, rid, ("use", service), ("use", service))

    async def ask(rerank: bool) -> dict:
        async with client_for(settings) as client:
            answer = await client.get(f"/v1/residents/{rid}/bundles",
                                      params={"k": 50, "rerank": str(rerank).lower()})
            return answer.json()

    plain, folded = anyio.run(ask, False), anyio.run(ask, True)
    assert plain["personalised"] and folded["personalised"] and folded["reranked"]
    # the answer's scores are the precomputed ones plus the fold-in of the recent events,
    # weighed by each bundle's cadence weight (its services' use rate)
    precomputed = model.score(np.array([row]), "b")[0]
    strengths = model.strengths(
        [type("E", (), {"type": "use", "service_id": service, "bundle_id": None,
                        "ts": time.time()})()] * 2, time.time())
    boost = model.recent_scores(strengths, "b")
    weights = cadence_weights(model.bundle_use_rate, settings.serving_cadence_power)
    served_folded = weigh(precomputed + boost, weights)
    served_plain = weigh(precomputed, weights)
    for item in folded["bundles"]:
        if item["source"] != "model":
            continue
        b = model.bundle_index[item["bundle_id"]]
        assert item["score"] == pytest.approx(served_folded[b], rel=1e-3, abs=1e-4)
    for item in plain["bundles"]:
        if item["source"] == "model":
            b = model.bundle_index[item["bundle_id"]]
            assert item["score"] == pytest.approx(served_plain[b], rel=1e-3, abs=1e-4)
