"""What an operator can work out from everything the operator API publishes.

Every published table becomes a set of *cells*, each named by what it counts (figure, row
identity, column), so the same number asked for twice — a whole breakdown, then one value
of it — is one cell. The linear relations an operator knows are those the suppression
rules are written against (``SuppressionSpec``): a row total is the sum of its parts, and
the neighbourhoods (or, for live contact counts, the types) add up to the city's row.
Then each hidden cell is checked: is it determined by the visible cells through those
relations, i.e. is it a linear combination of visible numbers? (A cell shown in one
answer and hidden in another is the simplest case.) Cells of rows a table leaves out are
taken as known zeros, which only helps the attacker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bouquet.analytics.suppression import FLAG, SuppressionSpec

Cell = tuple[Any, ...]


@dataclass
class Published:
    """Everything published about one figure: visible values and hidden cells."""

    figure: str
    spec: SuppressionSpec
    #: columns naming a row (besides ``dimension`` and ``value``)
    keys: Sequence[str]
    visible: dict[Cell, float] = field(default_factory=dict)
    hidden: set[Cell] = field(default_factory=set)
    conflicts: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The count columns the relations and the primary rule are about."""
        names = list(self.spec.counts)
        for total, cells in self.spec.partitions:
            names += [total, *cells]
        return list(dict.fromkeys([*names, *self.spec.across_cells]))

    def row_id(self, row: dict[str, Any]) -> Cell:
        return (row.get("dimension"), row.get("value"), *(row[k] for k in self.keys))

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """One answer's rows (hidden cells are None and named in ``suppressed``)."""
        for row in rows:
            rid = self.row_id(row)
            for column in self.columns:
                if column not in row:
                    continue
                cell = (*rid, column)
                if column in (row.get(FLAG) or []):
                    self.hidden.add(cell)
                elif row[column] is not None:
                    shown = float(row[column])
                    if self.visible.setdefault(cell, shown) != shown:
                        self.conflicts.append(f"{cell}: {self.visible[cell]} and {shown}")

    def relations(self) -> list[list[Cell]]:
        """Each relation as [total, part, part, …] (total = sum of the parts)."""
        rows = {cell[:-1] for cell in (*self.visible, *self.hidden)}
        out = []
        for rid in rows:
            for total, cells in self.spec.partitions:
                out.append([(*rid, total), *[(*rid, c) for c in cells]])
        across = [*dict.fromkeys([c for total, cells in self.spec.partitions
                                  for c in (total, *cells)] + list(self.spec.across_cells))]
        groups: dict[Cell, list[Cell]] = defaultdict(list)
        for rid in rows:
            if rid[0] in self.spec.partition_dimensions:
                groups[(rid[0], *rid[2:])].append(rid)
        for (_, *rest), members in groups.items():
            city = ("all", "all", *rest)
            for column in across:
                out.append([(*city, column), *[(*m, column) for m in members]])
        return out

    def recoverable(self) -> list[Cell]:
        """Hidden cells that the visible cells and the relations determine."""
        leaks = sorted(self.hidden & set(self.visible), key=str)
        unknown = self.hidden - set(self.visible)
        # each relation over the unknowns it holds (the visible cells are constants);
        # relations sharing unknowns form independent systems, solved one by one
        systems: list[list[tuple[float, Cell]]] = []
        for relation in self.relations():
            terms = [(1.0 if i == 0 else -1.0, cell) for i, cell in enumerate(relation)
                     if cell in unknown]
            if terms:
                systems.append(terms)
        parent = {cell: cell for cell in unknown}

        def root(cell: Cell) -> Cell:
            while parent[cell] != cell:
                parent[cell] = parent[parent[cell]]
                cell = parent[cell]
            return cell

        for terms in systems:
            for _, cell in terms[1:]:
                parent[root(cell)] = root(terms[0][1])
        components: dict[Cell, list[list[tuple[float, Cell]]]] = defaultdict(list)
        for terms in systems:
            components[root(terms[0][1])].append(terms)
        determined = []
        for equations in components.values():
            cells = sorted({cell for terms in equations for _, cell in terms}, key=str)
            index = {cell: i for i, cell in enumerate(cells)}
            a = np.zeros((len(equations), len(cells)))
            for row, terms in enumerate(equations):
                for sign, cell in terms:
                    a[row, index[cell]] += sign
            # a hidden cell is determined iff every solution of A x = 0 has x_j = 0
            _, s, vt = np.linalg.svd(a)
            rank = int((s > 1e-9 * max(1.0, s[0] if len(s) else 0.0)).sum())
            null = vt[rank:]
            determined += [cell for cell, j in index.items()
                           if null.shape[0] == 0 or np.abs(null[:, j]).max() < 1e-9]
        return leaks + sorted(determined, key=str)
