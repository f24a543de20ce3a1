"""``bouquet bench NAME [--json FILE]`` and ``bouquet bench all``.

Each benchmark module in :mod:`bouquet.benchmarks` that defines ``register(bench_app)``
adds its own sub-command, and ``DEFAULT`` — a callable taking the settings and
returning a :class:`~bouquet.benchmarks.harness.BenchResult` — for ``bench all``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path

import typer

from bouquet import benchmarks
from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.core.settings import get_settings

log = logging.getLogger(__name__)
bench_app = typer.Typer(help="Benchmarks; each prints a table and can write contract JSON.",
                        no_args_is_help=True)
_MODULES = [m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name != "harness"]


def _benchmark_modules() -> list:
    loaded = []
    for name in sorted(_MODULES):
        module = importlib.import_module(f"{benchmarks.__name__}.{name}")
        if hasattr(module, "register"):
            loaded.append(module)
    return loaded


@bench_app.command("all")
def run_all(
    json_path: Path = typer.Option(Path("results/bench.json"), "--json",
                                   help="Combined result file."),
    only: list[str] = typer.Option(None, "--only", help="Run only these benchmarks."),
) -> None:
    """Run every benchmark with its defaults and write one combined file."""
    results: list[BenchResult] = []
    for module in _benchmark_modules():
        name = module.__name__.rsplit(".", 1)[-1]
        if only and name not in only:
            continue
        log.info("running benchmark %s", name)
        result = module.DEFAULT(get_settings())
        print_result(result)
        results.append(result)
        write_json(results, json_path)  # keep what finished even if a later one fails
    typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    for module in _benchmark_modules():
        module.register(bench_app)
    app.add_typer(bench_app, name="bench")
