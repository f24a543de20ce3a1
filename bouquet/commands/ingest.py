"""``bouquet ingest``: run one member of the ingestion consumer group.

Run several (one per partition at most) to scale out; ``--until-idle`` stops once caught
up, for batch jobs and tests. SIGTERM / Ctrl-C finish the current batch (write, commit)
before exiting.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from bouquet.core.redisclient import redis_client
from bouquet.core.settings import get_settings
from bouquet.localstack import ensure_topics
from bouquet.privacy.erasure import ErasureCascade
from bouquet.streaming import metrics
from bouquet.streaming.consumer import IngestConsumer, IngestError, IngestOptions

log = logging.getLogger(__name__)


def ingest(
    until_idle: bool = typer.Option(False, "--until-idle",
                                    help="Stop once caught up and idle (batch jobs, tests)."),
    idle_seconds: float = typer.Option(5.0, "--idle-seconds", min=0.1,
                                       help="Idle time that counts as caught up."),
    max_events: int | None = typer.Option(None, "--max-events", min=1,
                                          help="Stop after this many records."),
    metrics_port: int | None = typer.Option(None, "--metrics-port",
                                            help="Serve Prometheus /metrics on 127.0.0.1:PORT."),
    batch_max_events: int | None = typer.Option(None, help="Override "
                                                "BOUQUET_INGEST_BATCH_MAX_EVENTS."),
    batch_max_ms: int | None = typer.Option(None, help="Override BOUQUET_INGEST_BATCH_MAX_MS."),
    session_timeout_ms: int | None = typer.Option(None, help="Override "
                                                  "BOUQUET_INGEST_SESSION_TIMEOUT_MS."),
    heartbeat_interval_ms: int | None = typer.Option(None, help="Override "
                                                     "BOUQUET_INGEST_HEARTBEAT_INTERVAL_MS."),
    log_every: float = typer.Option(10.0, "--log-every", help="Seconds between progress lines."),
    stats_json: Path | None = typer.Option(None, "--stats-json",
                                           help="Write the run's statistics here at exit."),
    record_delays: bool = typer.Option(False, "--record-delays", hidden=True,
                                       help="Keep every produce→Redis delay in --stats-json."),
) -> None:
    """Consume the interactions topic: validate, dead-letter, log, update Redis, commit."""
    settings = get_settings()
    overrides = {name: value for name, value in {
        "batch_max_events": batch_max_events, "batch_max_ms": batch_max_ms,
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms,
    }.items() if value is not None}
    options = IngestOptions.from_settings(
        settings, idle_seconds=idle_seconds if until_idle else None, max_events=max_events,
        log_every_s=log_every, record_delays=record_delays, **overrides)
    if metrics_port is not None:
        metrics.serve(metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
    ensure_topics(settings)
    # erasures reach the register and the published lists as the consumer applies them,
    # and late events of erased residents are dropped (docs/privacy.md)
    cascade = ErasureCascade(settings, redis_client(settings.redis_url, socket_timeout=30))
    consumer = IngestConsumer(settings, options=options, erasure=cascade)
    try:
        stats = consumer.run()
    except IngestError as exc:
        log.error("ingestion stopped: %s", exc)
        raise typer.Exit(2) from None
    finally:
        if stats_json is not None:
            stats_json.write_text(json.dumps(consumer.stats.as_dict()))
    log.info("ingest done: %d received, %d applied, %d duplicates, %d dead letters",
             stats.received, stats.applied, stats.duplicates, sum(stats.dead_letters.values()))


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
