"""``bouquet replay valleybike PATH``: real bike-share trips as interaction events.

    bouquet replay valleybike ../shared/data/valleybike/trips.tsv.gz              # → Kafka
    bouquet replay valleybike PATH --speedup 86400                                # a day a second
    bouquet replay valleybike PATH --to eventlog --limit 10000
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.settings import get_settings

log = logging.getLogger(__name__)
replay_app = typer.Typer(help="Replay real interaction logs through Bouquet.",
                         no_args_is_help=True)
console = Console()


class Target(StrEnum):
    KAFKA = "kafka"
    EVENTLOG = "eventlog"


@replay_app.command()
def valleybike(
    path: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="trips.tsv(.gz): route_id, user_id, started_at, ended_at"),
    speedup: float | None = typer.Option(None, "--speedup", min=1.0,
                                         help="Compress the log's time this many times "
                                              "(86400: a day per second)."),
    as_fast_as_possible: bool = typer.Option(False, "--as-fast-as-possible",
                                             help="No pacing (the default)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Read only the first N "
                                     "rows of the file."),
    to: Target = typer.Option(Target.KAFKA, "--to", help="Through Kafka (ingestion) or "
                              "straight into the event log."),
    keep_short: bool = typer.Option(False, "--keep-short", help="Keep trips under a minute "
                                    "(false starts; dropped by default)."),
    assign_neighbourhoods: bool = typer.Option(False, "--assign-neighbourhoods",
                                               help="Give each rider a catalog neighbourhood "
                                                    "picked from their pseudonym (demo only)."),
    grant_consent: bool = typer.Option(False, "--grant-consent",
                                       help="Send a consent=1 event per rider (they never "
                                            "opted in: for experiments only)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the counts here."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Each kept trip → one ``use`` of ``bike-share`` by the pseudonymised rider at the
    trip's start; one ``profile`` per rider. Bad rows are counted, never repaired."""
    from bouquet.simulation.runner import replay_valleybike

    if speedup and as_fast_as_possible:
        console.print("[red]error:[/] --speedup and --as-fast-as-possible exclude each other")
        raise typer.Exit(2)
    if speedup and to != Target.KAFKA:
        console.print("[red]error:[/] --speedup only applies to --to kafka")
        raise typer.Exit(2)
    settings = get_settings()
    if to == Target.KAFKA:
        from bouquet.localstack import ensure_topics

        ensure_topics(settings)
    summary, _ = replay_valleybike(settings, path, to=to.value, speedup=speedup, limit=limit,
                                   keep_short=keep_short,
                                   assign_neighbourhoods=assign_neighbourhoods,
                                   grant_consent=grant_consent, progress=progress)
    c = summary.counts
    table = Table("rows", "count", "what happened", title=f"replay of {path.name}")
    table.add_row("read", f"{c.rows:,}", "")
    table.add_row("missing or unparseable start", f"{c.missing_start:,}", "dropped")
    table.add_row("clock error (start far from route month)", f"{c.clock_error:,}", "dropped")
    table.add_row("end before start", f"{c.end_before_start:,}", "dropped")
    table.add_row("missing end (any start)", f"{c.missing_end:,}",
                  f"{c.missing_end_kept:,} with a valid start kept")
    table.add_row("under a minute", f"{c.short:,}",
                  "kept" if keep_short else "dropped (false starts)")
    table.add_row("kept trips → use events", f"{c.kept:,}",
                  f"{c.riders:,} riders, {c.first_start} … {c.last_start}")
    table.add_row("events sent", f"{summary.events:,}",
                  f"{summary.uses:,} use, {summary.profiles:,} profile, "
                  f"{summary.consents:,} consent → {summary.destination}")
    table.add_row("time", f"{summary.seconds:.1f} s", "")
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", "utf-8")


def register(app: typer.Typer) -> None:
    app.add_typer(replay_app, name="replay")
