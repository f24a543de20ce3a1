"""``bouquet simulate run | calibrate | compare``: the demo city's residents.

    bouquet simulate run --residents 5000 --weeks 12 --seed 1          # → event log
    bouquet simulate run --to kafka --rate 5000                         # → the topic
    bouquet simulate calibrate                                          # real vs simulated
    bouquet simulate compare                                            # 4 policies × 20 cities
    bouquet simulate lists --policies popular,model,oracle              # list quality, minutes
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.settings import get_settings

if TYPE_CHECKING:
    from bouquet.simulation.closed_loop import PolicyRun

log = logging.getLogger(__name__)
simulate_app = typer.Typer(help="Simulated residents of the demo city: generate events, check "
                           "the calibration, compare recommendation policies.",
                           no_args_is_help=True)
console = Console()
if not console.is_terminal:  # piped or captured: wide enough for the comparison table
    console = Console(width=160)


class Target(StrEnum):
    EVENTLOG = "eventlog"
    KAFKA = "kafka"


def _write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n", "utf-8")
        console.print(f"wrote {path}")


@simulate_app.command()
def run(
    residents: int = typer.Option(3000, "--residents", "-n", min=1, help="Residents."),
    weeks: int = typer.Option(12, "--weeks", "-w", min=1, max=520, help="Simulated weeks."),
    seed: int = typer.Option(1, "--seed", help="Same seed, same events."),
    to: Target = typer.Option(Target.EVENTLOG, "--to", help="Event log (fast, direct) or the "
                              "Kafka topic (through ingestion)."),
    rate: float | None = typer.Option(None, "--rate", min=1, help="Kafka: events per second "
                                      "at most (default: as fast as the broker takes them)."),
    end: str | None = typer.Option(None, "--end", help="Day after the last simulated day, "
                                   "YYYY-MM-DD (default: today, so nothing is in the future)."),
    policy: str = typer.Option("none", "--policy", help="What residents are shown: none, "
                               "popular, random (or a registered policy)."),
    intensity: float = typer.Option(1.0, "--intensity", min=0.01, help="Multiply every "
                                    "resident's activity (load tests; leaves the calibration)."),
    until_week: int | None = typer.Option(None, "--until-week", min=0, help="Stop after this "
                                          "many weeks (resume later with --from-week)."),
    from_week: int = typer.Option(0, "--from-week", min=0, help="Resume a run stopped with "
                                  "--until-week (same seed, residents, weeks and --end): "
                                  "earlier weeks are simulated again, not sent."),
    api_url: str | None = typer.Option(None, "--api-url", help="Residents are answered by "
                                       "the serving API at this URL (policy 'api'); to "
                                       "Kafka, each week waits until ingestion applied it."),
    outreach: bool = typer.Option(False, "--outreach", help="With --api-url: the "
                                  "deployment's outreach planner plans every simulated day "
                                  "and this run is its messaging gateway (docs/outreach.md)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the run summary here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Generate residents and their events into the event log or Kafka."""
    from bouquet.simulation.runner import simulate

    if outreach and api_url is None:
        raise typer.BadParameter("--outreach needs --api-url: the outreach planner plans "
                                 "on a running deployment", param_hint="--outreach")
    settings = get_settings()
    if to == Target.KAFKA:
        from bouquet.localstack import ensure_topics

        ensure_topics(settings)
    summary, _ = simulate(settings, residents=residents, weeks=weeks, seed=seed, to=to.value,
                          rate=rate, end=date.fromisoformat(end) if end else None,
                          policy=policy, intensity=intensity, progress=progress,
                          from_week=from_week, until_week=until_week, api_url=api_url,
                          outreach=outreach)
    table = Table("figure", "value", title=f"simulation {summary.run_tag}")
    table.add_row("residents", f"{summary.residents:,}")
    table.add_row("period", f"{summary.start} … {summary.end} ({summary.weeks} weeks, "
                  "plus a year of history)")
    table.add_row("events", f"{summary.events:,} → {summary.destination}")
    for kind, count in summary.events_by_type.items():
        table.add_row(f"  {kind}", f"{count:,}")
    table.add_row("cadence at the end", ", ".join(f"{k} {v:.1%}"
                                                  for k, v in summary.cadence.items()))
    if summary.outreach is not None:
        found = summary.outreach
        table.add_row("outreach", f"{found['days_planned']} days planned: "
                      f"{found['planned']:,} nudges planned, {found['delivered']:,} delivered "
                      f"(notify), {found['opened']:,} opened; {int(found['optouts']):,} "
                      f"opt-outs of {int(found['contactable_at_start']):,} contactable "
                      "residents")
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.events / summary.seconds:,.0f} "
                  f"events/s), peak RSS {summary.peak_rss_mb:,.0f} MB")
    table.add_row("residents file", summary.residents_path or "-")
    console.print(table)
    _write_json(json_path, summary.as_dict())


#: Units of the calibration statistics in ``calibrate --json``.
CALIBRATION_UNITS = {
    "median_per_person": "uses", "share_once": "share of people",
    "top10_share": "share of uses", "dau_mau": "ratio", "wau_mau": "ratio",
    "weeks_active_share": "share of weeks", "week_persistence": "probability",
    "heavy_weeks_active_share": "share of weeks", "weekly_of_active": "share of people",
}
#: The simulated calendar of the documented calibration figures (any other gives slightly
#: different figures: weekday alignment and season).
CALIBRATION_END = "2025-06-02"


@simulate_app.command()
def calibrate(
    valleybike: Path = typer.Option(Path("../shared/data/valleybike/trips.tsv.gz"),
                                    "--valleybike", help="The real bike-share log."),
    residents: int = typer.Option(50000, "--residents", "-n", min=100, help="Simulated "
                                  "residents (fewer make the regularity statistics noisy)."),
    seed: int = typer.Option(1, "--seed"),
    end: str = typer.Option(CALIBRATION_END, "--end", help="Day after the last simulated "
                            "day, YYYY-MM-DD."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
) -> None:
    """Measure the cadence statistics on the real log's pinned window (ISO weeks 23-34 of
    2019, and of 2020 as a check) and on 12 simulated weeks; exit 1 when a simulated figure
    is outside its tolerance."""
    from bouquet.simulation.calibration import (
        CHECK_YEAR,
        REFERENCE_YEAR,
        STATISTICS,
        TOLERANCES,
        WINDOW_WEEKS,
        valleybike_statistics,
    )
    from bouquet.simulation.runner import simulate

    if not valleybike.exists():
        console.print(f"[red]error:[/] {valleybike} not found (pass --valleybike PATH)")
        raise typer.Exit(2)
    real = valleybike_statistics(valleybike)
    ref, check = real[REFERENCE_YEAR], real[CHECK_YEAR]
    summary, _ = simulate(get_settings(), residents=residents, weeks=WINDOW_WEEKS, seed=seed,
                          end=date.fromisoformat(end), to="memory", progress=False,
                          calibrate=True, save_residents=False)
    sim = summary.calibration or {}
    table = Table("statistic", f"real {REFERENCE_YEAR}", f"real {CHECK_YEAR}", "simulated",
                  "tolerance", "",
                  title=f"cadence calibration: ValleyBike ISO weeks 23-34 vs {WINDOW_WEEKS} "
                        f"simulated weeks of {residents:,} residents (seed {seed})")
    failed = False
    for name in STATISTICS:
        low, high = TOLERANCES[name]
        ok = low <= sim[name] <= high
        failed |= not ok
        table.add_row(name, f"{getattr(ref, name):.3f}", f"{getattr(check, name):.3f}",
                      f"{sim[name]:.3f}", f"[{low:g}, {high:g}]",
                      "[green]ok[/]" if ok else "[red]OUT[/]")
    for name in ("people", "heavy_people", "uses"):
        table.add_row(name, f"{getattr(ref, name):,}", f"{getattr(check, name):,}",
                      f"{int(sim[name]):,}", "", "")
    console.print(table)
    if json_path is not None:
        from bouquet.benchmarks.harness import BenchResult, write_json

        result = BenchResult("calibrate", params={
            "residents": residents, "weeks": WINDOW_WEEKS, "seed": seed, "end": end,
            "real_window": f"ISO weeks 23-34 of {REFERENCE_YEAR}",
            "check_window": f"ISO weeks 23-34 of {CHECK_YEAR}",
            "tolerances": {k: list(v) for k, v in TOLERANCES.items()},
        })
        for name in STATISTICS:
            unit = CALIBRATION_UNITS[name]
            result.add(f"real_{name}", getattr(ref, name), unit)
            result.add(f"sim_{name}", sim[name], unit)
            result.add(f"real_{CHECK_YEAR}_{name}", getattr(check, name), unit)
        for name in ("people", "heavy_people", "uses"):
            unit = "uses" if name == "uses" else "people"
            result.add(f"real_{name}", getattr(ref, name), unit)
            result.add(f"sim_{name}", sim[name], unit)
            result.add(f"real_{CHECK_YEAR}_{name}", getattr(check, name), unit)
        result.add("out_of_tolerance", sum(not TOLERANCES[k][0] <= sim[k] <= TOLERANCES[k][1]
                                           for k in STATISTICS), "statistics")
        write_json(result, json_path)
        console.print(f"wrote {json_path}")
    if failed:
        raise typer.Exit(1)


#: The policies of ``compare`` by default: the pull question, then the outreach question.
DEFAULT_POLICIES = "none,popular,model,oracle,popular+outreach,model+outreach"
#: ``--quick``: a small run for tests and a first look (not for conclusions).
QUICK_COMPARE = {"residents": 2000, "seeds": 2, "weeks": 4}


@simulate_app.command()
def compare(
    policies: str = typer.Option(DEFAULT_POLICIES, "--policies",
                                 help="Comma-separated: none, popular, model (Bouquet itself: "
                                 "train, publish and serve in the loop), random, oracle (the "
                                 "consent-respecting ceiling), popular+outreach and "
                                 "model+outreach (pull plus the outreach planner's nudges), "
                                 "or a registered policy."),
    weeks: int = typer.Option(12, "--weeks", "-w", min=4),
    seeds: int = typer.Option(20, "--seeds", min=1, help="Cities per policy (the default "
                              "is sized so the paired 95% interval of popular - none is "
                              "within 10% of popular's weekly share; see docs)."),
    first_seed: int = typer.Option(1, "--first-seed", min=0, help="The first seed; seeds "
                                   "follow it (keep seeds used for choices out)."),
    residents: int = typer.Option(10000, "--residents", "-n", min=100),
    k: int = typer.Option(3, "--k", min=1, max=20, help="Bundles shown per exposure."),
    retrain_every: int = typer.Option(2, "--retrain-every", min=1, help="The model policy "
                                      "retrains its family every N weeks."),
    force: bool = typer.Option(False, "--force-promotion", help="The model policy serves "
                               "its chosen family even when it does not beat popularity on "
                               "the hold-out (as `bouquet train --force`): a diagnostic of "
                               "the model's targeting, not the product's rule."),
    end: str | None = typer.Option(None, "--end", help="Day after the last simulated day, "
                                   "YYYY-MM-DD (default: today); fix it to reproduce figures."),
    quick: bool = typer.Option(False, "--quick", help=f"Small and fast ({QUICK_COMPARE}): "
                               "a smoke test, not evidence."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here "
                                          "(benchmark output contract)."),
    plot: Path | None = typer.Option(Path("results/simulate-compare"), "--plot",
                                     help="Write PLOT.png and PLOT.html (weekly share per "
                                     "week and policy)."),
    cap_sweep: bool = typer.Option(False, "--cap-sweep", help="Also run model+outreach at "
                                   "caps of 1, 2, 3, 4 nudges a week (minimum gap 7 days / "
                                   "cap) and plot weekly share against opt-outs "
                                   "(PLOT-outreach.png)."),
    optout_sensitivity: bool = typer.Option(False, "--optout-sensitivity", help="Also run "
                                            "model+outreach at the default cap with the "
                                            "opt-out probability × 1, × 0.5 and × 2."),
    sweep_residents: int | None = typer.Option(None, "--sweep-residents", min=100,
                                               help="Residents of the sweep and sensitivity "
                                               "runs (default: --residents)."),
    sweep_seeds: int | None = typer.Option(None, "--sweep-seeds", min=1, help="Seeds of the "
                                           "sweep and sensitivity runs (default: --seeds)."),
) -> None:
    """Share of residents at each use cadence after W weeks under each policy, with use,
    response and exposure events per resident per week beside it (mean and 95% confidence
    interval over seeds; the same seeds for every policy); the model's relative lift over
    popular and the share of the popular → consent-oracle gap it closes."""
    import os
    import time

    from bouquet.core.catalog import load_catalog
    from bouquet.simulation.closed_loop import (
        CADENCES,
        register_policy,
        run_figure,
        with_outreach,
    )
    from bouquet.simulation.closed_loop import compare as run_compare
    from bouquet.simulation.columns import CADENCE_CLASS_NAMES
    from bouquet.simulation.model_policy import ModelPolicy
    from bouquet.simulation.outreach_report import outreach_figures
    from bouquet.simulation.policies import PopularPolicy
    from bouquet.simulation.report import HEADLINE, benchmark_figures, headline, write_plot

    if quick:
        residents, seeds, weeks = (QUICK_COMPARE["residents"], QUICK_COMPARE["seeds"],
                                   QUICK_COMPARE["weeks"])
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # the model policy trains and publishes every few weeks of every run: its stage
        # logs would bury the tables (-v shows them)
        for name in ("bouquet.pipelines", "bouquet.models", "matplotlib"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings()
    def model_policy(seed: int) -> ModelPolicy:
        return ModelPolicy(settings, force=force, retrain_every_weeks=retrain_every)

    register_policy("model", model_policy)
    register_policy("model+outreach",
                    lambda seed: with_outreach(model_policy(seed), seed, settings=settings))
    register_policy("popular+outreach",
                    lambda seed: with_outreach(PopularPolicy(), seed, settings=settings))
    catalog = load_catalog(settings.catalog_path)
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), time.process_time()
    end_day = date.fromisoformat(end) if end else None
    with _progress(len(names) * seeds, "compare") as bar:
        result = run_compare(names, catalog, residents=residents, weeks=weeks,
                             seeds=list(range(first_seed, first_seed + seeds)), k=k,
                             end=end_day, on_run=bar)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    load_after = os.getloadavg()
    columns = ["weekly_or_better", *CADENCES]
    table = Table("policy", *[c if c != "weekly_or_better" else "weekly+" for c in columns],
                  title=f"use cadence after {weeks} weeks — {residents:,} residents, "
                        f"{seeds} seed(s), mean [95% CI]")
    for name in names:
        shares = result.shares(name)
        cells = []
        for c in columns:
            e = shares[c]
            # shares live in [0, 1]; the t interval is clipped there for display
            ci = ("" if e.low != e.low
                  else f" [{max(e.low, 0.0):.1%}, {min(e.high, 1.0):.1%}]")
            cells.append(f"{e.mean:.1%}{ci}")
        table.add_row(name, *cells)
    console.print(table)
    rates = Table("policy", *CADENCE_CLASS_NAMES,
                  title="events per resident per week, by cadence class, mean [95% CI]")
    for name in names:
        cells = []
        for e in result.per_resident_week(name).values():
            ci = "" if e.low != e.low else f" [{e.low:.3f}, {e.high:.3f}]"
            cells.append(f"{e.mean:.3f}{ci}")
        rates.add_row(name, *cells)
    console.print(rates)
    base = "popular" if "popular" in names else names[0]
    paired = Table("policy", *[label for label, *_ in HEADLINE],
                   title=f"paired difference from {base} (same seeds), mean [95% CI]")
    for name in names:
        if name == base:
            continue
        cells = []
        for _, figure, _, percent in HEADLINE:
            u = result.uplift(name, base, figure)
            scale, unit = (100, " pt") if percent else (1, "")
            ci = "" if u.low != u.low else f" [{scale * u.low:+.2f}, {scale * u.high:+.2f}]"
            cells.append(f"{scale * u.mean:+.2f}{unit}{ci}")
        paired.add_row(name, *cells)
    console.print(paired)
    found = headline(result)
    lines = []
    if found.lift is not None:
        e = found.lift
        lines.append(f"relative lift of model over popular (weekly or better, use): "
                     f"{e.mean:+.1%} [{e.low:+.1%}, {e.high:+.1%}]")
    if found.gap_closed is not None:
        e = found.gap_closed
        lines.append(f"share of the popular → oracle gap the model closes: {e.mean:.0%} "
                     f"[{e.low:.0%}, {e.high:.0%}]")
    served = [r for r in result.runs if r.policy == "model"]
    if served:
        promoted = [r for r in served if r.notes.get("family")]
        families = sorted({str(r.notes["family"]) for r in promoted})
        why = ("promotion forced (--force-promotion)" if force
               else "beat popularity on the hold-out")
        lines.append(f"model promoted ({why}) on {len(promoted)} of "
                     f"{len(served)} seeds{' (' + ', '.join(families) + ')' if families else ''}"
                     "; otherwise it served the popular lists")
    timing = (f"{len(result.runs)} runs in {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU; "
              f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
              f"({os.cpu_count()} CPUs)")
    outreach_lines = _outreach_lines(outreach_figures(result))
    for line in (*lines, *outreach_lines, timing):
        console.print(line)
    extra: list[tuple[str, float, str]] = []
    if cap_sweep or optout_sensitivity:
        from bouquet.simulation.outreach_sweep import run_sweep

        sweep_n = sweep_residents or residents
        sweep_s = sweep_seeds or seeds
        sweep_started = time.perf_counter()
        sweep = run_sweep(catalog, settings, model_policy, residents=sweep_n,
                          seeds=list(range(first_seed, first_seed + sweep_s)), weeks=weeks,
                          k=k, end=end_day, caps=cap_sweep, sensitivity=optout_sensitivity,
                          progress=_progress)
        console.print(sweep.table(title=f"outreach settings — {sweep_n:,} residents, "
                                  f"{sweep_s} seed(s), {weeks} weeks, mean [95% CI]"))
        extra = [*sweep.figures(), ("sweep_wall_s", time.perf_counter() - sweep_started, "s")]
        if plot is not None and cap_sweep:
            png = plot.with_name(plot.name + "-outreach").with_suffix(".png")
            sweep.plot(png, title=f"Cap sweep: weekly share (use) vs opt-outs — {sweep_n:,} "
                       f"residents, {sweep_s} seed(s)")
            console.print(f"wrote {png}")
    title = (f"Weekly-or-better share (use) per week — {residents:,} residents, "
             f"{seeds} seed(s)")
    if plot is not None:
        png, page = plot.with_suffix(".png"), plot.with_suffix(".html")
        write_plot(result, png, page, title=title, notes=[timing])
        console.print(f"wrote {png} and {page}")
    if json_path is not None:
        from bouquet.benchmarks.harness import BenchResult, write_json

        bench = BenchResult("compare", params={
            "policies": names, "residents": residents, "seeds": result.seeds, "weeks": weeks,
            "k": k, "retrain_every_weeks": retrain_every, "force_promotion": force,
            "end": end, "quick": quick, "cadence": "use"})
        for name, value, unit in (*benchmark_figures(result), *outreach_figures(result),
                                  *extra):
            bench.add(name, value, unit)
        if served:
            bench.add("model_promoted_seeds", len(promoted), "seeds")
        bench.add("wall_s", wall, "s")
        bench.add("cpu_s", cpu, "s")
        bench.add("load_average_before", load_before[0], "processes")
        bench.add("load_average_after", load_after[0], "processes")
        bench.notes.append(timing)
        bench.notes.append("runs (policy@seed: weekly or better, seconds[, family served]): "
                           + ", ".join(
                               f"{r.policy}@{r.seed} {100 * run_figure(r, 'weekly_or_better'):.2f}%"
                               f" {r.seconds:.1f}s"
                               + (f" {r.notes.get('family')}" if r.policy == "model" else "")
                               for r in result.runs))
        write_json(bench, json_path)
        console.print(f"wrote {json_path}")


def _outreach_lines(figures: list[tuple[str, float, str]]) -> list[str]:
    """The outreach answer in words (only the figures that were computed)."""
    found = {name: value for name, value, _ in figures}
    lines = []
    for name, label in (("lift_outreach_vs_pull", "relative lift of model+outreach over "
                         "model (pull only)"),
                        ("lift_model_outreach_vs_popular_outreach", "relative lift of "
                         "model+outreach over popular+outreach")):
        if name in found:
            lines.append(f"{label} (weekly or better, use): {found[name]:+.1%} "
                         f"[{found[name + '_ci_low']:+.1%}, {found[name + '_ci_high']:+.1%}]")
    name = "optout_rate_per_month@default_cap"
    if name in found:
        lines.append(f"opt-outs per month at the default cap (model+outreach): "
                     f"{found[name]:.2%} of contactable residents "
                     f"[{found[name + '_ci_low']:.2%}, {found[name + '_ci_high']:.2%}]")
    return lines


@simulate_app.command()
def lists(
    policies: str = typer.Option("popular,model,oracle", "--policies",
                                 help="Comma-separated policies (as for compare); popular and "
                                 "oracle bracket the figures."),
    residents: int = typer.Option(5000, "--residents", "-n", min=100),
    seeds: int = typer.Option(3, "--seeds", min=1),
    first_seed: int = typer.Option(101, "--first-seed", min=0, help="The first seed: the "
                                   "default keeps to the tuning seeds (101 on), out of "
                                   "compare's evaluation seeds (1-20)."),
    week: int = typer.Option(6, "--week", min=1, max=11, help="Weeks of popular lists "
                             "before the policies answer."),
    k: int = typer.Option(3, "--k", min=1, max=20),
    force: bool = typer.Option(False, "--force-promotion", help="The model policy serves "
                               "its chosen family whatever the hold-out says."),
    end: str | None = typer.Option("2025-06-02", "--end", help="Day after the window."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
) -> None:
    """How good each policy's lists are by the simulator's own truth: the daily use rate
    the first k bundles would add if shown once (P(click) × P(subscribe) × the routine),
    per consenting resident, on the same state for every policy. Seconds a seed, not
    compare's quarter of an hour: for tuning on seeds kept out of evaluations, never
    evidence of an effect (see docs/simulation.md)."""
    import statistics

    from bouquet.core.catalog import load_catalog
    from bouquet.simulation.list_quality import default_factories, judge
    from bouquet.simulation.model_policy import ModelPolicy

    settings = get_settings()
    names = [p.strip() for p in policies.split(",") if p.strip()]
    for name in ("bouquet.pipelines", "bouquet.models"):
        logging.getLogger(name).setLevel(logging.WARNING)
    catalog = load_catalog(settings.catalog_path)
    end_day = date.fromisoformat(end) if end else None
    per_seed = []
    for seed in range(first_seed, first_seed + seeds):
        factories = default_factories(names, seed)
        if "model" in factories:
            factories["model"] = lambda: ModelPolicy(settings, force=force)
        found = judge(factories, catalog, residents=residents, seed=seed, week=week, k=k,
                      end=end_day)
        per_seed.append({q.policy: q for q in found})
        console.print(f"seed {seed}: " + ", ".join(f"{q.policy} {1000 * q.top_k:.1f}"
                                                  for q in found))
    table = Table("policy", f"top {k}", "first", "gap closed", "seconds",
                  title=f"daily use rate added per 1,000 consenting residents by the lists "
                        f"— {residents:,} residents, week {week}, seeds {first_seed}.."
                        f"{first_seed + seeds - 1}")
    figures: dict[str, float] = {}
    for name in names:
        top_k = statistics.fmean(s[name].top_k for s in per_seed)
        top_1 = statistics.fmean(s[name].top_1 for s in per_seed)
        gap = None
        if {"popular", "oracle"} <= set(names):
            gap = statistics.fmean(
                (s[name].top_k - s["popular"].top_k) / (s["oracle"].top_k - s["popular"].top_k)
                for s in per_seed)
            figures[f"gap_closed@{name}"] = gap
        figures[f"list_gain@{name}"] = top_k
        table.add_row(name, f"{1000 * top_k:.1f}", f"{1000 * top_1:.1f}",
                      "" if gap is None else f"{gap:.0%}",
                      f"{statistics.fmean(s[name].seconds for s in per_seed):.1f}")
    console.print(table)
    _write_json(json_path, {"residents": residents, "seeds": list(range(first_seed,
                first_seed + seeds)), "week": week, "k": k, "force_promotion": force,
                "figures": figures})


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[PolicyRun], None]]:
    """A tqdm bar advanced once per finished run (the ``on_run`` it yields)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="run", leave=False) as shown:
        def done(run: PolicyRun) -> None:
            shown.set_postfix_str(f"{run.policy} seed {run.seed} {run.seconds:.0f}s")
            shown.update(1)

        yield done


def register(app: typer.Typer) -> None:
    app.add_typer(simulate_app, name="simulate")
