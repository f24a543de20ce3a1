"""``bouquet train``: event log → model → evaluation against baselines → MLflow → registry.

One run, in order (each stage timed; see :class:`Stages`):

1. **connect** to MLflow first, so a bad ``MLFLOW_TRACKING_URI`` fails in a second, not
   after the training;
2. **read** the event log once (:func:`~bouquet.pipelines.dataset.load_event_arrays`);
3. **split** temporally (:func:`~bouquet.pipelines.split.temporal_split`);
4. optional **search**: each trial is a nested MLflow run, fitted on a *validation* split
   (cut-off one test window earlier) so the test window never chooses hyper-parameters;
5. **fit + evaluate** the model and every baseline on the same split (metrics
   ``services.*``/``bundles.*``, baselines suffixed ``.<baseline>``, cold-start group
   ``*.cold.*``);
6. **champion on this split**: if the current champion was evaluated on another split, its
   recipe — model kind, parameters and dataset parameters, read from its artifact's
   ``meta.json`` — is refitted on this split's training data and evaluated on the same
   test positives (its saved factors are *not* scored: they may have been trained on this
   very test window, which would flatter it);
7. **refit** on all data (``--no-refit`` keeps the model fitted before the cut-off), build
   the deployable artifact, log it as the run's ``model`` directory;
8. **register** a new version; the ``champion`` alias moves by
   :func:`~bouquet.pipelines.registry.decide`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import resource
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from bouquet import __version__
from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings
from bouquet.pipelines.candidates import (
    BASELINES,
    COLD_CAPABLE,
    MAIN_KINDS,
    TARGETS,
    Candidate,
    NeighbourhoodPopularity,
    make_candidate,
)
from bouquet.pipelines.dataset import (
    Dataset,
    DatasetParams,
    EventArrays,
    build_dataset,
    load_event_arrays,
)
from bouquet.pipelines.evaluate import DEFAULT_KS, ranking_metrics
from bouquet.pipelines.registry import Decision, ModelRegistry, decide
from bouquet.pipelines.split import DEFAULT_POSITIVE_TYPES, Split, temporal_split
from bouquet.pipelines.tracking import (
    connect,
    ensure_experiment,
    finite_metrics,
    flatten,
    git_state,
)

log = logging.getLogger(__name__)

DEFAULT_PRIMARY = "bundles.ndcg_at_10"
DEFAULT_TEST_WEEKS = 4
#: Search space of the main model when ``--space`` is not given.
DEFAULT_SPACE: dict[str, list[Any]] = {
    "factors": [8, 16, 32],
    "regularization": [10.0, 50.0, 150.0],
    "alpha": [0.25, 1.0],
    "affinity_weight": [0.0, 0.25, 1.0],
}


@dataclass
class TrainOptions:
    """Everything ``bouquet train`` can be told (the CLI maps its flags onto this)."""

    model: str = "als"
    params: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)  # DatasetParams overrides
    cutoff: pd.Timestamp | None = None
    test_weeks: int = DEFAULT_TEST_WEEKS
    positive_types: tuple[str, ...] = DEFAULT_POSITIVE_TYPES
    ks: tuple[int, ...] = DEFAULT_KS
    primary_metric: str = DEFAULT_PRIMARY
    baselines: tuple[str, ...] = BASELINES
    refit: bool = True
    register: bool = True
    force: bool = False
    search: str | None = None  # None, "grid" or "random"
    trials: int | None = None
    space: dict[str, list[Any]] = field(default_factory=dict)
    seed: int = 0
    run_name: str | None = None
    progress: bool = True


@dataclass
class TrainReport:
    """What a run did; the CLI prints it and the scale benchmark reads ``stages``."""

    run_id: str
    experiment_id: str
    model: str
    params: dict[str, Any]
    metrics: dict[str, float]
    primary_metric: str
    split: dict[str, Any]
    dataset: dict[str, Any]
    version: str | None
    decision: Decision | None
    stages: dict[str, dict[str, float]]
    artifact_uri: str
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def primary_value(self) -> float:
        return self.metrics.get(self.primary_metric, float("nan"))


class Stages:
    """Wall time and memory of each stage.

    ``peak_rss_mb`` is the stage's own peak where Linux allows resetting the high-water mark
    (``/proc/self/clear_refs``), else the process peak so far; ``rss_mb`` is the resident
    memory when the stage ended.
    """

    def __init__(self, progress: bool, total: int) -> None:
        from tqdm import tqdm

        self.times: dict[str, dict[str, float]] = {}
        self.bar = tqdm(total=total, disable=not progress, desc="train", unit="stage",
                        leave=False)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_postfix_str(name)
        resettable = _reset_peak_rss()
        started = time.perf_counter()
        try:
            yield
        finally:
            peak = _peak_rss_mb() if resettable else None
            self.times[name] = {
                "s": time.perf_counter() - started,
                "rss_mb": psutil.Process().memory_info().rss / 2**20,
                "peak_rss_mb": peak if peak is not None
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            self.bar.update(1)
            log.info("stage %-10s %6.1f s", name, self.times[name]["s"])

    def close(self) -> None:
        self.bar.close()


def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux ≥ 4.0); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    """``VmHWM`` (peak resident memory since the last reset) in MB, None if unreadable."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --- evaluation -----------------------------------------------------------------------------


def evaluate_candidate(candidate: Candidate, split: Split, ks: tuple[int, ...],
                       suffix: str = "", rows_of: np.ndarray | None = None) -> dict[str, float]:
    """``{target}.{metric}_at_{k}[{suffix}]`` of a fitted candidate on the split.

    ``rows_of`` maps the split's training rows to the candidate's own rows (when it was
    fitted on a dataset built with other parameters); unmapped residents score 0.
    """
    out: dict[str, float] = {}
    for target in TARGETS:
        scorer = candidate.scorer(target)
        if rows_of is not None:
            scorer = _aligned(scorer, rows_of, split.truth(target).shape[1])
        metrics = ranking_metrics(scorer, split.truth(target), split.mask(target), ks)
        out.update({f"{target}.{name}{suffix}": value for name, value in metrics.items()})
    return out


def evaluate_cold(candidate: Candidate, split: Split, ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of a popularity fallback on the cold-start group (``{target}.cold.*``)."""
    cold = split.cold
    if cold is None or not hasattr(candidate, "score_groups"):
        return {}
    out: dict[str, float] = {}
    for target in TARGETS:
        truth = cold.services if target == "services" else cold.bundles

        def scorer(rows: np.ndarray, target: str = target) -> np.ndarray:
            return candidate.score_groups(target, cold.neighbourhood[rows])

        metrics = ranking_metrics(scorer, truth, None, ks)
        out.update({f"{target}.cold.{name}.{candidate.kind}": v for name, v in metrics.items()})
    return out


def _aligned(scorer: Any, rows_of: np.ndarray, n_items: int) -> Any:
    def score(rows: np.ndarray) -> np.ndarray:
        mapped = rows_of[rows]
        out = np.zeros((len(rows), n_items))
        known = mapped >= 0
        if known.any():
            out[known] = scorer(mapped[known])
        return out

    return score


# --- the run ----------------------------------------------------------------------------------


def train(settings: Settings, options: TrainOptions) -> TrainReport:
    """Run one training (see the module docstring); returns what it logged and decided."""
    if options.search not in (None, "grid", "random"):
        raise ValueError(f"--search must be grid or random, not {options.search!r}")
    if options.model not in MAIN_KINDS:
        raise ValueError(f"--model {options.model!r} cannot be deployed; choose one of "
                         f"{', '.join(MAIN_KINDS)} (baselines are evaluated with --baselines)")
    unknown = sorted(set(options.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    _check_primary(options)
    client = connect(settings)
    experiment_id = ensure_experiment(client, settings)
    registry = ModelRegistry(client, settings.registered_model)
    stages = Stages(options.progress, total=7 + len(options.baselines))
    catalog = load_catalog(settings.catalog_path)
    params = DatasetParams.from_settings(settings, **options.dataset)
    try:
        with stages("read"):
            arrays = load_event_arrays(settings, catalog)
        with stages("split"):
            split = temporal_split(arrays, params, cutoff=options.cutoff,
                                   test_weeks=options.test_weeks,
                                   positive_types=options.positive_types)
        run = client.create_run(experiment_id, run_name=options.run_name,
                                tags=_run_tags(catalog, split, options))
        run_id = run.info.run_id
        try:
            report = _run(client, registry, run, settings, options, arrays, split, params,
                          stages)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return report
    finally:
        stages.close()


def _run(client: Any, registry: ModelRegistry, run: Any, settings: Settings,
         options: TrainOptions, arrays: EventArrays, split: Split, params: DatasetParams,
         stages: Stages) -> TrainReport:
    run_id = run.info.run_id
    model_params = dict(options.params)
    trials: list[dict[str, Any]] = []
    if options.search:
        with stages("search"):
            model_params, trials = _search(client, run, arrays, split, params, options)
    candidate = make_candidate(options.model, model_params)
    _log_params(client, run_id, candidate, params, split, options)

    metrics: dict[str, float] = {}
    with stages("fit"):
        candidate.fit(split.train, progress=options.progress)
    with stages("evaluate"):
        metrics.update(evaluate_candidate(candidate, split, options.ks))
    for kind in options.baselines:
        with stages(f"baseline:{kind}"):
            baseline = make_candidate(kind).fit(split.train)
            metrics.update(evaluate_candidate(baseline, split, options.ks, f".{kind}"))
            if kind in COLD_CAPABLE:
                metrics.update(evaluate_cold(baseline, split, options.ks))
    primary = metrics[options.primary_metric]

    champion = registry.champion()
    champion_on_split: float | None = None
    if champion is not None and options.register and not options.force and (
            champion.tags.get("split_id") != split.id
            or champion.tags.get("primary_metric") != options.primary_metric):
        with stages("champion"):
            champion_on_split = _reevaluate_champion(champion, settings, arrays, split,
                                                     params, options)
        if champion_on_split is not None:
            metrics[f"champion.{options.primary_metric}"] = champion_on_split
    client.log_batch(run_id, metrics=_metric_entities(finite_metrics(metrics)))

    with stages("refit"):
        final_data = build_dataset(arrays, params) if options.refit else split.train
        final = make_candidate(options.model, model_params).fit(final_data,
                                                                progress=options.progress) \
            if options.refit else candidate
        fallback = NeighbourhoodPopularity("popularity_neighbourhood", _group_popularity,
                                           needs_rows=False).fit(final_data)
        popular = (fallback.popular_table("services"), fallback.popular_table("bundles"))
    extra = _artifact_meta(final_data, split, options, metrics, primary)
    with stages("log"), tempfile.TemporaryDirectory(prefix="bouquet-artifact-") as tmp:
        artifact = final.to_artifact(final_data, popular, extra)
        artifact.save(Path(tmp) / "model")
        client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
        _log_json(client, run_id, {"split": split.describe(), "dataset": final_data.summary(),
                                   "train_dataset": split.train.summary(),
                                   "metrics": metrics, "trials": trials,
                                   "stages": stages.times}, "training.json")
    artifact_uri = f"{run.info.artifact_uri}/model"

    version: str | None = None
    decision: Decision | None = None
    if options.register:
        with stages("register"):
            info = registry.register(run_id, artifact_uri, {
                "split_id": split.id, "dataset_fingerprint": final_data.fingerprint,
                "train_fingerprint": split.train.fingerprint,
                "primary_metric": options.primary_metric, "primary_value": repr(primary),
                "model_kind": options.model, "catalog_fingerprint": final_data.catalog_fingerprint,
                "catalog_version": final_data.catalog_version})
            version = info.version
            decision = decide(primary, champion=champion, split_id=split.id,
                              primary_metric=options.primary_metric,
                              champion_on_split=champion_on_split, force=options.force)
            if decision.promote:
                registry.promote(version, decision.reason)
            client.set_tag(run_id, "registered_version", version)
            for key, value in decision.as_tags().items():
                client.set_tag(run_id, key, value)
    for name, stage in stages.times.items():
        client.log_metric(run_id, f"time.{name.replace(':', '.')}_s", stage["s"])
    return TrainReport(
        run_id=run_id, experiment_id=run.info.experiment_id, model=options.model,
        params=candidate.get_params(), metrics=metrics, primary_metric=options.primary_metric,
        split=split.describe(), dataset=final_data.summary(), version=version,
        decision=decision, stages=stages.times, artifact_uri=artifact_uri, trials=trials)


# --- pieces -----------------------------------------------------------------------------------


def _group_popularity() -> Any:
    from bouquet.models.popularity import GroupPopularityRecommender

    return GroupPopularityRecommender()


def _check_primary(options: TrainOptions) -> None:
    target, _, name = options.primary_metric.partition(".")
    metric, _, k = name.rpartition("_at_")
    if target not in TARGETS or not k.isdigit() or int(k) not in options.ks or \
            metric not in ("recall", "ndcg", "map", "precision", "coverage"):
        raise ValueError(f"primary metric {options.primary_metric!r} must look like "
                         f"bundles.ndcg_at_K with K in {list(options.ks)}")


def _run_tags(catalog: Any, split: Split, options: TrainOptions) -> dict[str, str]:
    return {
        **git_state(),
        "bouquet_version": __version__,
        "catalog_version": catalog.version,
        "catalog_fingerprint": catalog.fingerprint,
        "split_id": split.id,
        "dataset_fingerprint": split.train.fingerprint,
        "model_kind": options.model,
        "primary_metric": options.primary_metric,
        "search": options.search or "none",
    }


def _log_params(client: Any, run_id: str, candidate: Candidate, params: DatasetParams,
                split: Split, options: TrainOptions) -> None:
    values = {
        "model": options.model,
        **flatten(candidate.get_params(), "model."),
        **flatten(params.to_dict(), "dataset."),
        **flatten({k: v for k, v in split.definition.items()}, "split."),
        "split.id": split.id,
        "eval.ks": json.dumps(list(options.ks)),
        "eval.primary_metric": options.primary_metric,
        "eval.baselines": json.dumps(list(options.baselines)),
        "refit": str(options.refit).lower(),
    }
    from mlflow.entities import Param

    entities = [Param(k, v) for k, v in values.items()]
    for start in range(0, len(entities), 100):
        client.log_batch(run_id, params=entities[start:start + 100])


def _metric_entities(metrics: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]


def _log_json(client: Any, run_id: str, payload: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1, default=str, sort_keys=True))
        client.log_artifact(run_id, str(path))


def _artifact_meta(data: Dataset, split: Split, options: TrainOptions,
                   metrics: dict[str, float], primary: float) -> dict[str, Any]:
    return {
        "catalog_version": data.catalog_version,
        "catalog_fingerprint": data.catalog_fingerprint,
        "dataset_fingerprint": data.fingerprint,
        "trained_until": data.as_of.isoformat(),
        "refit_on_all_data": options.refit,
        "split": split.describe(),
        "primary_metric": options.primary_metric,
        "primary_value": primary,
        "metrics": {k: v for k, v in metrics.items()
                    if "." in k and not math.isnan(v) and k.count(".") == 1},
        "bouquet_version": __version__,
        **git_state(),
    }


def _reevaluate_champion(champion: Any, settings: Settings, arrays: EventArrays, split: Split,
                         params: DatasetParams, options: TrainOptions) -> float | None:
    """The champion's recipe refitted on this split's training data, evaluated on its test."""
    meta = _champion_meta(champion, settings)
    if meta is None:
        return None
    kind = meta.get("model_kind")
    try:
        candidate = make_candidate(kind, meta.get("model_params", {}))
    except (ValueError, TypeError) as exc:
        log.warning("cannot re-evaluate champion v%s (%s): %s", champion.version, kind, exc)
        return None
    data_params = meta.get("dataset_params") or {}
    recipe = DatasetParams(
        event_weights=data_params.get("event_weights", params.event_weights),
        half_life_days=data_params.get("half_life_days"),
        log_alpha=data_params.get("log_alpha", params.log_alpha),
        spread_bundle_events=data_params.get("spread_bundle_events", True))
    rows_of = None
    data = split.train
    if recipe.to_dict() != params.to_dict():
        data = build_dataset(arrays, recipe, until=split.train.until)
        rows_of = data.row_of(split.train.resident_ids)
    candidate.fit(data)
    metrics = evaluate_candidate(candidate, split, options.ks, rows_of=rows_of)
    value = metrics.get(options.primary_metric)
    log.info("champion v%s re-evaluated on split %s: %s = %.4f", champion.version, split.id,
             options.primary_metric, value)
    return value


def _champion_meta(champion: Any, settings: Settings) -> dict[str, Any] | None:
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{champion.source.rstrip('/')}/meta.json", dst_path=tmp,
                tracking_uri=settings.mlflow_uri)
            return json.loads(Path(path).read_text())
    except Exception as exc:  # a missing or unreadable artifact must not stop training
        log.warning("cannot read champion v%s's artifact (%s): %s", champion.version,
                    champion.source, exc)
        return None


# --- hyper-parameter search -----------------------------------------------------------------


def search_trials(space: Mapping[str, list[Any]], how: str, trials: int | None,
                  seed: int) -> list[dict[str, Any]]:
    """Parameter sets to try: the full grid (cut to ``trials``), or ``trials`` random draws
    from it without repetition."""
    names = sorted(space)
    grid = [dict(zip(names, values, strict=True))
            for values in itertools.product(*(space[n] for n in names))]
    if how == "grid":
        if trials is not None and trials < len(grid):
            log.warning("grid of %d points cut to the first %d (--trials)", len(grid), trials)
            return grid[:trials]
        return grid
    rng = random.Random(seed)
    return rng.sample(grid, min(trials or 8, len(grid)))


def _search(client: Any, parent: Any, arrays: EventArrays, split: Split,
            params: DatasetParams, options: TrainOptions) -> tuple[dict[str, Any],
                                                                     list[dict[str, Any]]]:
    """Fit each trial on a validation split (one test window before the cut-off) as a
    nested run; return the best parameters by the primary metric."""
    cutoff = pd.Timestamp(split.definition["cutoff"]) - pd.Timedelta(weeks=options.test_weeks)
    validation = temporal_split(arrays, params, cutoff=cutoff, test_weeks=options.test_weeks,
                                positive_types=options.positive_types)
    space = options.space or DEFAULT_SPACE
    points = search_trials(space, options.search or "grid", options.trials, options.seed)
    results: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for number, point in enumerate(points):
        trial_params = {**options.params, **point}
        child = client.create_run(parent.info.experiment_id,
                                  run_name=f"trial-{number:03d}",
                                  tags={"mlflow.parentRunId": parent.info.run_id,
                                        "trial": str(number), "split_id": validation.id})
        try:
            candidate = make_candidate(options.model, trial_params)
            for key, value in flatten(candidate.get_params(), "model.").items():
                client.log_param(child.info.run_id, key, value)
            candidate.fit(validation.train)
            metrics = evaluate_candidate(candidate, validation, options.ks)
            client.log_batch(child.info.run_id, metrics=_metric_entities(
                {f"val.{k}": v for k, v in finite_metrics(metrics).items()}))
        except BaseException:
            client.set_terminated(child.info.run_id, "FAILED")
            raise
        client.set_terminated(child.info.run_id, "FINISHED")
        value = metrics[options.primary_metric]
        results.append({"trial": number, "params": trial_params, "value": value,
                        "run_id": child.info.run_id})
        log.info("trial %d %s: %s = %.4f", number, point, options.primary_metric, value)
        if not math.isnan(value) and (best is None or value > best[0]):
            best = (value, trial_params)
    if best is None:
        raise ValueError("no search trial produced a finite primary metric: the validation "
                         "window has no test positives; use fewer --test-weeks or more data")
    client.set_tag(parent.info.run_id, "search.best_value", repr(best[0]))
    client.set_tag(parent.info.run_id, "search.validation_split", validation.id)
    return best[1], results
