"""``bouquet report engagement``: the operator's engagement tables in the terminal.

The same figures as the operator API and the dashboard (one metrics module, one
suppression), read from the event log of the configured deployment; today's and this
week's counters come from Redis when it answers.

    bouquet report engagement                       # city, last 12 weeks
    bouquet report engagement --by neighbourhood --weeks 4
    bouquet report engagement --json > engagement.json
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
import typer
from rich.console import Console
from rich.table import Table as RichTable

from bouquet.analytics.engagement import CADENCES, CadenceRules
from bouquet.analytics.figures import BadQuery
from bouquet.analytics.service import EngagementService, plain_dict
from bouquet.analytics.tables import Table
from bouquet.core.redisclient import SyncClient, redis_client
from bouquet.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
report_app = typer.Typer(help="Reports for operators (engagement frequency, funnel).",
                         no_args_is_help=True)
console = Console()
if not console.is_terminal:  # piped or captured: wide enough for the contacts table
    console = Console(width=160)


class Breakdown(StrEnum):
    ALL = "all"
    NEIGHBOURHOOD = "neighbourhood"
    DOMAIN = "domain"
    FACTOR = "factor"
    CHANNEL = "channel"


#: Columns printed per table: (column, header, kind).
_VIEWS: dict[str, list[tuple[str, str, str]]] = {
    "cadence": [("known", "known", "count"),
                *[(c, c, "count") for c in CADENCES],
                # the merged classes: what a row shows when a class alone is hidden
                ("weekly_plus", "weekly or better", "count"),
                ("active_window", "monthly or better", "count"),
                ("share_weekly_plus", "weekly+", "share"),
                ("share_dormant", "dormant %", "share")],
    "stickiness": [("dau_mean", "DAU (mean)", "mean"), ("wau", "WAU", "count"),
                   ("mau", "MAU 28d", "count"), ("dau_mau", "DAU/MAU", "share"),
                   ("wau_mau", "WAU/MAU", "share")],
    "contacts": [("active", "active", "count"), ("mean_per_known", "per known", "mean"),
                 ("mean_per_active", "per active", "mean"), ("p50", "p50", "count"),
                 ("p90", "p90", "count"), ("p99", "p99", "count"), ("h0", "0", "count"),
                 ("h1", "1", "count"), ("h2", "2", "count"), ("h3_4", "3-4", "count"),
                 ("h5_7", "5-7", "count"), ("h8_14", "8-14", "count"),
                 ("h15_plus", "15+", "count")],
    "monthly": [("mau", "MAU", "count"), ("dau_mean", "DAU (mean)", "mean"),
                ("wau_mean", "WAU (mean)", "mean"), ("dau_mau", "DAU/MAU", "share"),
                ("wau_mau", "WAU/MAU", "share")],
    "cohorts": [("months_since", "+months", "count"), ("cohort_size", "size", "count"),
                ("retained", "retained", "count"), ("retention", "retention", "share")],
    "lifetime": [("residents", "residents", "count"), ("contacts", "contacts", "count"),
                 ("share_single", "single contact", "share"), ("mean", "mean", "mean"),
                 ("p50", "p50", "count"), ("p90", "p90", "count"), ("p99", "p99", "count"),
                 ("top10_share", "top 10% share", "share")],
    "funnel": [("arm", "arm", "text"), ("residents_shown", "shown", "count"),
               ("opened_residents", "opened", "count"), ("opened_rate", "open %", "share"),
               ("subscribed_residents", "subscribed", "count"),
               ("subscribed_rate", "subscribe %", "share"),
               ("used_residents", "used", "count"), ("used_rate", "use %", "share")],
    "uplift": [("arm", "arm", "text"), ("stage", "stage", "text"), ("rate", "rate", "share"),
               ("baseline_rate", "baseline", "share"), ("difference", "diff", "points"),
               ("ci_low", "95% low", "points"), ("ci_high", "95% high", "points"),
               ("significant", "sig.", "text")],
}
_PERIOD = {"cadence": "week", "stickiness": "week", "contacts": "week", "monthly": "month",
           "cohorts": "cohort"}


def fmt(value: Any, kind: str) -> str:
    """The terminal's rendering of a cell (``◌`` = suppressed)."""
    if value is None:
        return "◌"
    if kind == "count":
        return f"{int(round(value)):,}"
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "points":
        return f"{100 * value:+.1f} pt"
    if kind == "mean":
        return f"{value:,.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _print(table: Table, view: str, by: str) -> None:
    columns = _VIEWS[view]
    lead = (["value"] if by != "all" else []) + ([_PERIOD[view]] if view in _PERIOD else [])
    out = RichTable(title=table.title, title_justify="left", header_style="bold")
    for name in lead:
        out.add_column(name)
    for _, header, kind in columns:
        out.add_column(header, justify="left" if kind == "text" else "right")
    for row in table.rows:
        partial = "*" if row.get("week_complete") is False else ""
        out.add_row(*[str(row.get(c)) + (partial if c == "week" else "") for c in lead],
                    *[fmt(row.get(c), kind) for c, _, kind in columns])
    if not table.rows:
        out.caption = "no data"
    elif any(r.get("week_complete") is False for r in table.rows):
        out.caption = "* week in progress (its live counters are below)"
    console.print(out)


def _live_client(settings: Settings) -> SyncClient | None:
    try:
        client = redis_client(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    except (redis.RedisError, OSError):  # a cluster client asks for the slot map at once
        return None
    try:
        client.ping()
    except (redis.RedisError, OSError):
        client.close()
        return None
    return client


def build(settings: Settings, *, weeks: int, by: str, value: str | None,
          live: bool = True, events: str = "use") -> dict[str, Any]:
    """Every table of the report (what ``--json`` prints): the figures over the contacts
    of the cadence class ``events`` (use: the headline), the summary of all three."""
    from bouquet.privacy.erasure import ErasureRegister

    svc = EngagementService(settings, ttl_s=0,
                            rules=CadenceRules.for_window(settings.engagement_window_days),
                            erasures=ErasureRegister.for_settings(settings))
    months = max(1, -(-weeks * 7 // 30))
    out: dict[str, Any] = {"summary": svc.summary(None)}
    for name in ("cadence", "stickiness", "contacts"):
        out[name] = svc.figure(name, by=by, value=value, last=weeks, events=events)
    out["monthly"] = svc.figure("monthly", by=by, value=value, last=months, events=events)
    out["cohorts"] = svc.figure("cohorts", by=by, value=value, last=months, events=events)
    out["lifetime"] = svc.figure("lifetime", by=by, value=value, events=events)
    out["funnel"] = svc.funnel(by=by, value=value)
    out["uplift"] = svc.uplift(by=by, value=value)
    out["live"] = None
    if live:
        client = _live_client(settings)
        if client is not None:
            try:
                out["live"] = svc.live(client)
            finally:
                client.close()
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Table):
        return value.to_json()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@report_app.command("engagement")
def engagement(
    as_json: bool = typer.Option(False, "--json", help="Print every table as JSON instead."),
    weeks: int = typer.Option(12, "--weeks", min=1, max=520, help="Latest ISO weeks shown."),
    by: Breakdown = typer.Option(Breakdown.ALL, "--by", help="Break figures down by."),
    value: str = typer.Option(None, "--value", help="Keep one value of --by."),
    event_log: Path = typer.Option(None, "--event-log",
                                   help="Event log folder (default: BOUQUET_EVENT_LOG_DIR)."),
    live: bool = typer.Option(True, "--live/--no-live",
                              help="Add today's and this week's Redis counters."),
    events: str = typer.Option("use", "--events",
                               help="Cadence class the figures count: use (the headline), "
                               "response or exposure."),
) -> None:
    """Cadence, stickiness, contacts per resident, months, cohorts, lifetime contacts and
    the funnel; use cadence is the headline, response and exposure beside it."""
    settings = get_settings()
    if event_log is not None:
        settings = settings.model_copy(update={"event_log_dir": event_log})
    try:
        tables = build(settings, weeks=weeks, by=by.value, value=value, live=live,
                       events=events)
    except BadQuery as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(plain_dict(_jsonable(tables)), indent=1))
        return
    summary = tables["summary"]
    src = summary["source"]
    console.print(f"[bold]Engagement[/] — event log {settings.event_log_path}: "
                  f"{src['events']:,} events, {src['contacts']:,} contacts, "
                  f"{src['residents']:,} known residents, {src['first_day']} → "
                  f"{src['last_day']}. Cells under {summary['small_cell_k']} residents "
                  "are hidden (◌).")
    headline = summary.get("headline")
    if headline:
        line = [f"{headline['week']}: use cadence weekly or better "
                f"{fmt(headline['share_weekly_plus'], 'share')}"]
        for name, row in summary["beside"].items():
            line.append(f"{name} {fmt(row['share_weekly_plus'], 'share')}")
        console.print("; ".join(line) + f" — tables below count {events} contacts.")
    for name in ("cadence", "stickiness", "contacts", "monthly", "cohorts", "lifetime",
                 "funnel", "uplift"):
        _print(tables[name], name, by.value)
    if tables["live"] is not None:
        active = tables["live"]["active"]
        out = RichTable(title=f"Now, from Redis ({active.meta.get('day')}, "
                        f"{active.meta.get('week')})", title_justify="left")
        for col in ("period", "bucket", "dimension", "value", "active"):
            out.add_column(col, justify="right" if col == "active" else "left")
        for row in active.rows:
            if row["dimension"] in ("all", by.value):
                out.add_row(row["period"], row["bucket"], row["dimension"], row["value"],
                            fmt(row["active"], "count"))
        console.print(out)
    elif live:
        console.print("[yellow]live counters: Redis not reachable, history only[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")
