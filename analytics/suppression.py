"""Small-cell suppression: no operator view may single out a resident.

Every table an operator sees (API JSON, CSV, ``bouquet report``, the dashboard) passes
through :func:`suppress`, with ``k = Settings.small_cell_k`` (default 5). The rules, also in
``docs/engagement.md``:

1. **Primary**: a count of residents ``n`` with ``0 < n < k`` is hidden (``null`` in JSON,
   empty in CSV, and its column name listed in the row's ``suppressed`` flag). A zero is
   shown: it describes nobody, and hiding zeros would leave charts unreadable. Event
   counts get the same rule (fewer than k events means fewer than k residents).
2. **Gates**: when a row's population (e.g. the known residents of a neighbourhood, the
   residents shown a variant) is below k, every figure of the row is hidden; a rate or
   mean is hidden when any count it is computed from is hidden.
3. **Complementary, within a row**: when the cells of a row add up to a published total
   (the five cadence classes add up to the known residents; the histogram buckets too)
   and exactly one of them is hidden, the smallest other non-zero cell is hidden too (a
   zero when no other is left), so the hidden one cannot be recovered by subtraction.
   Partitions are tried in the order the spec lists them, so a table can name the
   companion it prefers: the cadence table lists "weekly or better" = daily + weekly
   first, so a small daily class takes the weekly class with it (the two are published
   merged) rather than a large band such as monthly.
4. **Complementary, across a partition**: the neighbourhoods partition the residents, so
   a neighbourhood's cell could be recovered from the city figure minus the other
   neighbourhoods; in each column, if exactly one neighbourhood is hidden, the smallest
   other non-zero one (or a zero) is hidden too (a whole row when the hidden cell is the
   row total).
   Rules 3 and 4 are applied until nothing changes.
5. **Percentiles** of contacts per resident are shown only when at least k residents lie
   at or below *and* at or above the value, so a high percentile never describes one
   heavy user; the maximum is never published.

Domain, factor and channel slices overlap (a resident is active in several domains), so
no exact subtraction exists across their values and rule 4 does not apply to them.

A table is suppressed whole — every value of its breakdown, every period — before any
selection (``?value=``, ``?weeks=``) is cut from it (:mod:`bouquet.analytics.figures`):
the complementary cells of rules 3 and 4 are chosen against the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: The flag column listing the hidden cells of each row.
FLAG = "suppressed"


@dataclass(frozen=True)
class SuppressionSpec:
    """What the rules mean for one table.

    ``counts``: columns of resident (or event) counts, rule 1. ``gates``: (column,
    dependents): when the column is in (0, k), it and its dependents are hidden.
    ``partitions``: (total, cells) whose cells add up to the total (rule 3).
    ``across``: key columns identifying the same cell across the values of a partitioning
    dimension (rule 4; applied only to rows of a dimension in ``partition_dimensions``) to
    the partitions' cells and totals and to ``across_cells``.
    ``derived``: column → the columns it is computed from. ``quantiles``: column → its
    (n at or below, n at or above) columns (rule 5).
    """

    counts: Sequence[str] = ()
    gates: Sequence[tuple[str, Sequence[str]]] = ()
    partitions: Sequence[tuple[str, Sequence[str]]] = ()
    across: Sequence[str] = ()
    partition_dimensions: Sequence[str] = ("neighbourhood",)
    #: further columns complemented across a partitioning dimension's values (rule 4)
    #: without being cells of a row partition
    across_cells: Sequence[str] = ()
    derived: dict[str, Sequence[str]] = field(default_factory=dict)
    quantiles: dict[str, tuple[str, str]] = field(default_factory=dict)


def _small(values: np.ndarray, k: int) -> np.ndarray:
    """Rule 1: strictly between zero and k."""
    v = np.nan_to_num(values, nan=0.0)
    return (v > 0) & (v < k)


def suppress(frame: pd.DataFrame, spec: SuppressionSpec, k: int,
             preset: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Return a copy of ``frame`` with hidden cells set to missing and a ``suppressed``
    column listing, per row, the names of the hidden cells (empty list when none).
    ``preset``: column → rows hidden from the start (the same number hidden in another
    figure)."""
    out = frame.copy()
    if out.empty:
        out[FLAG] = pd.Series([], dtype=object)
        return out
    cols = list(out.columns)
    pos = {c: i for i, c in enumerate(cols)}
    numeric = out.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    hidden = np.zeros(numeric.shape, bool)

    def col(name: str) -> int:
        return pos[name]

    for name, rows in (preset or {}).items():
        hidden[:, col(name)] |= rows
    for name in spec.counts:
        hidden[:, col(name)] |= _small(numeric[:, col(name)], k)
    for gate, dependents in spec.gates:
        small = _small(numeric[:, col(gate)], k)
        for name in (gate, *dependents):
            hidden[small, col(name)] = True
    for name, (n_le, n_ge) in spec.quantiles.items():
        ok = (numeric[:, col(n_le)] >= k) & (numeric[:, col(n_ge)] >= k)
        hidden[~ok & ~np.isnan(numeric[:, col(name)]), col(name)] = True

    across = _across_groups(out, spec)

    for _ in range(20):
        changed = False
        for total, cells in spec.partitions:
            changed |= _complement_rows(numeric, hidden, col(total), [col(c) for c in cells])
        if across is not None:
            for total, cells in spec.partitions:
                for c in cells:
                    changed |= _complement_column(numeric, hidden, across, col(c), None)
                changed |= _complement_column(numeric, hidden, across, col(total),
                                              [col(c) for c in _parts_of(spec, total)])
            for c in spec.across_cells:
                changed |= _complement_column(numeric, hidden, across, col(c), None)
        if not changed:
            break

    for name, sources in spec.derived.items():
        for source in sources:
            hidden[:, col(name)] |= hidden[:, col(source)]

    flags = [[cols[j] for j in np.flatnonzero(row)] for row in hidden]
    for j, name in enumerate(cols):
        if hidden[:, j].any():
            series = out[name].astype(object)
            series[hidden[:, j]] = None
            out[name] = series
    out[FLAG] = flags
    return out


#: The cost of hiding a zero as a companion: above any count, so a zero goes only when the
#: row (or column) has no other visible cell to hide.
_ZERO_COST = float(np.finfo(float).max)


def _companion_cost(values: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """What hiding each cell as a companion costs: its value (the smallest goes), a zero
    last, a hidden cell never. A zero is shown for its own sake, but when it is the only
    other cell, leaving it visible publishes the hidden one as the total minus zeros."""
    v = np.nan_to_num(values, nan=0.0)
    return np.where(hidden, np.inf, np.where(v > 0, v, _ZERO_COST))


def _parts_of(spec: SuppressionSpec, total: str) -> list[str]:
    """Every cell that adds up, directly or through a sub-total, to ``total``: hiding a row
    total hides them all, since visible parts would add the total back up."""
    parts: list[str] = []
    todo = [total]
    while todo:
        current = todo.pop()
        for name, cells in spec.partitions:
            if name == current:
                new = [c for c in cells if c not in parts]
                parts += new
                todo += new
    return parts


def _complement_rows(values: np.ndarray, hidden: np.ndarray, total: int,
                     cells: list[int]) -> bool:
    """Rule 3: rows whose total is visible and exactly one cell hidden get a second one."""
    sub_hidden = hidden[:, cells]
    rows = np.flatnonzero((sub_hidden.sum(axis=1) == 1) & ~hidden[:, total])
    if rows.size == 0:
        return False
    candidate = _companion_cost(values[np.ix_(rows, cells)], hidden[np.ix_(rows, cells)])
    pick = np.argmin(candidate, axis=1)
    has = np.isfinite(candidate[np.arange(rows.size), pick])
    hidden[rows[has], np.asarray(cells)[pick[has]]] = True
    return bool(has.any())


@dataclass(frozen=True)
class _Across:
    """The rows of rule 4: partition rows, their group (the same cell across the values of
    a dimension), and per group the city's row that they add up to (-1: not in the table)."""

    rows: np.ndarray
    groups: np.ndarray
    city: np.ndarray


def _across_groups(out: pd.DataFrame, spec: SuppressionSpec) -> _Across | None:
    if not spec.across or "dimension" not in out.columns:
        return None
    in_partition = out["dimension"].isin(list(spec.partition_dimensions)).to_numpy()
    if not in_partition.any():
        return None
    key_cols = list(dict.fromkeys(["dimension", *spec.across]))
    keys = out.loc[in_partition, key_cols].astype(str)
    group_ids = keys.groupby(list(keys.columns), sort=False).ngroup().to_numpy()
    city = np.full(int(group_ids.max()) + 1, -1, np.int64)
    same = [c for c in spec.across if c != "dimension"]
    city_rows = np.flatnonzero((out["dimension"] == "all").to_numpy())
    if city_rows.size:
        where = {tuple(k): i for i, k in zip(
            city_rows, out.iloc[city_rows][same].astype(str).itertuples(index=False),
            strict=True)}
        for g, k in zip(group_ids, keys[same].itertuples(index=False), strict=True):
            city[g] = where.get(tuple(k), -1)
    return _Across(np.flatnonzero(in_partition), group_ids, city)


def _complement_column(values: np.ndarray, hidden: np.ndarray, across: _Across,
                       column: int, whole_row: list[int] | None) -> bool:
    """Rule 4: in each group of partition rows, one hidden cell in ``column`` — counting
    the city's cell they add up to — gets a second (with ``whole_row``, the second row is
    hidden entirely: it is the row total)."""
    rows, groups = across.rows, across.groups
    h = hidden[rows, column]
    n_groups = across.city.size
    city_hidden = np.where(across.city >= 0, hidden[np.maximum(across.city, 0), column],
                           False)
    hidden_per_group = np.bincount(groups, weights=h, minlength=n_groups) + city_hidden
    lonely = hidden_per_group[groups] == 1
    if not lonely.any():
        return False
    candidate = np.where(lonely, _companion_cost(values[rows, column], h), np.inf)
    frame = pd.DataFrame({"g": groups, "c": candidate})
    best = frame[np.isfinite(candidate)].groupby("g")["c"].idxmin()
    if best.empty:
        return False
    chosen = rows[best.to_numpy()]
    hidden[chosen, column] = True
    if whole_row:
        for c in whole_row:
            hidden[chosen, c] = True
    return True
