"""``bouquet publish``: the champion → every resident's lists → Redis, one atomic switch.

``bouquet publish`` publishes the registry alias (default ``champion``) and switches the
``current`` pointer; ``--pointer challenger --model-version 7`` publishes an experiment
variant's keyspace instead. ``bouquet publish status`` lists versions; ``bouquet publish
rollback`` points back at the previous version (kept for that).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from bouquet.core.settings import get_settings

console = Console()
publish_app = typer.Typer(help="Publish the champion model's recommendations to Redis.",
                          invoke_without_command=True, no_args_is_help=False)


@publish_app.callback()
def publish(
    ctx: typer.Context,
    alias: str = typer.Option("champion", help="Registry alias to publish."),
    model_version: str = typer.Option(None, "--model-version",
                                      help="Publish this registry version instead of the alias."),
    pointer: str = typer.Option("current", help="Pointer to switch: `current` (what the "
                                "champion variant serves) or an experiment variant's name."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Score every resident with the registered model and switch the pointer atomically.

    With no champion yet (no model has beaten popularity with confidence), the popular lists
    of the latest registered version are published, and every answer says it is not
    personalised; consenting residents get their segment's list when that version's
    training run found segment lists beat popularity, their neighbourhood's otherwise.
    """
    if ctx.invoked_subcommand is not None:
        return
    report = publish_registered(alias=alias, model_version=model_version, pointer=pointer,
                                progress=progress)
    console.print_json(json.dumps(report.as_dict()))


def publish_registered(*, alias: str = "champion", model_version: str | None = None,
                       pointer: str = "current", progress: bool = True) -> Any:
    """Publish a registered model (the alias, or a version) and switch ``pointer``; exits
    with one line on a problem the user can fix. Used by ``publish`` and by the
    ``--publish`` flag of ``train``, ``model promote`` and ``model rollback``."""
    from bouquet.core.catalog import load_catalog
    from bouquet.models.online import Audience
    from bouquet.pipelines.promotion import SegmentDecision
    from bouquet.pipelines.publish import PERSONAL, Publisher, PublishError, load_registered
    from bouquet.pipelines.registry import ModelRegistry
    from bouquet.pipelines.tracking import TrackingUnavailable, connect, show_mlflow_progress
    from bouquet.privacy.audit import record_action
    from bouquet.privacy.erasure import (
        ErasureRegister,
        RegisterKeyMismatch,
        model_created_at,
        scrub_published,
        without_erased,
    )

    settings = get_settings()
    catalog = load_catalog(settings.catalog_path)
    show_mlflow_progress(progress)
    audience = PERSONAL
    try:
        if model_version is None and alias == "champion":
            registry = ModelRegistry(connect(settings), settings.registered_model)
            if registry.champion() is None and registry.versions():
                latest = registry.versions()[0]
                model_version = latest.version
                # the training run decided whether its segment lists beat popularity
                segments = latest.tags.get(SegmentDecision.TAG) == "1"
                audience = Audience(personalised=False, segment_lists=segments)
                lists = "segment" if segments else "neighbourhood"
                console.print(f"no champion yet: publishing the popular lists of version "
                              f"{model_version} (answers are not personalised; consenting "
                              f"residents get their {lists}'s list)")
        model, version, run_id = load_registered(settings, alias=alias, version=model_version)
        # Erased residents are never published again, whatever the model holds.
        model, left_out = without_erased(model, ErasureRegister.for_settings(settings),
                                         model_created_at(settings, version))
        publisher = Publisher(settings, neighbourhoods=catalog.neighbourhood_ids)
        report = publisher.publish(model, model_version=version, run_id=run_id, pointer=pointer,
                                   progress=progress, audience=audience)
        scrubbed = scrub_published(settings, publisher.redis, report.version, model.resident_ids)
    except (PublishError, LookupError, RegisterKeyMismatch, TrackingUnavailable) as exc:
        console.print(f"[red]publish failed:[/] {exc}")
        console.print("the previous version (if any) is still serving")
        raise typer.Exit(1) from None
    record_action(settings, "publish", target=f"keyspace:{report.version}", pointer=pointer,
                  model_version=version, previous=report.previous, residents=report.residents,
                  erased_left_out=len(left_out), erased_scrubbed_after=scrubbed)
    return report


@publish_app.command()
def status() -> None:
    """Pointers and every published version (state, model, run, TTL)."""
    from bouquet.pipelines.publish import Publisher

    info = Publisher(get_settings()).status()
    console.print(f"current: {info['current'] or '(nothing published)'}")
    table = Table("version", "state", "model", "run", "published_at", "residents", "ttl_s")
    for v in info["versions"]:
        table.add_row(v["version"], v["state"], str(v["model_version"]), str(v["run_id"])[:12],
                      str(v["published_at"]), str(v["residents"]), str(v["ttl_s"]))
    console.print(table)


@publish_app.command()
def rollback(pointer: str = typer.Option("current", help="Pointer to roll back.")) -> None:
    """Switch the pointer back to the version it named before the last publish."""
    from bouquet.pipelines.publish import Publisher, PublishError
    from bouquet.privacy.audit import record_action

    try:
        old, new = Publisher(get_settings()).rollback(pointer)
    except PublishError as exc:
        console.print(f"[red]rollback failed:[/] {exc}")
        raise typer.Exit(1) from None
    record_action(get_settings(), "publish-rollback", target=f"pointer:{pointer}",
                  from_version=old, to_version=new)  # audit
    console.print(f"{pointer}: {old} -> {new}")


def register(app: typer.Typer) -> None:
    app.add_typer(publish_app, name="publish")
