"""``bouquet train``: event log → every candidate → evaluation → MLflow → registry.

One run, in order (each stage timed; see :class:`Stages`):

1. **connect** to MLflow first, so a bad ``MLFLOW_TRACKING_URI`` fails in a second, not
   after the training;
2. **read** the event log once (:func:`~bouquet.pipelines.dataset.load_event_arrays`);
3. **split** temporally (:func:`~bouquet.pipelines.split.temporal_split`);
4. optional **search** of the ALS candidate's hyper-parameters: each trial is a nested
   MLflow run, fitted on a *validation* split (cut-off one test window earlier) so the test
   window never chooses hyper-parameters;
5. **fit + evaluate** every deployable candidate (ALS, EASE, item kNN, the cross-view
   bundle scorer) and the baselines on the same split, each through the form it would be
   served in (metrics ``<candidate>/<target>.<metric>``, cold-start group
   ``<baseline>/cold.<target>.<metric>``); the best non-degenerate candidate by the primary
   metric is the run's model;
6. **champion on this split**: the current champion's recipe — model kind, parameters and
   confidence rule, read from its artifact — is refitted on this split's training data and
   evaluated on the same residents (its saved factors are *not* scored: they may have been
   trained on this very test window, which would flatter it);
7. **decide** by :func:`~bouquet.pipelines.promotion.decide`: paired bootstrap intervals
   against popularity and the champion, on enough residents;
8. **refit** the chosen candidate on all data (``--no-refit`` keeps the one fitted before
   the cut-off), log it as an MLflow Model (pyfunc flavour wrapping Bouquet's artifact),
   **register** a version and move ``champion`` when the decision says so. Serving changes
   only when ``bouquet publish`` runs (or ``train --publish``).
"""

from __future__ import annotations

import contextlib
import ctypes
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
from bouquet.models.confidence import ConfidenceRule
from bouquet.pipelines.candidates import (
    BASELINES,
    COLD_CAPABLE,
    DEPLOYABLE_KINDS,
    TARGETS,
    Candidate,
    NeighbourhoodPopularity,
    make_candidate,
)
from bouquet.pipelines.dataset import (
    Dataset,
    EventArrays,
    build_dataset,
    load_event_arrays,
    rule_from_settings,
)
from bouquet.pipelines.evaluate import DEFAULT_KS, UserMetrics, user_metrics
from bouquet.pipelines.promotion import (
    Decision,
    Interval,
    SegmentDecision,
    decide,
    decide_segment_lists,
    paired_bootstrap,
    score_spread,
)
from bouquet.pipelines.registry import ModelRegistry
from bouquet.pipelines.split import (
    DEFAULT_POSITIVE_TYPES,
    DEFAULT_TEST_WEEKS,
    Split,
    temporal_split,
)
from bouquet.pipelines.tracking import (
    connect,
    ensure_experiment,
    flatten,
    git_state,
    log_deployable,
    show_mlflow_progress,
)

log = logging.getLogger(__name__)

#: The baselines every run fits, whatever ``--baselines`` says: the promotion rule reads the
#: two popularity baselines, the segment lists' rule the segment baseline.
ALWAYS_EVALUATED: tuple[str, ...] = ("popularity", "popularity_neighbourhood",
                                     "popularity_segment")

DEFAULT_PRIMARY = "bundles.ndcg_at_10"
#: Search space of the main model when ``--space`` is not given.
DEFAULT_SPACE: dict[str, list[Any]] = {
    "factors": [8, 16, 32],
    "regularization": [1.0, 5.0, 20.0],
    "alpha": [1.0, 5.0, 20.0],
    "affinity_weight": [0.0, 0.25, 1.0],
}


@dataclass
class TrainOptions:
    """Everything ``bouquet train`` can be told (the CLI maps its flags onto this)."""

    #: Deployable candidates evaluated; the best becomes the run's model.
    candidates: tuple[str, ...] = DEPLOYABLE_KINDS
    #: Hyper-parameters of the ALS candidate (what ``--search`` tunes).
    params: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)  # confidence-rule overrides
    cutoff: pd.Timestamp | None = None
    test_weeks: int = DEFAULT_TEST_WEEKS
    positive_types: tuple[str, ...] = DEFAULT_POSITIVE_TYPES
    #: Which take-ups are test positives: "organic" (not attributed to a recommendation,
    #: the default) or "all" (see :func:`~bouquet.pipelines.split.temporal_split`).
    positives: str = "organic"
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
    #: Confidence-rule variants (overrides of the configured rule, e.g.
    #: ``{"impression_weight": 0.25}``) refitted with the chosen candidate's recipe and
    #: evaluated on the same split, each against the configured rule (``rule_variant_<i>/…``
    #: metrics and paired intervals): how a rule is decided on the hold-out.
    compare_rules: tuple[dict[str, Any], ...] = ()


@dataclass
class TrainReport:
    """What a run did; the CLI prints it and the scale benchmark reads ``stages``."""

    run_id: str
    experiment_id: str
    model: str  # the chosen candidate's kind ("" when none could be chosen)
    params: dict[str, Any]
    metrics: dict[str, float]  # "<candidate>/<target>.<metric>"
    primary_metric: str
    split: dict[str, Any]
    dataset: dict[str, Any]
    eval_residents: int
    version: str | None
    decision: Decision | None
    stages: dict[str, dict[str, float]]
    model_uri: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: whether the popular lists published without a champion are the segments'
    segment_lists: SegmentDecision | None = None

    @property
    def primary_value(self) -> float:
        return self.metrics.get(f"{self.model}/{self.primary_metric}", float("nan"))


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
            _release_freed_memory()
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


def _release_freed_memory() -> None:
    """Hand memory freed by a stage back to the system, so the next stage's peak is its
    own: Arrow's allocator keeps freed pages for reuse, and so does glibc's heap for
    blocks below its mmap threshold (many of a stage's temporaries)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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


@dataclass
class Evaluation:
    """One fitted candidate on the split: its metrics, and its per-resident primary values
    (aligned with :attr:`users`) for paired comparisons."""

    kind: str
    candidate: Candidate
    metrics: dict[str, float]
    users: np.ndarray
    primary: np.ndarray
    spread: float | None = None  # score spread across residents (deployables)

    @property
    def primary_mean(self) -> float:
        return float(self.primary.mean()) if len(self.primary) else float("nan")


def evaluate_candidate(candidate: Candidate, split: Split, options: TrainOptions,
                       rows_of: np.ndarray | None = None) -> Evaluation:
    """Every metric of a fitted candidate on the split, by target.

    ``rows_of`` maps the split's training rows to the candidate's own rows (when it was
    fitted on a dataset built with other parameters); unmapped residents score 0.
    """
    target_of_primary, _, primary_name = options.primary_metric.partition(".")
    metrics: dict[str, float] = {}
    found: UserMetrics | None = None
    for target in TARGETS:
        scorer = candidate.scorer(target)
        if rows_of is not None:
            scorer = _aligned(scorer, rows_of, split.truth(target).shape[1])
        result = user_metrics(scorer, split.truth(target), split.mask(target), options.ks)
        metrics.update({f"{target}.{name}": value for name, value in result.mean().items()})
        if target == target_of_primary:
            found = result
    assert found is not None  # _check_primary validated the target
    evaluation = Evaluation(candidate.kind, candidate, metrics, found.users,
                            found.values[primary_name])
    if candidate.deployable and len(found.users):
        sample = found.users[:2000]
        evaluation.spread = score_spread(candidate.score("bundles", sample))
    return evaluation


def evaluate_cold(candidate: Candidate, split: Split, ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of a popularity fallback on the cold-start group (``cold.<target>.*``)."""
    cold = split.cold
    if cold is None or not hasattr(candidate, "score_groups"):
        return {}
    out: dict[str, float] = {}
    for target in TARGETS:
        truth = cold.services if target == "services" else cold.bundles

        def scorer(rows: np.ndarray, target: str = target) -> np.ndarray:
            return candidate.score_groups(target, cold.neighbourhood[rows], cold.segment[rows])

        result = user_metrics(scorer, truth, None, ks).mean()
        out.update({f"cold.{target}.{name}": v for name, v in result.items()})
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
    unknown = sorted(set(options.candidates) - set(DEPLOYABLE_KINDS))
    if unknown or not options.candidates:
        raise ValueError(f"candidates must be among {', '.join(DEPLOYABLE_KINDS)}"
                         f"{f' (not {unknown})' if unknown else ''}")
    unknown = sorted(set(options.baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    _check_primary(options)
    show_mlflow_progress(options.progress)
    client = connect(settings)
    experiment_id = ensure_experiment(client, settings)
    registry = ModelRegistry(client, settings.registered_model)
    baselines = tuple(dict.fromkeys((*ALWAYS_EVALUATED, *options.baselines)))
    stages = Stages(options.progress, total=7 + len(options.candidates) + len(baselines)
                    + bool(options.compare_rules))
    catalog = load_catalog(settings.catalog_path)
    params = rule_from_settings(settings, **options.dataset)
    try:
        with stages("read"):
            arrays = load_event_arrays(settings, catalog)
        with stages("split"):
            split = temporal_split(arrays, params, cutoff=options.cutoff,
                                   test_weeks=options.test_weeks,
                                   positive_types=options.positive_types,
                                   positives=options.positives)
        run = client.create_run(experiment_id, run_name=options.run_name,
                                tags=_run_tags(catalog, split, options))
        run_id = run.info.run_id
        try:
            report = _run(client, registry, run, settings, options, baselines, arrays, split,
                          params, stages)
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return report
    finally:
        stages.close()


def _run(client: Any, registry: ModelRegistry, run: Any, settings: Settings,
         options: TrainOptions, baselines: tuple[str, ...], arrays: EventArrays, split: Split,
         params: ConfidenceRule, stages: Stages) -> TrainReport:
    run_id = run.info.run_id
    als_params = dict(options.params)
    trials: list[dict[str, Any]] = []
    notes: list[str] = []
    if options.search and "als" in options.candidates:
        with stages("search"):
            als_params, trials = _search(client, run, arrays, split, params, options)
    _log_params(client, run_id, als_params, params, split, options)
    log_training_data(client, run_id, settings, split)

    evaluations: dict[str, Evaluation] = {}
    metrics: dict[str, float] = {}
    for kind in (*options.candidates, *baselines):
        with stages(f"fit:{kind}"):
            evaluations[kind], found = fit_and_evaluate(kind, split, options, als_params)
            metrics.update(found)
    eval_residents = len(evaluations[options.candidates[0]].users)
    chosen = _choose(evaluations, options.candidates, notes, options.force, split)
    popularity = _stronger_popularity(evaluations)
    segment_lists, segment_metrics = _segment_lists(evaluations, popularity, eval_residents,
                                                    settings, options)
    metrics.update(segment_metrics)
    # Only the chosen candidate and the stronger popularity are used from here on: the
    # other fitted models (factors, copies of the residents' rows) are let go before the
    # refit builds the full dataset.
    evaluations.clear()
    samples = settings.train_bootstrap_samples

    champion = registry.champion()
    vs_champion: Interval | None = None
    champion_value: float | None = None
    if champion is not None and chosen is not None:
        with stages("champion"):
            champion_eval = _reevaluate_champion(champion, settings, arrays, split, params,
                                                 options)
        if champion_eval is not None:
            champion_value = champion_eval.primary_mean
            metrics.update({f"champion/{name}": v for name, v in champion_eval.metrics.items()})
            vs_champion = promotion_interval(chosen, champion_eval, settings, options)

    if chosen is not None and options.compare_rules:
        with stages("rules"):
            metrics.update(_compare_rules(client, run_id, chosen, arrays, split, params,
                                          options, als_params, samples))

    decision: Decision | None = None
    if chosen is not None:
        vs_popularity = promotion_interval(chosen, popularity, settings, options)
        decision = decide(metric=options.primary_metric, candidate_value=chosen.primary_mean,
                          eval_residents=eval_residents,
                          min_residents=settings.train_min_eval_residents,
                          degenerate=False, vs_popularity=vs_popularity,
                          vs_champion=vs_champion,
                          champion_version=None if champion is None else champion.version,
                          champion_value=champion_value, force=options.force)
        for name, interval in (("vs_popularity", vs_popularity), ("vs_champion", vs_champion)):
            if interval is not None:
                metrics.update({f"promotion/{name}.{part}": getattr(interval, part)
                                for part in ("mean", "low", "high")})
    logged, omitted = _finite(metrics)
    client.log_batch(run_id, metrics=_metric_entities(logged))
    if omitted:
        client.set_tag(run_id, "metrics.omitted", ", ".join(sorted(omitted))[:5000])
        client.set_tag(run_id, "metrics.omitted_reason",
                       "no resident to evaluate them on (e.g. no cold-start resident)")

    model_uri = ""
    version: str | None = None
    final_data = split.train
    if chosen is not None:
        with stages("refit"):
            final_data = build_dataset(arrays, params) if options.refit else split.train
            final = make_candidate(chosen.kind, als_params if chosen.kind == "als" else None)
            final = final.fit(final_data, progress=options.progress) if options.refit \
                else chosen.candidate
            popular = popularity_tables(final_data)
            deployable = final.to_deployable(final_data, popular, _model_meta(
                final_data, split, options, chosen, metrics))
        with stages("log"):
            model_uri = log_deployable(client, settings, run_id, deployable)
            _log_json(client, run_id, {"split": split.describe(),
                                       "dataset": final_data.summary(),
                                       "train_dataset": split.train.summary(),
                                       "metrics": metrics, "trials": trials,
                                       "stages": stages.times, "notes": notes},
                      "training.json")
        if options.register:
            with stages("register"):
                assert decision is not None
                version = _register(client, registry, run_id, model_uri, split, final_data,
                                    options, chosen, decision, segment_lists)
    for name, stage in stages.times.items():
        client.log_metric(run_id, f"time/{name.replace(':', '.')}_s", stage["s"])
    return TrainReport(
        run_id=run_id, experiment_id=run.info.experiment_id,
        model=chosen.kind if chosen else "",
        params=chosen.candidate.get_params() if chosen else {}, metrics=metrics,
        primary_metric=options.primary_metric, split=split.describe(),
        dataset=final_data.summary(), eval_residents=eval_residents, version=version,
        decision=decision, stages=stages.times, model_uri=model_uri, trials=trials,
        notes=notes, segment_lists=segment_lists)


def fit_and_evaluate(kind: str, split: Split, options: TrainOptions,
                     als_params: dict[str, Any] | None = None
                     ) -> tuple[Evaluation, dict[str, float]]:
    """One candidate or baseline fitted on the split's training data and evaluated, with
    its metrics named ``<kind>/…`` (and the cold-start group's for the popularity
    fallbacks)."""
    candidate = make_candidate(kind, als_params if kind == "als" else None)
    candidate.fit(split.train, progress=options.progress and kind == "als")
    found = evaluate_candidate(candidate, split, options)
    metrics = {f"{kind}/{name}": v for name, v in found.metrics.items()}
    if found.spread is not None:
        metrics[f"{kind}/score_spread"] = found.spread
    if kind in COLD_CAPABLE:
        metrics.update({f"{kind}/{name}": v
                        for name, v in evaluate_cold(candidate, split, options.ks).items()})
    return found, metrics


@dataclass
class Selection:
    """Which model family a run would register, and whether it would become champion."""

    split: Split
    evaluations: dict[str, Evaluation]
    metrics: dict[str, float]
    chosen: Evaluation | None
    decision: Decision | None
    notes: list[str]
    segment_lists: SegmentDecision


def promotion_interval(candidate: Evaluation, reference: Evaluation, settings: Settings,
                       options: TrainOptions) -> Interval:
    """The interval the promotion rule reads: the paired bootstrap of the candidate's
    per-resident primary metric against the reference's, with the deployment's resamples
    and level (the same for a training run and for the closed loop's family choice)."""
    return paired_bootstrap(candidate.primary, reference.primary,
                            samples=settings.train_bootstrap_samples, seed=options.seed,
                            level=settings.train_promotion_level)


def select_family(arrays: EventArrays, params: ConfidenceRule, options: TrainOptions,
                  settings: Settings) -> Selection:
    """The selection of a training run without MLflow: the temporal split, every candidate
    and the popularity baselines fitted and evaluated, the best candidate chosen, and the
    promotion decision against popularity (no champion yet). A scheduled retraining that
    keeps the champion's family (the closed loop) calls this once, then refits the family."""
    split = temporal_split(arrays, params, cutoff=options.cutoff,
                           test_weeks=options.test_weeks,
                           positive_types=options.positive_types,
                           positives=options.positives)
    evaluations: dict[str, Evaluation] = {}
    metrics: dict[str, float] = {}
    notes: list[str] = []
    for kind in (*options.candidates, *ALWAYS_EVALUATED):
        evaluations[kind], found = fit_and_evaluate(kind, split, options, options.params)
        metrics.update(found)
    chosen = _choose(evaluations, options.candidates, notes, options.force, split)
    popularity = _stronger_popularity(evaluations)
    segment_lists, segment_metrics = _segment_lists(
        evaluations, popularity, len(popularity.users), settings, options)
    metrics.update(segment_metrics)
    decision = None
    if chosen is not None:
        vs_popularity = promotion_interval(chosen, popularity, settings, options)
        decision = decide(metric=options.primary_metric, candidate_value=chosen.primary_mean,
                          eval_residents=len(chosen.users),
                          min_residents=settings.train_min_eval_residents, degenerate=False,
                          vs_popularity=vs_popularity, vs_champion=None,
                          champion_version=None, champion_value=None, force=options.force)
    return Selection(split, evaluations, metrics, chosen, decision, notes, segment_lists)


def _segment_lists(evaluations: dict[str, Evaluation], popularity: Evaluation,
                   eval_residents: int, settings: Settings, options: TrainOptions
                   ) -> tuple[SegmentDecision, dict[str, float]]:
    """Whether segment lists earn their place without a champion (the segment baseline
    against ``popularity``, the stronger popularity baseline, by the promotion rule's
    test), and the interval as metrics."""
    interval = promotion_interval(evaluations["popularity_segment"], popularity, settings,
                                  options)
    decision = decide_segment_lists(metric=options.primary_metric,
                                    eval_residents=eval_residents,
                                    min_residents=settings.train_min_eval_residents,
                                    vs_popularity=interval)
    return decision, {f"promotion/segment_vs_popularity.{part}": getattr(interval, part)
                      for part in ("mean", "low", "high")}


def _stronger_popularity(evaluations: dict[str, Evaluation]) -> Evaluation:
    """The better of the two popularity baselines on the primary metric."""
    return max((evaluations[k] for k in ("popularity", "popularity_neighbourhood")),
               key=lambda e: np.nan_to_num(e.primary_mean, nan=-1.0))


def _choose(evaluations: dict[str, Evaluation], candidates: tuple[str, ...],
            notes: list[str], force: bool, split: Split) -> Evaluation | None:
    """The best candidate by the primary metric among those whose scores vary across
    residents; a degenerate one is never chosen, and the notes say so. With no hold-out
    positive at all nothing can be compared: only ``--force`` registers (the first
    candidate) then."""
    from bouquet.pipelines.promotion import DEGENERATE_SPREAD

    usable = []
    for kind in candidates:
        found = evaluations[kind]
        if found.spread is not None and found.spread < DEGENERATE_SPREAD:
            notes.append(f"{kind} is degenerate (its scores vary by at most {found.spread:.1e} "
                         "across residents) and is not registered")
        else:
            usable.append(found)
    evaluated = [e for e in usable if not np.isnan(e.primary_mean)]
    if evaluated:
        return max(evaluated, key=lambda e: e.primary_mean)
    if usable and not any(len(e.users) for e in usable):
        window = f"{split.definition['cutoff'][:10]} + {split.definition['test_weeks']} weeks"
        if force:
            notes.append(f"the hold-out ({window}) has no test positives: {usable[0].kind} "
                         "registered unevaluated (--force)")
            return usable[0]
        notes.append(f"the hold-out ({window}) has no test positives, so no candidate can "
                     "be judged: choose an earlier --cutoff or more --test-weeks")
        return None
    notes.append("no candidate can be registered")
    return None


def _register(client: Any, registry: ModelRegistry, run_id: str, model_uri: str,
              split: Split, data: Dataset, options: TrainOptions, chosen: Evaluation,
              decision: Decision, segment_lists: SegmentDecision) -> str:
    info = registry.register(run_id, model_uri, {
        SegmentDecision.TAG: "1" if segment_lists.serve else "0",
        "split_id": split.id, "dataset_fingerprint": data.fingerprint,
        "train_fingerprint": split.train.fingerprint,
        "primary_metric": options.primary_metric, "primary_value": repr(chosen.primary_mean),
        "model_kind": chosen.kind, "catalog_fingerprint": data.catalog_fingerprint,
        "catalog_version": data.catalog_version})
    if decision.promote:
        registry.promote(info.version, decision.reason)
    client.set_tag(run_id, "registered_version", info.version)
    for key, value in {**decision.as_tags(), **segment_lists.as_tags()}.items():
        client.set_tag(run_id, key, value)
    return info.version


def popularity_tables(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The cold-start fallbacks of a deployable model: (services, bundles) popularity,
    city-wide then per neighbourhood."""
    fallback = NeighbourhoodPopularity("popularity_neighbourhood", _group_popularity,
                                       needs_rows=False).fit(data)
    return fallback.popular_table("services"), fallback.popular_table("bundles")


# --- pieces -----------------------------------------------------------------------------------


def _group_popularity() -> Any:
    from bouquet.models.popularity import GroupPopularityRecommender

    return GroupPopularityRecommender()


def _check_primary(options: TrainOptions) -> None:
    target, _, name = options.primary_metric.partition(".")
    metric, _, k = name.rpartition("_at_")
    if target not in TARGETS or not k.isdigit() or int(k) not in options.ks or \
            metric not in ("recall", "ndcg", "map", "precision"):
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
        "candidates": ",".join(options.candidates),
        "primary_metric": options.primary_metric,
        "search": options.search or "none",
    }


def _log_params(client: Any, run_id: str, als_params: dict[str, Any], params: ConfidenceRule,
                split: Split, options: TrainOptions) -> None:
    values = {
        "candidates": ",".join(options.candidates),
        **flatten(make_candidate("als", als_params).get_params(), "als."),
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


def log_training_data(client: Any, run_id: str, settings: Settings, split: Split) -> None:
    """The event log as the run's dataset input: its fingerprint, where it lives, the split."""
    from mlflow.entities import Dataset as MlflowDataset
    from mlflow.entities import DatasetInput, InputTag

    summary = split.train.summary()
    dataset = MlflowDataset(
        name="event-log", digest=split.train.fingerprint, source_type="local",
        source=json.dumps({"uri": Path(settings.event_log_path).resolve().as_uri()}),
        schema=json.dumps({"columns": ["event_id", "resident_id", "type", "service_id",
                                       "bundle_id", "ts", "channel", "value", "context"]}),
        profile=json.dumps({"residents": summary["residents"],
                            "service_pairs": summary["service_pairs"],
                            "bundle_pairs": summary["bundle_pairs"],
                            "split_id": split.id, "cutoff": split.definition["cutoff"],
                            "test_weeks": split.definition["test_weeks"]}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[
        InputTag("mlflow.data.context", "training")])])


def _finite(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Metrics MLflow can store, and the names left out (NaN: nothing to evaluate on)."""
    kept = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(v)}
    return kept, sorted(set(metrics) - set(kept))


def _metric_entities(metrics: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())]


def _log_json(client: Any, run_id: str, payload: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1, default=str, sort_keys=True))
        client.log_artifact(run_id, str(path))


def _model_meta(data: Dataset, split: Split, options: TrainOptions, chosen: Evaluation,
                metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "catalog_version": data.catalog_version,
        "catalog_fingerprint": data.catalog_fingerprint,
        "dataset_fingerprint": data.fingerprint,
        "trained_until": data.as_of.isoformat(),
        "refit_on_all_data": options.refit,
        "split": split.describe(),
        "primary_metric": options.primary_metric,
        "primary_value": chosen.primary_mean,
        "metrics": {k.partition("/")[2]: v for k, v in metrics.items()
                    if k.startswith(f"{chosen.kind}/") and not math.isnan(v)},
        "bouquet_version": __version__,
        **git_state(),
    }


def _reevaluate_champion(champion: Any, settings: Settings, arrays: EventArrays, split: Split,
                         params: ConfidenceRule, options: TrainOptions) -> Evaluation | None:
    """The champion's recipe refitted on this split's training data, evaluated on its test."""
    meta = champion_meta(champion, settings)
    if meta is None:
        return None
    kind = meta.get("model_kind")
    try:
        candidate = make_candidate(kind, meta.get("model_params", {}))
    except (ValueError, TypeError) as exc:
        log.warning("cannot re-evaluate champion v%s (%s): %s", champion.version, kind, exc)
        return None
    recorded = meta.get("rule") or meta.get("dataset_params") or {}
    recipe = ConfidenceRule.from_dict({"event_weights": params.event_weights,
                                       "log_alpha": params.log_alpha, **recorded})
    rows_of = None
    data = split.train
    if recipe.to_dict() != params.to_dict():
        data = build_dataset(arrays, recipe, until=split.train.until)
        rows_of = data.row_of(split.train.resident_ids)
    candidate.fit(data)
    found = evaluate_candidate(candidate, split, options, rows_of=rows_of)
    log.info("champion v%s re-evaluated on split %s: %s = %.4f", champion.version, split.id,
             options.primary_metric, found.primary_mean)
    return found


def _compare_rules(client: Any, run_id: str, chosen: Evaluation, arrays: EventArrays,
                   split: Split, params: ConfidenceRule, options: TrainOptions,
                   als_params: dict[str, Any], samples: int) -> dict[str, float]:
    """Each rule variant of ``options.compare_rules``: the chosen candidate's kind refitted
    on this split's training events counted by the variant, evaluated on the same residents
    and items (the split's masks are the configured rule's) and compared with the chosen
    candidate by a paired bootstrap — ``vs_configured`` > 0 means the variant did better.
    The variants' rules are logged as parameters ``rule_variant_<i>.<field>``."""
    from mlflow.entities import Param

    out: dict[str, float] = {}
    for number, overrides in enumerate(options.compare_rules, 1):
        name = f"rule_variant_{number}"
        recipe = ConfidenceRule.from_dict({**params.to_dict(), **overrides})
        data = build_dataset(arrays, recipe, until=split.train.until)
        candidate = make_candidate(chosen.kind, als_params if chosen.kind == "als" else None)
        candidate.fit(data)
        found = evaluate_candidate(candidate, split, options,
                                   rows_of=data.row_of(split.train.resident_ids))
        out.update({f"{name}/{key}": value for key, value in found.metrics.items()})
        interval = paired_bootstrap(found.primary, chosen.primary, samples=samples,
                                    seed=options.seed)
        out.update({f"{name}/vs_configured.{part}": getattr(interval, part)
                    for part in ("mean", "low", "high")})
        client.log_batch(run_id, params=[Param(k, v) for k, v in flatten(
            {key: recipe.to_dict()[key] for key in overrides}, f"{name}.").items()])
        log.info("%s %s: %s = %.4f (configured %.4f; difference %+.4f [%+.4f, %+.4f])",
                 name, overrides, options.primary_metric, found.primary_mean,
                 chosen.primary_mean, interval.mean, interval.low, interval.high)
    return out


def champion_meta(version: Any, settings: Settings) -> dict[str, Any] | None:
    """The ``meta.json`` of a registered version's model (None when unreadable)."""
    from bouquet.pipelines.tracking import download_model_dir

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_model_dir(settings, version.source, Path(tmp))
            return json.loads((path / "meta.json").read_text())
    except Exception as exc:  # a missing or unreadable artifact must not stop training
        log.warning("cannot read v%s's model (%s): %s", version.version, version.source, exc)
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
            params: ConfidenceRule, options: TrainOptions) -> tuple[dict[str, Any],
                                                                     list[dict[str, Any]]]:
    """Fit each ALS trial on a validation split (one test window before the cut-off) as a
    nested run; return the best parameters by the primary metric."""
    cutoff = pd.Timestamp(split.definition["cutoff"]) - pd.Timedelta(weeks=options.test_weeks)
    validation = temporal_split(arrays, params, cutoff=cutoff, test_weeks=options.test_weeks,
                                positive_types=options.positive_types,
                                positives=options.positives)
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
            candidate = make_candidate("als", trial_params)
            for key, value in flatten(candidate.get_params(), "als.").items():
                client.log_param(child.info.run_id, key, value)
            candidate.fit(validation.train)
            metrics = evaluate_candidate(candidate, validation, options).metrics
            client.log_batch(child.info.run_id, metrics=_metric_entities(
                {f"val/{k}": v for k, v in _finite(metrics)[0].items()}))
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
