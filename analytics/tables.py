"""A suppressed table, ready for JSON, CSV or the terminal.

Every figure leaves :mod:`bouquet.analytics` as a :class:`Table`: rows are plain dicts whose
hidden cells are ``None`` and whose ``suppressed`` entry lists those cells by name, so the
API, the CSV export, the CLI and the dashboard all show the same suppressed values.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from bouquet.analytics.suppression import FLAG


def plain(value: Any) -> Any:
    """A JSON-safe Python value (NaN → None, numpy scalars → Python, dates → ISO)."""
    if value is None:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(value, (datetime, date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is pd.NA or value is pd.NaT:
        return None
    return value


@dataclass
class Table:
    """One figure as rows of plain values, with its suppression flags."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    small_cell_k: int
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, name: str, title: str, frame: pd.DataFrame, k: int,
                   columns: list[str] | None = None, **meta: Any) -> Table:
        columns = [c for c in (columns or list(frame.columns)) if c != FLAG]
        present = [c for c in columns if c in frame.columns]
        if FLAG in frame.columns:
            present.append(FLAG)
        records = frame[present].to_dict(orient="records") if len(frame) else []
        rows = []
        for record in records:
            row = {c: plain(record.get(c)) for c in columns}
            row[FLAG] = [c for c in (record.get(FLAG) or []) if c in columns]
            rows.append(row)
        return cls(name=name, title=title, columns=columns, rows=rows, small_cell_k=k,
                   meta={k_: plain(v) if not isinstance(v, dict) else v
                         for k_, v in meta.items()})

    @property
    def suppressed_cells(self) -> int:
        return sum(len(r.get(FLAG, [])) for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"figure": self.name, "title": self.title, "columns": self.columns,
                "small_cell_k": self.small_cell_k, "suppressed_cells": self.suppressed_cells,
                **self.meta, "rows": self.rows}

    def to_csv(self) -> str:
        """CSV with a header; a hidden cell is empty and named in the ``suppressed`` column
        (``;``-separated), so a spreadsheet shows the gap and why."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.columns, FLAG])
        for row in self.rows:
            writer.writerow([_csv_cell(row.get(c)) for c in self.columns]
                            + [";".join(row.get(FLAG, []))])
        return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # a list of column names, like the suppressed flag
        return ";".join(str(v) for v in value)
    return str(value)
