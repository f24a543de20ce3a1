"""The benchmark output contract (see docs/benchmarks.md).

Every benchmark returns a :class:`BenchResult`; :func:`emit` prints it as a table and,
when asked, writes the JSON layout other tools read::

    {"benchmark": NAME, "started_at": ISO-8601, "machine": {...}, "versions": {...},
     "params": {...}, "figures": {FIGURE: {"value": float, "unit": str}, ...}}

Figures are what was measured on this run on this machine; nothing here is a constant.
"""

from __future__ import annotations

import json
import os
import platform
import resource
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

_VERSIONED = ("bouquet", "implicit", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow",
              "kafka-python", "redis", "mlflow", "fastapi", "uvicorn", "duckdb")


@dataclass
class BenchResult:
    benchmark: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def add(self, name: str, value: float | int | None, unit: str) -> None:
        """Record one measured figure."""
        self.figures[name] = {"value": None if value is None else float(value), "unit": unit}

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "started_at": self.started_at,
            "machine": machine_info(),
            "versions": versions(),
            "params": self.params,
            "figures": self.figures,
            "notes": self.notes,
        }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "processor": platform.machine(),
    }


def versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_result(result: BenchResult, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"bench {result.benchmark}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for name, fig in result.figures.items():
        value = fig["value"]
        shown = "-" if value is None else (f"{value:,.4f}" if abs(value) < 10 else f"{value:,.1f}")
        table.add_row(name, shown, fig["unit"])
    console.print(table)
    for note in result.notes:
        console.print(f"  note: {note}")


def write_json(results: list[BenchResult] | BenchResult, path: Path) -> None:
    """Write one result, or a combined file ``{"results": [...]}`` for ``bench all``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(results, BenchResult):
        payload: Any = results.to_json()
    else:
        payload = {"machine": machine_info(), "versions": versions(),
                   "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
