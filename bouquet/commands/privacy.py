"""Privacy operations: ``bouquet pseudonymise``, ``erase``, ``export``, ``compact``, ``audit``.

Each command wires the settings to one function of :mod:`bouquet.privacy.erasure`,
:mod:`bouquet.privacy.export` or :mod:`bouquet.privacy.compaction` and records what it
did in the audit log (:mod:`bouquet.privacy.audit`) as ``cli:<user>@<host>``. See
docs/privacy.md.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from bouquet.commands.schedule import parse_interval, repeat, stop_on_signals
from bouquet.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _redis(settings: Settings) -> Any:
    from bouquet.core.redisclient import redis_client

    return redis_client(settings.redis_url, socket_timeout=30, socket_connect_timeout=5)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def pseudonymise_command(
    account_ids: list[str] = typer.Argument(None, help="Operator account ids (none or '-': "
                                            "read one per line from standard input)."),
    prefix: str = typer.Option("p", help="Prefix of the pseudonyms (0-16 of A-Z a-z 0-9 _ -)."),
    length: int = typer.Option(20, help="Hex digits of the keyed hash (8 to 64 - prefix)."),
) -> None:
    """Turn internal account ids into the resident ids Bouquet uses (keyed HMAC with
    BOUQUET_PSEUDONYM_SECRET): the same account always gives the same resident id, and it
    cannot be reversed without the secret. Prints `account<TAB>resident_id` per line when
    reading standard input, the resident id alone for one argument."""
    from bouquet.privacy.pseudonyms import pseudonymise

    settings = get_settings()
    if "BOUQUET_PSEUDONYM_SECRET" in settings.development_credentials:
        typer.echo("warning: BOUQUET_PSEUDONYM_SECRET is not set: these pseudonyms use the "
                   "public development secret, so anyone can recompute them from account "
                   "ids; set the deployment's secret for real ids", err=True)
    from_stdin = not account_ids or account_ids == ["-"]
    ids = [line.rstrip("\n") for line in sys.stdin if line.strip()] if from_stdin \
        else account_ids
    try:
        for raw in ids:
            pseudonym = pseudonymise(raw, settings.pseudonym_secret, prefix=prefix,
                                     length=length)
            typer.echo(pseudonym if len(ids) == 1 and not from_stdin else f"{raw}\t{pseudonym}")
    except ValueError as exc:
        raise _fail(str(exc)) from None


def erase_command(
    resident_id: str = typer.Argument(..., help="Resident id to erase."),
    event: bool = typer.Option(True, "--event/--no-event", help="Also produce the `erase` "
                               "event (needed for the event log to hide the resident at once)."),
) -> None:
    """Erase a resident: erasure register, real-time state and every published list now; an
    `erase` event for the event log and consumers; audited."""
    from bouquet.core.keys import Keys, UnsafeKeyPart
    from bouquet.privacy.audit import AuditLog, cli_actor
    from bouquet.privacy.erasure import cascade, erase_event

    settings = get_settings()
    try:
        Keys(settings.redis_key_prefix).profile(resident_id)
    except UnsafeKeyPart as exc:
        raise _fail(str(exc)) from None
    client = _redis(settings)
    now = datetime.now(UTC)
    report = cascade(settings, client, resident_id, at=now, source="cli")
    problems = list(report.errors)
    produced = None
    if event:
        from bouquet.streaming.producer import EventProducer, ProduceFailed

        payload = erase_event(resident_id, datetime.fromtimestamp(report.cutoff, UTC))
        try:
            with EventProducer(settings) as producer:
                producer.send_and_wait([payload], timeout_s=15)
            produced = payload["event_id"]
        except ProduceFailed as exc:
            problems.append(f"broker: {exc}")
    AuditLog(settings, client).record(
        "erasure", actor=cli_actor(), target=f"resident:{report.ref[:16]}",
        outcome="partial" if problems else "ok",
        published_lists_deleted=report.published_lists_deleted, event_id=produced,
        problems=problems)
    client.close()
    typer.echo(json.dumps({**report.as_dict(), "event_id": produced, "problems": problems},
                          indent=1))
    if problems:
        raise _fail("erasure incomplete; everything that could be erased was — run it again")


def export_command(
    resident_id: str = typer.Argument(..., help="Resident id to export."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the JSON here (default: stdout)."),
) -> None:
    """Everything held about a resident as JSON (right of access); audited."""
    from bouquet.core.keys import UnsafeKeyPart
    from bouquet.privacy.audit import AuditLog, cli_actor, resident_ref
    from bouquet.privacy.export import export_resident

    settings = get_settings()
    client = _redis(settings)
    try:
        document = export_resident(settings, client, resident_id)
    except UnsafeKeyPart as exc:
        raise _fail(str(exc)) from None
    AuditLog(settings, client).record(
        "export", actor=cli_actor(),
        target=f"resident:{resident_ref(resident_id, settings.pseudonym_secret)[:16]}",
        events=len(document["events"]), written_to=str(out) if out else "stdout")
    client.close()
    text = json.dumps(document, indent=1, default=str)
    if out:
        out.write_text(text + "\n")
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)


def compact_command(
    models: bool = typer.Option(False, "--models", help="Also remove erased residents' rows "
                                "from registered model artifacts made before their erasure."),
    aof: bool = typer.Option(True, "--aof/--no-aof", help="Ask Redis to rewrite its "
                             "append-only file so deleted keys leave its history."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report, change nothing."),
    now: str = typer.Option(None, help="Clock for retention (ISO-8601; default: now)."),
    min_files: int = typer.Option(8, min=2, help="Merge a partition once it has this many "
                                  "files, even with nothing to drop."),
    json_path: Path = typer.Option(None, "--json", help="Write the report here (with "
                                   "--every: the latest run's)."),
    every: str = typer.Option(None, "--every", help="Run now, then again at this interval "
                              "until stopped (SIGTERM, Ctrl-C), e.g. 24h, 6h, 30m: the bound "
                              "on how long erased rows stay in the files (docs/privacy.md)."),
) -> None:
    """Apply erasures and per-type retention (BOUQUET_RETENTION_DAYS) to the event log's
    files, merge small files, tombstone erased residents' dead letters; optionally scrub
    model artifacts; audited."""
    if every is None:
        _compact_once(models=models, aof=aof, dry_run=dry_run, now=now, min_files=min_files,
                      json_path=json_path)
        return
    if now is not None:
        raise _fail("--every runs on the real clock: drop --now")
    try:
        every_s = parse_interval(every)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    stop = stop_on_signals()
    log.info("compacting every %s until stopped", every)
    runs = repeat(lambda: _compact_once(models=models, aof=aof, dry_run=dry_run, now=None,
                                        min_files=min_files, json_path=json_path),
                  every_s, stop)
    typer.echo(f"compaction stopped after {runs} run(s)")


def _compact_once(*, models: bool, aof: bool, dry_run: bool, now: str | None, min_files: int,
                  json_path: Path | None) -> None:
    """One compaction with the command's options: its JSON report to stdout (and the file)."""
    from bouquet.privacy.audit import AuditLog, cli_actor
    from bouquet.privacy.compaction import compact, rewrite_redis_aof
    from bouquet.privacy.dead_letters import drop_erased_dead_letters
    from bouquet.privacy.erasure import ErasureRegister, RegisterKeyMismatch, scrub_artifacts

    settings = get_settings()
    clock = datetime.fromisoformat(now) if now else None
    if clock is not None and clock.tzinfo is None:
        clock = clock.replace(tzinfo=UTC)
    client = _redis(settings)
    try:
        client.ping()
    except Exception:  # Redis down: compaction of files does not need it
        client = None
    try:
        report = compact(settings, now=clock, redis_client=client, min_files=min_files,
                         dry_run=dry_run)
    except RegisterKeyMismatch as exc:
        raise _fail(str(exc)) from None
    result = {"log": report.as_dict()}
    if models:
        try:
            result["models"] = [s.__dict__ for s in scrub_artifacts(settings, dry_run=dry_run)]
        except Exception as exc:  # MLflow unreachable: say so, keep the log result
            result["models"] = {"error": f"{exc.__class__.__name__}: {exc}"[:300]}
    try:
        scrub = drop_erased_dead_letters(settings, ErasureRegister.for_settings(settings),
                                         dry_run=dry_run)
        result["dead_letters"] = scrub.__dict__
    except Exception as exc:  # the broker unreachable: say so, keep the other results
        result["dead_letters"] = {"error": f"{exc.__class__.__name__}: {exc}"[:300]}
    if aof and not dry_run:
        result["redis_aof"] = rewrite_redis_aof(client) if client is not None \
            else "Redis unreachable"
    if not dry_run:
        AuditLog(settings, client).record(
            "compaction", actor=cli_actor(), target="event-log",
            rows_before=report.rows_before, rows_after=report.rows_after,
            dropped_erased=report.dropped_erased + report.dropped_erase_events,
            dropped_retention=report.dropped_retention,
            models=result.get("models") if models else None,
            dead_letters=result.get("dead_letters"), redis_aof=result.get("redis_aof"))
    if client is not None:
        client.close()
    text = json.dumps(result, indent=1, default=str)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")
    typer.echo(text)


def audit_command(
    tail: int = typer.Option(20, "--tail", "-n", min=1, help="How many records to show."),
    verify: bool = typer.Option(False, "--verify", help="Check the file's hash chain."),
) -> None:
    """The latest audit records from the durable file (oldest first)."""
    from bouquet.privacy.audit import AuditLog, audit_path, chain_key, verify_chain

    settings = get_settings()
    if verify:
        ok, count, problem = verify_chain(audit_path(settings), chain_key(settings))
        typer.echo(f"{count} records, chain {'intact' if ok else 'BROKEN: ' + problem}")
        if not ok:
            raise typer.Exit(1)
        return
    for record in AuditLog(settings).tail(tail):
        typer.echo(json.dumps(record, separators=(",", ":")))


def register(app: typer.Typer) -> None:
    app.command("pseudonymise")(pseudonymise_command)
    app.command("erase")(erase_command)
    app.command("export")(export_command)
    app.command("compact")(compact_command)
    app.command("audit")(audit_command)
