"""``python -m bouquet`` runs the CLI."""

from bouquet.cli import app

app()
