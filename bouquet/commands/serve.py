"""``bouquet serve [--workers N] [--port P]``: the HTTP API under uvicorn (uvloop, httptools).

Each worker builds its own app from the environment through the ``create_app`` factory.
With several workers, Prometheus metrics are kept in a private multi-process folder so
``/metrics`` reports the whole server, whichever worker answers the scrape.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

import typer

from bouquet.core.settings import get_settings

log = logging.getLogger(__name__)


def serve(
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64,
                                help="Worker processes (one per core is a good start)."),
    port: int = typer.Option(None, "--port", "-p", help="Default: BOUQUET_API_PORT."),
    host: str = typer.Option(None, "--host", help="Default: BOUQUET_API_HOST."),
    access_log: bool = typer.Option(False, "--access-log/--no-access-log",
                                    help="Log every request (slow at high rates)."),
) -> None:
    """Serve the API: recommendations, event intake, catalog, operator API, /docs."""
    import uvicorn

    settings = get_settings()
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="bouquet-metrics-")
        # Read by prometheus_client in every worker (inherited by the spawned processes).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info("serving on http://%s:%d with %d worker(s); docs at /docs",
             host or settings.api_host, port or settings.api_port, workers)
    try:
        uvicorn.run("bouquet.serving.app:create_app", factory=True,
                    host=host or settings.api_host, port=port or settings.api_port,
                    workers=workers, loop="uvloop", http="httptools", access_log=access_log,
                    log_level="info", timeout_graceful_shutdown=10)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
