"""``bouquet bench train``: the whole training pipeline on a big simulated city.

The demo city with ``--residents`` residents (1,000,000 for the scale claim) is simulated
straight into an event log by a *separate process* (``bouquet simulate run --to eventlog``),
so this process's peak memory is the pipeline's alone. Then one ``bouquet train`` run —
read the log, split, fit and evaluate every deployable candidate (ALS, EASE, item kNN, the
cross-view bundle scorer) and the baselines, refit the chosen one on all data, log the
artifact to a private MLflow SQLite store, register — is timed stage by stage.

Contract figures: ``residents`` (residents in the log, erased ones gone), ``events`` (events
in the log), ``total_s`` (all pipeline stages, generation excluded), ``peak_rss_mb``; extras:
``consenting_residents``, ``training_residents`` (consenting with weighted events: the
model's rows), ``<stage>_s`` and ``<stage>_peak_rss_mb`` for each stage, ``generate_s``, and
the model's and baselines' primary metric.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from bouquet.benchmarks.harness import BenchResult, peak_rss_mb, print_result, write_json
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)

FULL_RESIDENTS = 1_000_000
DEFAULT_RESIDENTS = 100_000  # `make bench`: about a minute; the 1M run is in docs/training.md
DEFAULT_WEEKS = 52
#: Extra baselines beyond the popularity ones (overall, neighbourhood, segment: always
#: evaluated, as in ``bouquet train``).
#: None by default: BPR is never deployed and is the slowest stage of a run (SGD over every
#: positive, twice), so the scale figures are those of the deployable pipeline; pass
#: ``--baselines bpr`` to time it too (docs/training.md §8 gives both).
DEFAULT_BASELINES: tuple[str, ...] = ()


def split_kinds(candidates: tuple[str, ...] | None,
                baselines: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(candidates, extra baselines) for :class:`TrainOptions`. A deployable kind named
    among ``baselines`` (the first release's single list) is fitted as a candidate; the
    popularity baselines need no naming."""
    from bouquet.pipelines.candidates import BASELINES, COLD_CAPABLE, DEPLOYABLE_KINDS

    unknown = sorted(set(baselines) - set(BASELINES) - set(DEPLOYABLE_KINDS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; candidates: {', '.join(DEPLOYABLE_KINDS)}"
                         f"; baselines: {', '.join(BASELINES)}")
    chosen = tuple(candidates) if candidates is not None else DEPLOYABLE_KINDS
    named = tuple(k for k in baselines if k in DEPLOYABLE_KINDS)
    extra = tuple(k for k in baselines if k in BASELINES and k not in COLD_CAPABLE)
    return tuple(dict.fromkeys((*chosen, *named))), extra


def generate(state_dir: Path, residents: int, weeks: int, seed: int, intensity: float,
             progress: bool) -> dict[str, Any]:
    """Simulate the city into ``state_dir/eventlog`` in a child process; its summary."""
    summary = state_dir / "simulation.json"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BOUQUET_", "MLFLOW_"))}
    env["BOUQUET_STATE_DIR"] = str(state_dir)
    cmd = [sys.executable, "-m", "bouquet", "simulate", "run", "--residents", str(residents),
           "--weeks", str(weeks), "--seed", str(seed), "--intensity", str(intensity),
           "--to", "eventlog", "--json", str(summary),
           "--progress" if progress else "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL if not progress else None,
                          stderr=None if progress else subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"simulation failed ({done.returncode}): {(done.stderr or '')[-500:]}")
    out = json.loads(summary.read_text())
    out["generate_s"] = time.perf_counter() - started
    return out


def run_benchmark(*, residents: int = DEFAULT_RESIDENTS, weeks: int = DEFAULT_WEEKS,
                  seed: int = 7, intensity: float = 1.0,
                  candidates: tuple[str, ...] | None = None,
                  baselines: tuple[str, ...] = DEFAULT_BASELINES, refit: bool = True,
                  log_dir: Path | None = None, keep: Path | None = None,
                  progress: bool = False) -> BenchResult:
    """Generate (unless ``log_dir`` holds a log already), then time one training run of
    ``candidates`` (default: every deployable kind) and ``baselines`` (see
    :func:`split_kinds`)."""
    from bouquet.pipelines.train import ALWAYS_EVALUATED, TrainOptions, train

    candidates, baselines = split_kinds(candidates, baselines)
    result = BenchResult("train", params={
        "residents_simulated": residents, "weeks": weeks, "seed": seed,
        "intensity": intensity, "candidates": list(candidates),
        "baselines": [*ALWAYS_EVALUATED, *baselines],
        "refit": refit, "threads": os.cpu_count()})
    state = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bq-bench-train-"))
    state.mkdir(parents=True, exist_ok=True)
    try:
        event_log = Path(log_dir) if log_dir else state / "eventlog"
        if log_dir is None:
            sim = generate(state, residents, weeks, seed, intensity, progress)
            result.add("generate_s", sim["generate_s"], "s")
            result.params["simulated_events"] = sim["events"]
        settings = Settings(env="test", state_dir=state, event_log_dir=event_log,
                            mlflow_tracking_uri=None)
        report = train(settings, TrainOptions(candidates=candidates, baselines=baselines,
                                              refit=refit, progress=progress,
                                              run_name="bench-train"))
        stages = report.stages
        total = sum(stage["s"] for stage in stages.values())
        result.add("residents", report.dataset["residents_seen"], "residents")
        result.add("consenting_residents", report.dataset["residents_consenting"], "residents")
        result.add("training_residents", report.dataset["residents"], "residents")
        result.add("events", report.dataset["events_read"], "events")
        result.add("total_s", total, "s")
        # stage peaks are per stage (the high-water mark is reset between stages), so the
        # process peak is the largest of them
        result.add("peak_rss_mb", max([peak_rss_mb()] + [st["peak_rss_mb"]
                                                          for st in stages.values()]), "MB")
        for name, stage in stages.items():
            key = name.replace(":", "_")
            result.add(f"{key}_s", stage["s"], "s")
            result.add(f"{key}_peak_rss_mb", stage["peak_rss_mb"], "MB")
        primary = report.primary_metric
        result.params["chosen"] = report.model
        result.add(primary, report.primary_value, "")
        for kind in result.params["candidates"] + result.params["baselines"]:
            result.add(f"{primary}.{kind}", report.metrics.get(f"{kind}/{primary}"), "")
        result.add("test_residents_bundles", report.split.get("test_residents_bundles"),
                   "residents")
        result.notes.append(
            "total_s = read + split + fit and evaluate each candidate and baseline + refit "
            "on all data + log + register (generation excluded, run in a child process); "
            "peak_rss_mb is this process's peak, i.e. the pipeline's")
        result.notes.append(f"registered version {report.version} in {settings.mlflow_uri}")
    finally:
        if keep is None:
            shutil.rmtree(state, ignore_errors=True)
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark()


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("train")
    def train_command(
        residents: int = typer.Option(DEFAULT_RESIDENTS, help=f"Simulated residents "
                                      f"({FULL_RESIDENTS:,} for the scale claim)."),
        weeks: int = typer.Option(DEFAULT_WEEKS, help="Simulated weeks (after a year of "
                                  "history)."),
        intensity: float = typer.Option(1.0, help="Multiply every resident's activity."),
        seed: int = typer.Option(7),
        candidates: str = typer.Option("", help="Deployable candidates (comma-separated; "
                                       "default: all of them)."),
        baselines: str = typer.Option(",".join(DEFAULT_BASELINES),
                                      help="Extra baselines beyond the popularity ones "
                                      "(overall, neighbourhood, segment), which are always "
                                      "evaluated ('' for none)."),
        refit: bool = typer.Option(True, help="Refit on all data (as bouquet train does)."),
        log_dir: Path = typer.Option(None, help="Reuse this event log instead of simulating."),
        keep: Path = typer.Option(None, help="Keep the state (log, MLflow store) here."),
        progress: bool = typer.Option(True, help="Progress bars."),
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
    ) -> None:
        """Simulate the demo city at scale, then time build → train → evaluate → register."""
        result = run_benchmark(
            residents=residents, weeks=weeks, seed=seed, intensity=intensity,
            candidates=tuple(c.strip() for c in candidates.split(",") if c.strip()) or None,
            baselines=tuple(b.strip() for b in baselines.split(",") if b.strip()),
            refit=refit, log_dir=log_dir, keep=keep, progress=progress)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
