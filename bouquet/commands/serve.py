"""``bouquet serve [--workers N] [--port P]``: the HTTP API under uvicorn (uvloop, httptools).

It refuses to listen beyond this machine while the public development keys or secret are
active (:func:`exposed_with_development_credentials`).

Each worker builds its own app from the environment through the ``create_app`` factory.
With several workers, Prometheus metrics are kept in a private multi-process folder so
``/metrics`` reports the whole server, whichever worker answers the scrape.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile

import typer

from bouquet.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposed_with_development_credentials(host: str, settings: Settings) -> str | None:
    """Why serving on ``host`` would expose the public development keys or secret, or None.

    ``BOUQUET_ENV=local`` keeps the development keys (printed in the README) so a laptop
    needs no set-up; they are harmless only as long as nothing but the laptop can connect.
    """
    found = settings.development_credentials
    if not found or is_loopback(host):
        return None
    return (f"refusing to serve on {host}: {', '.join(found)} still hold the public "
            "development values, which anyone who reads the README can use. Set "
            f"{', '.join(found)} (make a secret with `python -c \"import secrets; "
            "print(secrets.token_urlsafe(32))\"`), or serve on 127.0.0.1")


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
    bind = host or settings.api_host
    exposed = exposed_with_development_credentials(bind, settings)
    if exposed:
        typer.echo(f"error: {exposed}", err=True)
        raise typer.Exit(2)
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="bouquet-metrics-")
        # Read by prometheus_client in every worker (inherited by the spawned processes).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    log.info("serving on http://%s:%d with %d worker(s); docs at /docs", bind,
             port or settings.api_port, workers)
    try:
        uvicorn.run("bouquet.serving.app:create_app", factory=True,
                    host=bind, port=port or settings.api_port,
                    workers=workers, loop="uvloop", http="httptools", access_log=access_log,
                    log_level="info", timeout_graceful_shutdown=10)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
