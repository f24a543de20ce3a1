"""``bouquet bench NAME [--json FILE]`` and ``bouquet bench all``.

Each benchmark module listed in :data:`BENCHMARKS` defines ``register(bench_app)`` (its own
sub-command) and ``DEFAULT`` — a callable taking the settings and returning a
:class:`~bouquet.benchmarks.harness.BenchResult` — for ``bench all``, which runs them in
that order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import typer

from bouquet.benchmarks import (
    bundles,
    engagement,
    families,
    ingest,
    outreach,
    screen,
    serve,
    soak,
    train,
)
from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.core.settings import get_settings

log = logging.getLogger(__name__)
bench_app = typer.Typer(help="Benchmarks; each prints a table and can write contract JSON.",
                        no_args_is_help=True)
#: Every benchmark, in the order ``bench all`` runs them.
BENCHMARKS: tuple[ModuleType, ...] = (bundles, engagement, families, ingest, outreach, screen,
                                      serve, soak, train)
#: Benchmarks that ``bench all`` runs a second time on a three-primary Redis Cluster
#: (``DEFAULT_REDIS_CLUSTER``), right after the single-Redis run, so both sets of figures
#: sit side by side in the combined file.
ON_REDIS_CLUSTER: tuple[ModuleType, ...] = (ingest, serve)


@bench_app.command("all")
def run_all(
    json_path: Path = typer.Option(Path("results/bench.json"), "--json",
                                   help="Combined result file."),
    only: list[str] = typer.Option(None, "--only", help="Run only these benchmarks."),
) -> None:
    """Run every benchmark with its defaults and write one combined file."""
    results: list[BenchResult] = []
    for module in BENCHMARKS:
        name = module.__name__.rsplit(".", 1)[-1]
        if only and name not in only:
            continue
        runs = [module.DEFAULT]
        if module in ON_REDIS_CLUSTER:
            runs.append(module.DEFAULT_REDIS_CLUSTER)
        for run in runs:
            log.info("running benchmark %s (%s)", name, run.__name__)
            result = run(get_settings())
            print_result(result)
            results.append(result)
            write_json(results, json_path)  # keep what finished even if a later one fails
    typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    for module in BENCHMARKS:
        module.register(bench_app)
    app.add_typer(bench_app, name="bench")
