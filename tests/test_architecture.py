"""The dependency direction of docs/architecture.md holds: no package imports one it must not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package folder → Bouquet packages it may import (module level or inside functions)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "models": {"core"},
    "streaming": {"core"},
    "analytics": {"core"},
    "pipelines": {"core", "models", "streaming"},
    "serving": {"core", "models", "analytics", "streaming", "pipelines"},
    "simulation": {"core", "pipelines", "streaming"},
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+bouquet\.([a-z_]+)", re.MULTILINE)


def test_packages_import_only_what_the_architecture_allows() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).glob("*.py")):
            for imported in set(IMPORT.findall(path.read_text())):
                if imported != package and imported not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports bouquet.{imported}")
    assert not wrong, "\n".join(wrong)
