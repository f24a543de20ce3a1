"""``bouquet outreach plan [--date D]`` and ``bouquet outreach run``: the day's nudges.

``plan`` plans one day (default: today in ``BOUQUET_OUTREACH_TIMEZONE``), records it and
puts one message per nudge on the outreach topic for the city's messaging gateway;
``--dry-run`` only shows what it would do. ``run`` plans every day at
``BOUQUET_OUTREACH_PLAN_HOUR`` until SIGTERM / Ctrl-C. Both print the plan's report as JSON.
See docs/outreach.md.
"""

from __future__ import annotations

import json
from datetime import date

import typer

from bouquet.commands.schedule import stop_on_signals
from bouquet.core.settings import Settings, get_settings

outreach_app = typer.Typer(help="Outreach: plan and send the day's nudges (docs/outreach.md).",
                           no_args_is_help=True)


def planner_for(settings: Settings):  # type: ignore[no-untyped-def]
    """The planner of a deployment, with serving's filters (the rule serving answers with)."""
    from bouquet.core.catalog import load_catalog
    from bouquet.outreach.planner import Planner
    from bouquet.serving.ranking import OfferRanker

    catalog = load_catalog(settings.catalog_path)
    return Planner(settings, catalog, OfferRanker.from_settings(catalog, settings))


@outreach_app.command("plan")
def plan_command(
    day: str = typer.Option(None, "--date", help="Day to plan, YYYY-MM-DD (default: today, "
                            "local time)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Decide and report; record and "
                                 "send nothing."),
) -> None:
    """Plan one day's nudges: for every resident with contact consent at most one, the offer
    of highest expected cadence gain, on a channel they accept, at their own active hour
    outside quiet hours, within the caps; the holdout is never nudged."""
    from bouquet.core.outreach import PlanExists
    from bouquet.localstack import ensure_topics
    from bouquet.outreach.planner import NothingPublished

    settings = get_settings()
    try:
        when = date.fromisoformat(day) if day else None
    except ValueError:
        raise _fail(f"--date {day!r} is not YYYY-MM-DD") from None
    if not dry_run:
        ensure_topics(settings)
    try:
        report, _ = planner_for(settings).plan(when, dry_run=dry_run)
    except (PlanExists, NothingPublished, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(report.as_dict(), indent=2))
    if report.problems:
        raise typer.Exit(2)


@outreach_app.command("run")
def run_command() -> None:
    """Plan every day at BOUQUET_OUTREACH_PLAN_HOUR (local) until stopped (SIGTERM, Ctrl-C);
    a day already planned is skipped."""
    from bouquet.localstack import ensure_topics

    settings = get_settings()
    ensure_topics(settings)
    planned = planner_for(settings).run(stop_on_signals())
    typer.echo(f"outreach stopped after planning {planned} day(s)")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(outreach_app, name="outreach")
