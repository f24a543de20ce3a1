"""``bouquet model list | promote VERSION | rollback``: the registry's champion, by hand.

Each command wires the settings to :class:`~bouquet.pipelines.registry.ModelRegistry` and
calls one method; an unreachable MLflow or an impossible request prints one line and exits 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.settings import get_settings

model_app = typer.Typer(help="Registered model versions and the serving alias 'champion'.",
                        no_args_is_help=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    from bouquet.pipelines.registry import RegistryError
    from bouquet.pipelines.tracking import TrackingUnavailable

    try:
        yield
    except (TrackingUnavailable, RegistryError, _Refused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _registry() -> object:
    from bouquet.pipelines.registry import ModelRegistry
    from bouquet.pipelines.tracking import connect

    settings = get_settings()
    return ModelRegistry(connect(settings), settings.registered_model)


def _guarded(action: Callable[[], None]) -> None:
    with _user_errors():
        action()


@model_app.command("list")
def list_versions() -> None:
    """Every registered version, newest first, with its aliases and primary metric."""

    def run() -> None:
        registry = _registry()
        versions = registry.versions()
        if not versions:
            typer.echo(f"no version of {registry.name!r} yet: run `bouquet train`")
            return
        table = Table(title=f"{registry.name} (champion history: "
                      f"{' → '.join(registry.history()[-6:]) or '-'})", title_justify="left")
        metrics = {info.tags.get("primary_metric", "") for info in versions}
        for column in ("v", "aliases", "created (UTC)", "model", " / ".join(sorted(metrics)),
                       "split", "dataset", "run"):
            table.add_column(column, overflow="fold")
        for info in versions:
            value = info.primary_value
            table.add_row(info.version, ", ".join(info.aliases), info.created[:16],
                          info.tags.get("model_kind", ""),
                          "" if value is None else f"{value:.4f}",
                          info.tags.get("split_id", "")[:8],
                          info.tags.get("dataset_fingerprint", "")[:8], info.run_id[:8])
        Console(width=max(Console().width, 110)).print(table)

    _guarded(run)


@model_app.command("promote")
def promote(
    version: str = typer.Argument(..., help="Registered version number to serve."),
    reason: str = typer.Option("manual promotion", help="Recorded on the version."),
    force: bool = typer.Option(False, "--force", help="Promote even a version that is worse "
                               "than the champion on the same split."),
    publish: bool = typer.Option(False, "--publish", help="Publish the new champion now."),
) -> None:
    """Point 'champion' at VERSION (the current champion becomes 'previous-champion').

    Both versions' figures are printed; a version worse than the champion on the same
    split needs --force. Serving changes when the champion is published.
    """

    def run() -> None:
        from bouquet.privacy.audit import record_action

        registry = _registry()
        before = registry.champion()
        target = registry.version(version)
        _compare(target, before, force)
        info = registry.promote(version, reason)
        record_action(get_settings(), "promotion", target=f"model:{registry.name}",
                      to_version=info.version, from_version=before.version if before else None,
                      reason=reason)
        typer.echo(f"{registry.name}: champion is now version {info.version}")
        _serving_note(publish)

    _guarded(run)


def _compare(target: Any, champion: Any, force: bool) -> None:
    """Print both versions' primary figures; refuse a worse one on the same split."""
    if champion is None or champion.version == target.version:
        return
    metric = target.tags.get("primary_metric", "primary metric")
    figures = (f"v{target.version} {metric} = {target.primary_value}, champion "
               f"v{champion.version} = {champion.primary_value}")
    same = (target.tags.get("split_id") == champion.tags.get("split_id")
            and target.tags.get("primary_metric") == champion.tags.get("primary_metric"))
    if not same:
        typer.echo(f"{figures} (different splits: the figures are not comparable)")
        return
    typer.echo(f"{figures} (same split {target.tags.get('split_id')})")
    worse = (target.primary_value is not None and champion.primary_value is not None
             and target.primary_value < champion.primary_value)
    if worse and not force:
        raise _Refused(f"v{target.version} is worse than the champion on the same split; "
                       "pass --force to promote it anyway")


class _Refused(RuntimeError):
    """A promotion refused by the figures (the message says what to do)."""


def _serving_note(publish: bool) -> None:
    if publish:
        from bouquet.commands.publish import publish_registered

        report = publish_registered()
        typer.echo(f"published {report.version}: serving switches within a second")
    else:
        typer.echo("serving is unchanged until `bouquet publish` runs (or pass --publish)")


@model_app.command("rollback")
def rollback(
    publish: bool = typer.Option(False, "--publish", help="Publish the restored champion now."),
) -> None:
    """Give 'champion' back to the version that held it before the current one."""

    def run() -> None:
        from bouquet.privacy.audit import record_action

        registry = _registry()
        old, new = registry.rollback()
        record_action(get_settings(), "rollback", target=f"model:{registry.name}",
                      from_version=old, to_version=new)
        typer.echo(f"{registry.name}: champion rolled back from version {old} to {new}")
        _serving_note(publish)

    _guarded(run)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
