"""Help reads as paragraphs and shows defaults in full, whatever the terminal width."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from bouquet.cli import app


def _help(*args: str, columns: int) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns),
                                                             "TERMINAL_WIDTH": ""})
    assert result.exit_code == 0, result.output
    return result.output


def test_help_paragraphs_are_joined_not_broken_where_the_docstring_wrapped() -> None:
    wide = _help(columns=240)
    # the docstring breaks this sentence after "(keyed HMAC with"; help must not
    assert re.search(r"Turn internal account ids into the resident ids Bouquet uses \(keyed "
                     r"HMAC with BOUQUET_PSEUDONYM_SECRET\): the same account", wide)


def test_long_defaults_are_shown_in_full_at_80_columns() -> None:
    narrow = _help("train", columns=80)
    cells = "".join(line.strip("│ ").strip() for line in narrow.splitlines())
    assert "[default:als,ease,itemknn,crossview]" in cells.replace(" ", "")
    assert "…" not in narrow


def test_train_options_spell_the_training_defaults() -> None:
    """``bouquet train`` writes its defaults as literals (its ``--help`` stays free of the
    training stack's imports); they must be the pipeline's own."""
    import inspect

    from bouquet.commands.train import train_command
    from bouquet.pipelines.candidates import DEPLOYABLE_KINDS
    from bouquet.pipelines.split import DEFAULT_POSITIVE_TYPES, DEFAULT_TEST_WEEKS
    from bouquet.pipelines.train import TrainOptions

    default = {name: p.default.default
               for name, p in inspect.signature(train_command).parameters.items()
               if hasattr(p.default, "default")}
    assert default["test_weeks"] == DEFAULT_TEST_WEEKS
    assert default["positive_types"] == ",".join(DEFAULT_POSITIVE_TYPES)
    assert default["positives"] == TrainOptions().positives
    assert default["candidates"] == ",".join(DEPLOYABLE_KINDS)
    assert default["primary_metric"] == TrainOptions().primary_metric
