"""``bouquet train``: retrain, evaluate against the baselines, log to MLflow, register.

Flags map onto :class:`~bouquet.pipelines.train.TrainOptions`; the command calls
:func:`~bouquet.pipelines.train.train` once and prints what happened. A problem the user can
fix (MLflow unreachable, empty event log, bad flag value) prints one line and exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.settings import get_settings


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        out[key.strip()] = value.strip()
    return out


def _csv(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def train_command(
    candidates: str = typer.Option("als,ease,itemknn,crossview",
                                   help="Deployable candidates evaluated; the best is "
                                   "registered."),
    param: list[str] = typer.Option(None, "--param", "-p",
                                    help="ALS hyper-parameter KEY=VALUE (repeatable)."),
    half_life_days: float = typer.Option(None, help="Event decay half-life in days "
                                         "(0 = no decay; default 120)."),
    log_alpha: float = typer.Option(None, help="Log scaling of repeated events (default 2)."),
    impression_weight: float = typer.Option(
        None, "--impressions", min=0, help="Weight of an impression: a view carrying a "
        "recommendation id (default: the setting, 0)."),
    compare_rule: list[str] = typer.Option(
        None, "--compare-rule", help="A confidence-rule variant: KEY=VALUE pairs, comma "
        "separated, refitted with the chosen model's recipe and compared with the "
        "configured rule on the same hold-out (repeatable)."),
    cutoff: str = typer.Option(None, help="Temporal split date YYYY-MM-DD (default: "
                               "--test-weeks before the last event)."),
    test_weeks: int = typer.Option(4, min=1, help="Weeks after the cut-off held out."),
    positive_types: str = typer.Option("subscribe,use,pay",
                                       help="Event types that count as test positives."),
    positives: str = typer.Option("organic", help="Which take-ups are test positives: "
                                  "organic (not following a recommendation) or all."),
    ks: str = typer.Option("5,10,20", help="Cut-offs K of the ranking metrics."),
    primary_metric: str = typer.Option("bundles.ndcg_at_10",
                                       help="Metric that decides promotion."),
    baselines: str = typer.Option(
        "bpr", help="Extra baselines evaluated in the same run ('' for none); popularity, "
        "by neighbourhood and by segment always are."),
    refit: bool = typer.Option(True, help="Refit on all data for the artifact."),
    register: bool = typer.Option(True, help="Register a model version."),
    force: bool = typer.Option(False, "--force", help="Make the new version champion "
                               "whatever its metric."),
    publish: bool = typer.Option(False, "--publish", help="Publish the champion to Redis "
                                 "after the run (otherwise serving changes only with "
                                 "`bouquet publish`)."),
    search: str = typer.Option(None, help="Hyper-parameter search: grid or random."),
    trials: int = typer.Option(None, min=1, help="Search trials (random) or grid cap."),
    space: list[str] = typer.Option(None, "--space", help="Search dimension KEY=V1,V2,... "
                                    "(repeatable; default: a small ALS grid)."),
    seed: int = typer.Option(0, help="Seed of the random search."),
    run_name: str = typer.Option(None, help="MLflow run name."),
    progress: bool = typer.Option(True, help="Progress bars."),
    json_path: Path = typer.Option(None, "--json", help="Write the run report here."),
) -> None:
    """Train every candidate model on the event log, evaluate them against the baselines on
    a temporal hold-out, log everything to MLflow and register the best; it becomes champion
    only when it beats popularity and the current champion with confidence."""
    import pandas as pd

    from bouquet.core.catalog import CatalogError
    from bouquet.pipelines.registry import RegistryError
    from bouquet.pipelines.tracking import TrackingUnavailable
    from bouquet.pipelines.train import TrainOptions, train

    dataset: dict[str, Any] = {}
    if half_life_days is not None:
        dataset["half_life_days"] = half_life_days  # 0 disables decay
    if log_alpha is not None:
        dataset["log_alpha"] = log_alpha
    if impression_weight is not None:
        dataset["impression_weight"] = impression_weight
    variants = tuple({k: _value(v) for k, v in _pairs(_csv(text), "--compare-rule").items()}
                     for text in compare_rule or [])
    try:
        options = TrainOptions(
            candidates=tuple(_csv(candidates)),
            params={k: _value(v) for k, v in _pairs(param, "--param").items()},
            dataset=dataset,
            cutoff=pd.Timestamp(cutoff, tz="UTC") if cutoff else None,
            test_weeks=test_weeks, positive_types=tuple(_csv(positive_types)),
            positives=positives,
            ks=tuple(int(k) for k in _csv(ks)), primary_metric=primary_metric,
            baselines=tuple(_csv(baselines)), refit=refit, register=register, force=force,
            search=search, trials=trials,
            space={k: [_value(v) for v in _csv(values)]
                   for k, values in _pairs(space, "--space").items()},
            seed=seed, run_name=run_name, progress=progress, compare_rules=variants)
        report = train(get_settings(), options)
    except (TrackingUnavailable, RegistryError, CatalogError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if report.decision is not None and report.decision.promote and report.version:
        from bouquet.privacy.audit import cli_actor, record_action

        record_action(get_settings(), "promotion", actor=f"system:bouquet-train ({cli_actor()})",
                      target=f"model:{get_settings().registered_model}",
                      to_version=report.version, run_id=report.run_id,
                      reason=report.decision.reason)
    _print(report)
    if publish:
        from bouquet.commands.publish import publish_registered

        published = publish_registered(progress=progress)
        Console().print(f"published {published.version}: serving switches within a second")
    elif report.version is not None:
        Console().print("serving is unchanged until `bouquet publish` runs "
                        "(or train with --publish)")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_as_json(report), indent=1, default=str) + "\n")


def _print(report: Any) -> None:
    console = Console(width=max(Console().width, 110))
    k = report.primary_metric.rpartition("_at_")[2]
    table = Table(title=f"run {report.run_id} — split {report.split['id']} "
                  f"(cut-off {report.split['cutoff'][:10]}, {report.split['test_weeks']} weeks)",
                  title_justify="left")
    table.add_column("candidate")
    for target in ("services", "bundles"):
        for name in ("recall", "ndcg"):
            table.add_column(f"{target} {name}@{k}", justify="right")
    names = sorted({key.partition("/")[0] for key in report.metrics if "/" in key}
                   - {"promotion", "time"})
    for name in names:
        cells = []
        for target in ("services", "bundles"):
            for metric in ("recall", "ndcg"):
                value = report.metrics.get(f"{name}/{target}.{metric}_at_{k}")
                cells.append("-" if value is None or value != value else f"{value:.4f}")
        table.add_row(f"{name} (chosen)" if name == report.model else name, *cells)
    console.print(table)
    total = sum(stage["s"] for stage in report.stages.values())
    for note in report.notes:
        console.print(f"note: {note}")
    if not report.model:
        console.print("no candidate could be registered; serving is unchanged")
        return
    console.print(f"{report.model}: {report.primary_metric} = {report.primary_value:.4f} on "
                  f"{report.eval_residents:,} hold-out residents (trained on "
                  f"{report.dataset['residents']:,}); {total:.1f} s")
    if report.version is not None:
        decision = report.decision
        console.print(f"registered version {report.version}: "
                      f"{'now champion' if decision.promote else 'not promoted'} "
                      f"({decision.reason})")
        if not decision.promote and decision.champion_version is None \
                and report.segment_lists is not None:
            served = report.segment_lists
            console.print("without a champion, consenting residents get "
                          f"{'their segment' if served.serve else 'their neighbourhood'}'s "
                          f"popular list ({served.reason})")
    else:
        console.print("not registered (--no-register)")


def _as_json(report: Any) -> dict[str, Any]:
    out = dict(report.__dict__)
    out["decision"] = None if report.decision is None else report.decision.__dict__
    out["segment_lists"] = (None if report.segment_lists is None
                            else report.segment_lists.__dict__)
    out["primary_value"] = report.primary_value
    return out


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
