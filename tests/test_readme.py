"""The README stays true: every setting is documented, and the two commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from bouquet.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _variable_names(name: str, field) -> set[str]:
    alias = field.validation_alias
    names = {f"BOUQUET_{name.upper()}"}
    if alias is not None:
        names |= {str(choice) for choice in getattr(alias, "choices", [alias])}
    return names


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name, field in Settings.model_fields.items()
               if not _variable_names(name, field) & set(re.findall(r"`([A-Z_]+)`", README))]
    assert not missing, f"settings missing from the README table: {missing}"


def test_quick_start_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "bench", "lint", "clean", "setup"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
        assert f"make {target}" in README or target == "setup"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
