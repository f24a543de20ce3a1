"""``bouquet train`` against a real (temporary) MLflow SQLite store, on a simulated city.

Covers: what a run records (params, model and baseline metrics, fingerprint, commit, split,
artifact), registration, the champion rule (improvement on the same split, re-evaluation on
another split, --force), promote/rollback and their history, nested search runs, the
artifact fetched back from the registry, and the one-line error for a bad tracking URI.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bouquet.core.settings import Settings
from bouquet.localstack import free_port
from bouquet.models.artifact import load_artifact
from bouquet.pipelines.registry import ModelRegistry, VersionInfo, decide
from bouquet.pipelines.tracking import TrackingUnavailable, connect
from bouquet.pipelines.train import TrainOptions, search_trials, train

pytestmark = pytest.mark.integration  # a real MLflow store (SQLite) on disk
END = date(2025, 6, 2)
GOOD = {"factors": 8}
#: Inverted bundle scores: a recipe that is certainly worse than GOOD.
BAD = {"factors": 8, "cf_weight": -1.0, "affinity_weight": -1.0}
FAST = {"baselines": (), "progress": False, "refit": False}


@pytest.fixture(scope="module")
def city_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated city written straight to an event log (shared, read-only)."""
    from bouquet.simulation.runner import simulate

    state = tmp_path_factory.mktemp("city")
    settings = Settings(env="test", state_dir=state)
    simulate(settings, residents=4000, weeks=12, seed=5, end=END, progress=False,
             save_residents=False)
    return settings.event_log_path


@pytest.fixture
def settings(tmp_path: Path, city_log: Path) -> Settings:
    """Own MLflow store and artifact root per test; the shared simulated log."""
    return Settings(env="test", state_dir=tmp_path / "state", event_log_dir=city_log,
                    mlflow_tracking_uri=None)


def run(settings: Settings, **options: object) -> object:
    return train(settings, TrainOptions(**{**FAST, **options}))


def test_run_records_everything_and_registers_the_first_champion(settings: Settings) -> None:
    report = run(settings, params=GOOD, baselines=("popularity", "popularity_neighbourhood",
                                                   "ease"), refit=True)
    client = connect(settings)
    logged = client.get_run(report.run_id)
    params, metrics, tags = logged.data.params, logged.data.metrics, logged.data.tags

    assert params["model"] == "als" and params["model.factors"] == "8"
    assert params["dataset.event_weights.subscribe"] == str(settings.event_weights["subscribe"])
    assert params["split.kind"] == "temporal" and params["split.test_weeks"] == "4"
    for name in ("bundles.recall_at_10", "bundles.ndcg_at_10", "bundles.map_at_5",
                 "bundles.precision_at_5", "bundles.coverage_at_20", "services.recall_at_10",
                 "bundles.recall_at_10.popularity", "bundles.ndcg_at_10.ease",
                 "services.recall_at_10.popularity_neighbourhood"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["bundles.ndcg_at_10"] == pytest.approx(report.primary_value)
    assert len(tags["dataset_fingerprint"]) == 16 and params["split.id"] == tags["split_id"]
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    assert tags["catalog_fingerprint"] and tags["split_id"] == report.split["id"]
    assert tags["promotion.decision"] == "promoted"

    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.artifact_location == settings.mlflow_artifact_root.resolve().as_uri()
    artifacts = {a.path for a in client.list_artifacts(report.run_id, "model")}
    assert artifacts == {"model/meta.json", "model/arrays.npz"}

    registry = ModelRegistry(client, settings.registered_model)
    champion = registry.champion()
    assert champion is not None and champion.version == report.version == "1"
    assert champion.tags["split_id"] == report.split["id"]
    assert champion.tags["dataset_fingerprint"] == report.dataset["fingerprint"]

    # publish's path: the alias → its version's source → load_artifact, scores as trained
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=champion.source, dst_path=tmp, tracking_uri=settings.mlflow_uri)
        artifact = load_artifact(Path(local))
        assert artifact.meta["dataset_fingerprint"] == report.dataset["fingerprint"]
        assert artifact.meta["catalog_fingerprint"] == tags["catalog_fingerprint"]
        assert len(artifact.resident_ids) == report.dataset["residents"]
        scores = artifact.score_bundles(artifact.resident_factors[:3])
        assert scores.shape == (3, len(artifact.bundle_ids)) and np.isfinite(scores).all()


def test_champion_moves_only_on_improvement_or_force_then_promote_and_rollback(
        settings: Settings) -> None:
    first = run(settings, params=GOOD)
    worse = run(settings, params=BAD)
    assert worse.split["id"] == first.split["id"]
    assert worse.primary_value < first.primary_value
    assert not worse.decision.promote and "same split" in worse.decision.reason
    registry = ModelRegistry(connect(settings), settings.registered_model)
    assert registry.champion().version == first.version

    forced = run(settings, params=BAD, force=True)
    assert forced.decision.promote and registry.champion().version == forced.version
    better = run(settings, params=GOOD)
    assert better.decision.promote, better.decision.reason
    assert registry.champion().version == better.version
    assert registry.alias("previous-champion").version == forced.version
    assert registry.history() == [first.version, forced.version, better.version]

    assert registry.rollback() == (better.version, forced.version)
    assert registry.champion().version == forced.version
    assert registry.alias("previous-champion").version == first.version
    assert registry.rollback() == (forced.version, first.version)
    registry.promote(worse.version, "manual")
    assert registry.champion().version == worse.version
    assert registry.version(worse.version).tags["promotion_reason"] == "manual"


def test_a_champion_from_another_split_is_re_evaluated_on_the_new_one(
        settings: Settings) -> None:
    old = run(settings, params=GOOD, cutoff=pd.Timestamp("2025-04-21", tz="UTC"))
    new = run(settings, params=BAD, cutoff=pd.Timestamp("2025-05-05", tz="UTC"))
    assert old.split["id"] != new.split["id"]
    assert "re-evaluated" in new.decision.reason and not new.decision.promote
    re_measured = new.metrics["champion.bundles.ndcg_at_10"]
    # the champion's recipe on the new split is what GOOD scores there
    direct = run(settings, params=GOOD, cutoff=pd.Timestamp("2025-05-05", tz="UTC"),
                 register=False)
    assert re_measured == pytest.approx(direct.primary_value)


def test_search_logs_nested_trials_and_registers_the_best(settings: Settings) -> None:
    report = run(settings, search="grid", space={"factors": [4, 8],
                                                 "affinity_weight": [-1.0, 0.5]})
    client = connect(settings)
    children = client.search_runs(
        [client.get_run(report.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{report.run_id}'")
    assert len(children) == len(report.trials) == 4
    assert all("val.bundles.ndcg_at_10" in c.data.metrics for c in children)
    best = max(report.trials, key=lambda t: t["value"])
    assert report.params["factors"] == best["params"]["factors"]
    assert report.params["affinity_weight"] == best["params"]["affinity_weight"]
    assert report.version == "1"


def test_search_trials_grid_and_random() -> None:
    space = {"a": [1, 2, 3], "b": [0.1, 0.2]}
    assert len(search_trials(space, "grid", None, 0)) == 6
    assert search_trials(space, "grid", 2, 0) == [{"a": 1, "b": 0.1}, {"a": 1, "b": 0.2}]
    drawn = search_trials(space, "random", 4, seed=1)
    assert len(drawn) == 4 and len({json.dumps(d, sort_keys=True) for d in drawn}) == 4
    assert drawn == search_trials(space, "random", 4, seed=1)


def test_decide_rule() -> None:
    def version(split: str, value: float) -> VersionInfo:
        return VersionInfo("3", "run", "", ("champion",), {
            "split_id": split, "primary_metric": "bundles.ndcg_at_10",
            "primary_value": repr(value)}, "")

    args = {"split_id": "s1", "primary_metric": "bundles.ndcg_at_10"}
    assert decide(0.1, champion=None, **args).promote
    assert decide(0.5, champion=version("s1", 0.4), **args).promote
    assert not decide(0.4, champion=version("s1", 0.4), **args).promote  # ties keep the champion
    assert not decide(0.9, champion=version("s0", 0.1), **args).promote  # no figure on s1
    assert decide(0.9, champion=version("s0", 0.1), champion_on_split=0.8, **args).promote
    assert not decide(0.7, champion=version("s0", 0.1), champion_on_split=0.8, **args).promote
    assert decide(0.0, champion=version("s1", 0.4), force=True, **args).promote


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    from bouquet.core import settings as settings_module

    monkeypatch.setenv("BOUQUET_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("BOUQUET_EVENT_LOG_DIR", str(settings.event_log_path))
    for name in ("MLFLOW_TRACKING_URI", "BOUQUET_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    settings_module.get_settings.cache_clear()
    try:
        yield CliRunner()
    finally:
        settings_module.get_settings.cache_clear()


def invoke(runner: CliRunner, *args: str, code: int = 0) -> object:
    from bouquet.cli import app

    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def test_cli_train_list_promote_rollback(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = invoke(cli, "train", "--no-progress", "--baselines", "popularity", "--no-refit",
                    "-p", "factors=8", "--json", str(out))
    assert "registered version 1: now champion" in result.output
    assert json.loads(out.read_text())["version"] == "1"
    invoke(cli, "train", "--no-progress", "--baselines", "", "--no-refit", "-p", "factors=8",
           "-p", "cf_weight=-1", "-p", "affinity_weight=-1")
    listing = invoke(cli, "model", "list").output
    assert "champion" in listing and "bundles.ndcg_at_10" in listing
    assert "champion is now version 2" in invoke(cli, "model", "promote", "2").output
    assert "rolled back from version 2 to 1" in invoke(cli, "model", "rollback").output
    failed = invoke(cli, "model", "promote", "99", code=1)
    assert "has no version 99" in failed.output and "Traceback" not in failed.output


def test_bad_tracking_uri_is_one_line_and_exit_code_1(cli: CliRunner,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bouquet.core import settings as settings_module

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    settings_module.get_settings.cache_clear()
    for args in (("train", "--no-progress"), ("model", "list")):
        result = invoke(cli, *args, code=1)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        assert lines[0].startswith("error: MLflow tracking server") and dead in lines[0]
        assert "MLFLOW_TRACKING_URI" in lines[0] and "Traceback" not in result.output
    with pytest.raises(TrackingUnavailable, match="not usable"):
        connect(Settings(env="test", mlflow_tracking_uri="nosuchscheme://x"))


def test_empty_event_log_is_a_one_line_error(cli: CliRunner, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bouquet.core import settings as settings_module

    monkeypatch.setenv("BOUQUET_EVENT_LOG_DIR", str(tmp_path / "empty-log"))
    settings_module.get_settings.cache_clear()
    result = invoke(cli, "train", "--no-progress", code=1)
    assert "error: the event log is empty" in result.output
    assert "Traceback" not in result.output
