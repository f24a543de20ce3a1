"""The real path: a model artifact in an MLflow registry (alias champion) → `bouquet publish`
→ the API serves it, and the serving fold-in is the artifact's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import numpy as np
import pytest
from mlflow import MlflowClient

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.profile import segment_id
from bouquet.models.confidence import Strengths
from bouquet.models.factor import FactorModel
from bouquet.pipelines.publish import load_registered
from tests.serving.support import (
    client_for,
    redis_client,
    set_profile,
    small_model,
    with_segments,
)

CATALOG = load_catalog()


def register_champion(settings, model: FactorModel, tmp_path, alias: str | None = "champion",
                      tags: dict[str, str] | None = None) -> str:
    """Register ``model`` as the first release did: a plain run artifact directory (the
    current release logs an MLflow Model; both must publish). ``alias=None``: registered,
    not promoted."""
    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    settings.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    experiment = client.create_experiment(
        "serving-test", artifact_location=settings.mlflow_artifact_root.resolve().as_uri())
    run = client.create_run(experiment)
    model.save(tmp_path / "model")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(settings.registered_model)
    version = client.create_model_version(settings.registered_model,
                                          source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id, tags=tags)
    if alias is not None:
        client.set_registered_model_alias(settings.registered_model, alias, version.version)
    return run.info.run_id


def publish_cli(settings) -> dict:
    """``bouquet publish`` in a subprocess, as an operator runs it; its JSON report."""
    env = {**os.environ, "BOUQUET_ENV": "test", "REDIS_URL": settings.redis_url,
           "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix,
           "BOUQUET_STATE_DIR": str(settings.state_dir)}
    out = subprocess.run([sys.executable, "-m", "bouquet", "publish", "--no-progress"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


@pytest.mark.slow  # an MLflow SQLite store to create, and the CLI in a subprocess
def test_the_champion_is_published_and_served(settings, tmp_path) -> None:
    with pytest.raises(LookupError, match="no alias 'champion'"):
        load_registered(settings)  # nothing registered yet: a clear message, no publish
    artifact = small_model(CATALOG, n=40, factors=8, seed=5, prefix="m")
    run_id = register_champion(settings, artifact, tmp_path)
    model, version, found_run = load_registered(settings)
    assert (version, found_run) == ("v1", run_id)
    # The serving fold-in is the registered model's, to float precision.
    strengths = Strengths({3: 2.0, 10: 0.5}, {})
    np.testing.assert_allclose(model.serving_view().fold_in(strengths),
                               artifact.fold_in(strengths), rtol=1e-6)

    report = publish_cli(settings)
    assert report["model_version"] == "v1" and report["residents"] == 40
    r = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    assert r.get(keys.current_version()).decode() == report["version"]
    r.close()

    set_profile(settings, "m7", consent="1", neighbourhood="gare")

    async def ask() -> dict:
        async with client_for(settings) as c:
            return (await c.get("/v1/residents/m7/bundles", params={"k": 24})).json()

    answer = anyio.run(ask)
    assert answer["personalised"] and answer["model_version"] == "v1"
    scores = artifact.score(np.array([artifact.resident_row("m7")]), "b")[0]
    expected = [artifact.bundle_ids[i] for i in np.argsort(-scores, kind="stable")]
    got = [b["bundle_id"] for b in answer["bundles"]]
    assert got == [b for b in expected if b in got]  # the model's order, filtered


@pytest.mark.slow  # an MLflow SQLite store to create, and the CLI in a subprocess
def test_without_a_champion_the_runs_segment_decision_is_published_and_served(
        settings, tmp_path) -> None:
    """A version registered but not promoted, whose run found segment lists beat popularity:
    publish writes its popular lists only, and consenting residents get their segment's."""
    segment = segment_id("gare", "26-40", "family")
    artifact = with_segments(small_model(CATALOG, n=40, factors=8, seed=5, prefix="m"), segment,
                             "family-pack")
    register_champion(settings, artifact, tmp_path, alias=None, tags={"segment_lists": "1"})
    report = publish_cli(settings)
    assert report["model_version"] == "v1" and report["residents"] == 0
    r = redis_client(settings)
    meta = r.hgetall(Keys(settings.redis_key_prefix).version_meta(report["version"]))
    r.close()
    assert (meta[b"personalised"], meta[b"segment_lists"]) == (b"0", b"1")

    profile = {"neighbourhood": "gare", "age_band": "26-40", "household": "family"}
    set_profile(settings, "m7", consent="1", **profile)  # m7 has a list in the model
    set_profile(settings, "m8", consent="0", **profile)

    async def ask(rid: str) -> dict:
        async with client_for(settings) as c:
            return (await c.get(f"/v1/residents/{rid}/bundles", params={"k": 3})).json()

    consenting, refusing = anyio.run(ask, "m7"), anyio.run(ask, "m8")
    assert not consenting["personalised"] and consenting["fallback"] == "popular_segment"
    assert consenting["bundles"][0]["bundle_id"] == "family-pack"
    assert "no model has beaten" in consenting["notice"]
    assert "residents like them" in consenting["notice"]
    assert not refusing["personalised"] and refusing["fallback"] == "popular_neighbourhood"
