"""``bouquet bench engagement``: time and memory of the operator report on a realistic log.

A synthetic event log with a heavy-tailed cadence (:mod:`bouquet.analytics.synthetic`) is
written to a temporary folder a week at a time (generation stays out of core), then the
report runs in a child process of its own, so that its peak memory is the report's alone
(generation excluded): the log reduced through the view that de-duplicates and applies
erasures, every engagement table for every dimension value, the funnel and uplift, and
every figure of the API rendered once (suppression included), with DuckDB over the Parquet
files (:class:`~bouquet.analytics.logdb.LogDatabase`, what Bouquet serves) counting every
contact class. (The in-memory pandas computation it replaced lives on only as the tests'
oracle; docs/engagement.md keeps its last measured figures beside DuckDB's.)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from bouquet.analytics.engagement import CadenceRules
from bouquet.analytics.figures import BREAKDOWNS, FIGURES, engagement_figure
from bouquet.analytics.funnel import uplift
from bouquet.analytics.synthetic import SyntheticSpec, write
from bouquet.benchmarks.harness import BenchResult, peak_rss_mb, print_result, write_json
from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)

#: Events per resident per year of the synthetic city (measured: 5.2 M events for 80,000
#: residents over 365 days); ``--events`` sizes the city from it.
EVENTS_PER_RESIDENT_YEAR = 65.0


def report(root: Path, k: int, memory_limit: str, threads: int) -> dict[str, Any]:
    """The whole report, timed phase by phase (run in a child process)."""
    from bouquet.analytics.logdb import CLASSES, LogDatabase

    catalog = load_catalog(None)
    cpu, started = time.process_time(), time.perf_counter()
    db = LogDatabase(root, catalog, memory_limit=memory_limit, threads=threads,
                     temp_dir=root.parent / "spill")
    read_s = time.perf_counter() - started
    eng = db.engagement(CLASSES, CadenceRules())
    compute_s = time.perf_counter() - started - read_s
    uplift(db.funnel())
    for figure in FIGURES:
        for by in BREAKDOWNS:
            engagement_figure(eng, figure, k, by=by, last=26)
    return {"read_s": read_s, "compute_s": compute_s,
            "report_s": time.perf_counter() - started,
            "report_cpu_s": time.process_time() - cpu,
            "report_peak_rss_mb": peak_rss_mb(),
            "events": int(eng.summary["events"])}


def _child(root: Path, k: int, memory_limit: str, threads: int,
           timeout_s: float) -> dict[str, Any] | None:
    """:func:`report` in a fresh interpreter; None when it failed or ran out of time."""
    code = ("import json, sys; from pathlib import Path; "
            "from bouquet.benchmarks.engagement import report; "
            "print(json.dumps(report(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], "
            "int(sys.argv[4]))))")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(root), str(k),
                               memory_limit, str(threads)], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        log.warning("the report ran out of time (%.0f s)", timeout_s)
        return None
    if done.returncode != 0:
        log.warning("the report failed: %s", done.stderr.strip()[-2000:])
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_benchmark(residents: int = 80_000, days: int = 365, seed: int = 11,
                  events: int | None = None,
                  log_dir: Path | None = None, k: int = 5, memory_limit: str = "1GB",
                  threads: int = 2, timeout_s: float = 3600) -> BenchResult:
    """Generate a log (``events`` sizes the city over ``days``, else ``residents``), then
    time the report in its own process."""
    if events is not None:
        residents = max(100, math.ceil(events / (EVENTS_PER_RESIDENT_YEAR * days / 365)))
    catalog = load_catalog(None)
    result = BenchResult("engagement", params={
        "residents": residents, "days": days, "seed": seed, "small_cell_k": k,
        "duckdb_memory_limit": memory_limit,
        "duckdb_threads": threads})
    owned = log_dir is None
    base = Path(tempfile.mkdtemp(prefix="bq-bench-eng-")) if owned else Path(log_dir)
    root = base / "log"
    try:
        started = time.perf_counter()
        written = write(root, catalog, SyntheticSpec(residents=residents, days=days,
                                                     seed=seed), days_per_chunk=7)
        result.add("events", written, "events")
        result.add("generate_s", time.perf_counter() - started, "s")
        found = _child(root, k, memory_limit, threads, timeout_s)
        if found is None:
            result.notes.append(f"the report failed or ran over {timeout_s:.0f} s (see log)")
        else:
            for name in ("read_s", "compute_s", "report_s", "report_cpu_s"):
                result.add(name, found[name], "s")
            result.add("report_peak_rss_mb", found["report_peak_rss_mb"], "MB")
            result.add("events_read", found["events"], "events")
        result.notes.append("report_s = the log reduced through the de-duplicating, "
                            "erasure-applying view + every table over every contact class + "
                            "funnel and uplift + every figure × breakdown rendered and "
                            "suppressed, in a child process whose peak RSS is "
                            "report_peak_rss_mb (generation excluded)")
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark(memory_limit=settings.analytics_memory_limit,
                         threads=settings.analytics_threads)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("engagement")
    def engagement_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        residents: int = typer.Option(80_000, help="Synthetic residents (~65 events each "
                                      "over a year)."),
        events: int | None = typer.Option(None, "--events", help="Size the city to about "
                                          "this many events instead of --residents."),
        days: int = typer.Option(365, help="Days of history."),
        seed: int = typer.Option(11),
        memory_limit: str = typer.Option("1GB", help="DuckDB's memory limit."),
        threads: int = typer.Option(2, help="DuckDB's threads."),
        timeout_s: float = typer.Option(3600, help="Give up on the report after this long."),
    ) -> None:
        """Time the engagement report (read, compute, funnel, every figure) and its peak
        memory (DuckDB over the Parquet log) on a synthetic log of realistic cadence."""
        result = run_benchmark(residents=residents, days=days, seed=seed, events=events,
                               memory_limit=memory_limit,
                               threads=threads, timeout_s=timeout_s)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
