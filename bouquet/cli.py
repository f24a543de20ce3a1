"""``bouquet``: one command line for the stack, simulation, ingestion, training, publishing,
serving, reports and benchmarks.

Each sub-command lives in its own module under :mod:`bouquet.commands` and exposes
``register(app)``; this file only discovers them, so adding a command never edits it.
Commands wire :class:`~bouquet.core.settings.Settings` to one object and call one method.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil

import typer

from bouquet import __version__, commands
from bouquet.core.statefiles import PRIVATE_UMASK

app = typer.Typer(
    name="bouquet",
    help="Bouquet: tailored bundles of urban services, and the engagement they bring.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

#: Third-party loggers that are chatty at INFO.
_QUIET_LOGGERS = ("kafka", "httpx", "urllib3", "mlflow", "alembic", "numba", "implicit")


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Bouquet command line. Configuration comes from the environment (see the README)."""
    # every file a command creates (event log, MLflow artifacts, exports, reports) is
    # readable by this account only, whatever the shell's umask (core/statefiles.py)
    os.umask(PRIVATE_UMASK)
    configure_logging(verbose)


@app.command()
def version() -> None:
    """Print Bouquet's version."""
    typer.echo(__version__)


for _module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{_module.name}").register(app)
