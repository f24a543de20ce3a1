"""``bouquet``: one command line for the stack, simulation, ingestion, training, publishing,
serving, reports and benchmarks.

Each sub-command lives in its own module under :mod:`bouquet.commands` and exposes
``register(app)``; :data:`COMMANDS` lists them, so grep finds where a command is mounted.
Commands wire :class:`~bouquet.core.settings.Settings` to one object and call one method.
"""

from __future__ import annotations

import logging
import os

import typer

from bouquet import __version__
from bouquet.commands import (
    bench,
    demo,
    ingest,
    model,
    outreach,
    privacy,
    publish,
    replay,
    report,
    serve,
    simulate,
    stack,
    train,
)
from bouquet.core.statefiles import PRIVATE_UMASK

app = typer.Typer(
    name="bouquet",
    help="Bouquet: tailored bundles of urban services, and the engagement they bring.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    # Docstrings are wrapped at 100 columns in the code: markdown mode joins a paragraph's
    # lines, so help reads as paragraphs at any terminal width.
    rich_markup_mode="markdown",
)

def _full_defaults() -> None:
    """Let each option's help, default and range wrap within its column, so a long default
    (``als,ease,itemknn,crossview``) folds onto the next line instead of being cut with an
    ellipsis at 80 columns (a rich table cell truncates a word wider than the column).
    Typer builds that cell in a private function; if a Typer version has no such function,
    help keeps Typer's own layout."""
    from rich.columns import Columns
    from rich.text import Text
    from typer import rich_utils

    original = getattr(rich_utils, "_get_parameter_help", None)
    if original is None:
        return

    def folded(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = original(*args, **kwargs)
        if isinstance(found, Columns):
            for part in found.renderables:
                if isinstance(part, Text):
                    part.overflow = "fold"
        return found

    rich_utils._get_parameter_help = folded


_full_defaults()

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


#: Every command group, in the order ``bouquet --help`` lists them.
COMMANDS = (stack, demo, simulate, replay, ingest, train, model, publish, serve, outreach,
            report, privacy, bench)
for _command in COMMANDS:
    _command.register(app)
