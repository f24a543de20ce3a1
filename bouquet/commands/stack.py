"""``bouquet stack up | down | status``: the embedded local stack."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.redisclient import is_cluster_url
from bouquet.core.settings import get_settings
from bouquet.localstack import LocalStack, ServiceStatus, StackError

stack_app = typer.Typer(help="Start, check and stop the local broker, Redis and MLflow store.",
                        no_args_is_help=True)
console = Console()


def _print(statuses: list[ServiceStatus]) -> None:
    table = Table("service", "health", "pid", "detail")
    for s in statuses:
        health = "[green]healthy[/]" if s.healthy else "[red]down[/]"
        table.add_row(s.name, health, str(s.pid or "-"), s.detail)
    console.print(table)


@stack_app.command()
def up(
    mlflow_ui: bool = typer.Option(False, "--mlflow-ui", help="Also run `mlflow server` for the "
                                   "UI on 127.0.0.1 (BOUQUET_LOCAL_MLFLOW_PORT)."),
    redis_cluster: bool = typer.Option(False, "--redis-cluster", help="Run a three-primary "
                                       "Redis Cluster on loopback instead of one Redis: on "
                                       "the ports a redis+cluster:// REDIS_URL names, else "
                                       "7000-7002."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for health."),
) -> None:
    """Start the broker, Redis and the MLflow store; wait until healthy; create topics."""
    stack = LocalStack(get_settings())
    if redis_cluster:
        stack = stack.with_redis_cluster()
    try:
        statuses = stack.up(mlflow_ui=mlflow_ui, timeout_s=timeout)
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _print(statuses)
    if is_cluster_url(stack.settings.redis_url):
        # every other command finds the cluster through this variable
        console.print(f"export REDIS_URL={stack.settings.redis_url}", soft_wrap=True)


@stack_app.command()
def status() -> None:
    """Show the health of the three services; exit 1 if one is down."""
    statuses = LocalStack(get_settings()).status()
    _print(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@stack_app.command()
def down() -> None:
    """Stop only the processes `stack up` started (a Redis Cluster's nodes too)."""
    stopped = LocalStack(get_settings()).down()
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
