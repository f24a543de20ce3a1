"""``bouquet bench families``: what serving each model family costs, at two sizes.

For the demo city (models trained on a simulated city) and for Youshu's shape (32,770
services × 4,771 bundles; random weights of the trained models' shapes and densities), each
family's serving view is measured as publish stores it and serving loads it: the blob's
size, the time to load it, and the median time of one fold-in (``recent_scores`` of eight
recent services and one bundle). docs/serving.md carries the table of a run.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import typer
from threadpoolctl import threadpool_limits

from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.core.settings import Settings
from bouquet.models.confidence import ConfidenceRule, Strengths
from bouquet.models.deployable import DeployableModel, from_blob
from bouquet.models.factor import FactorModel
from bouquet.models.linear import LinearModel, LinearTerm, TermGroup

log = logging.getLogger(__name__)
YOUSHU_SHAPE = (32_770, 4_771)


def measure(result: BenchResult, name: str, model: DeployableModel,
            rng: np.random.Generator, calls: int = 300) -> None:
    """Blob size, load time and median fold-in time of ``model``'s serving view."""
    blob = model.serving_view().to_blob()
    started = time.perf_counter()
    loaded = from_blob(blob)
    load_ms = (time.perf_counter() - started) * 1000
    n_s, n_b = len(model.service_ids), len(model.bundle_ids)
    picks = rng.choice(n_s, size=min(8, n_s), replace=False)
    strengths = Strengths({int(i): float(v) for i, v in zip(picks, rng.random(len(picks)) * 5
                                                             + 0.5, strict=True)},
                          {int(rng.integers(n_b)): 2.0})
    loaded.recent_scores(strengths, "b")
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        loaded.recent_scores(strengths, "b")
        times.append(time.perf_counter() - started)
    result.add(f"{name}.blob_mb", len(blob) / 2**20, "MB")
    result.add(f"{name}.load_ms", load_ms, "ms")
    result.add(f"{name}.recent_scores_us", statistics.median(times) * 1e6, "µs")


def demo_city_models(residents: int, seed: int) -> dict[str, DeployableModel]:
    """ALS, EASE and the cross-view scorer trained on a simulated demo city."""
    from bouquet.core.catalog import load_catalog
    from bouquet.pipelines.candidates import make_candidate
    from bouquet.pipelines.dataset import build_dataset, load_event_arrays, rule_from_settings
    from bouquet.simulation.runner import simulate

    with tempfile.TemporaryDirectory(prefix="bq-bench-families-") as tmp:
        settings = Settings(env="test", state_dir=Path(tmp))
        simulate(settings, residents=residents, weeks=12, seed=seed, end=date(2025, 6, 2),
                 progress=False, save_residents=False)
        data = build_dataset(load_event_arrays(settings, load_catalog()),
                             rule_from_settings(settings))
    return {kind: make_candidate(kind).fit(data).to_deployable(data)
            for kind in ("als", "ease", "crossview")}


def youshu_shaped_models(rng: np.random.Generator) -> dict[str, DeployableModel]:
    n_s, n_b = YOUSHU_SHAPE
    common = {"service_ids": [f"s{i}" for i in range(n_s)],
              "bundle_ids": [f"b{i}" for i in range(n_b)],
              "bundle_services": {f"b{i}": [f"s{j}" for j in rng.choice(n_s, 37, replace=False)]
                                  for i in range(n_b)},
              "neighbourhoods": [], "rule": ConfidenceRule({"use": 1.0}),
              "popular_services": np.zeros((1, n_s)), "popular_bundles": np.zeros((1, n_b))}
    models: dict[str, DeployableModel] = {"factor64": FactorModel(
        **common, service_factors=rng.normal(size=(n_s, 64)),
        bundle_factors=rng.normal(size=(n_b, 64)), regularization=1.0)}

    def per_column(rows: int, cols: int, k: int) -> sp.csr_matrix:
        r = np.concatenate([rng.choice(rows, k, replace=False) for _ in range(cols)])
        c = np.repeat(np.arange(cols), k)
        return sp.csr_matrix((rng.normal(size=len(r)).astype(np.float32), (r, c)),
                             shape=(rows, cols))

    for k in (50, 200):
        terms = [LinearTerm("b", "b", per_column(n_b, n_b, k), True, 0),
                 LinearTerm("s", "b", per_column(n_s, n_b, k), True, 0),
                 LinearTerm("s", "b", per_column(n_s, n_b, k), False, 1),
                 LinearTerm("s", "s", per_column(n_s, n_s, k), False, 0)]
        groups = [TermGroup("b", 0, 1.0, True), TermGroup("b", 1, 0.05, True),
                  TermGroup("s", 0)]
        models[f"crossview_top{k}"] = LinearModel(**common, terms=terms, groups=groups,
                                                  top_k=k)
    return models


def run_benchmark(residents: int = 4000, seed: int = 5) -> BenchResult:
    result = BenchResult("families", params={"demo_city_residents": residents, "seed": seed,
                                             "youshu_shape": list(YOUSHU_SHAPE)})
    rng = np.random.default_rng(seed)
    with threadpool_limits(1, "blas"):
        for kind, model in demo_city_models(residents, seed).items():
            measure(result, f"demo.{kind}", model, rng)
        for name, model in youshu_shaped_models(rng).items():
            measure(result, f"youshu.{name}", model, rng)
    n_s, n_b = YOUSHU_SHAPE
    result.add("youshu.crossview_dense_mb", (n_b * n_b + 2 * n_s * n_b) * 4 / 2**20, "MB")
    result.notes.append("Youshu-shaped models carry random weights of the trained shapes; "
                        "the dense cross-view figure is what its weights would take in "
                        "float32 without the sparse serving form")
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802  (the harness's name)
    return run_benchmark()


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("families")
    def families(residents: int = typer.Option(4000, help="Residents of the demo city."),
                 seed: int = typer.Option(5),
                 json_path: Path = typer.Option(None, "--json")) -> None:
        """Serving cost of each model family (blob size, load, fold-in) at the demo city's
        and Youshu's sizes."""
        result = run_benchmark(residents, seed)
        print_result(result)
        if json_path:
            write_json(result, json_path)
