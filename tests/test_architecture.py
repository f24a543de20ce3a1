"""The dependency direction of docs/architecture.md holds, and the layout is what it says.

The contracts themselves live in ``pyproject.toml`` (``[tool.importlinter]``) so that
``make lint`` and this test check the same rules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("core", "models", "pipelines", "streaming", "serving", "simulation", "analytics",
         "benchmarks", "privacy")


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_part_is_a_top_level_folder_linked_into_the_bouquet_namespace() -> None:
    for part in PARTS:
        link = ROOT / "bouquet" / part
        assert link.is_symlink() and link.resolve() == ROOT / part, link
        assert (ROOT / part / "__init__.py").is_file(), part
