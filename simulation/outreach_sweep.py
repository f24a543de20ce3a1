"""The outreach settings beside the default: a cap sweep and the opt-out sensitivity.

The cap sweep runs ``model+outreach`` at 1, 2, 3 and 4 nudges a week, the minimum gap
scaled to allow each (7 days / cap: 168, 84, 56 and 42 hours); the sensitivity runs
``model+outreach`` at the default cap (the settings' caps) with the stated opt-out
assumption and with the opt-out probability × 0.5 and × 2
(:attr:`~bouquet.simulation.nudges.NudgeParams.optout_scale`). Every setting runs on the
same seeds, so the points are paired cities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from rich.table import Table

from bouquet.core.catalog import Catalog
from bouquet.core.settings import Settings
from bouquet.outreach.rules import WEEK_S
from bouquet.simulation.closed_loop import (
    Comparison,
    PolicyRun,
    compare,
    register_policy,
    with_outreach,
)
from bouquet.simulation.nudges import NudgeParams
from bouquet.simulation.outreach_report import (
    MODEL_OUTREACH,
    SweepPoint,
    sweep_figures,
    write_sweep_plot,
)
from bouquet.simulation.policies import Policy

CAPS: tuple[int, ...] = (1, 2, 3, 4)
OPTOUT_SCALES: tuple[float, ...] = (0.5, 2.0)
Progress = Callable[[int, str], AbstractContextManager[Callable[[PolicyRun], None]]]


def cap_policy(cap: int) -> str:
    return f"{MODEL_OUTREACH}@cap{cap}"


@dataclass
class Sweep:
    """Each opt-out assumption's points (one per cap, or the default cap alone) and the
    comparisons behind them."""

    series: dict[str, list[SweepPoint]] = field(default_factory=dict)
    results: dict[str, Comparison] = field(default_factory=dict)

    def points(self) -> Iterator[SweepPoint]:
        for points in self.series.values():
            yield from points

    def figures(self) -> list[tuple[str, float, str]]:
        return sweep_figures(list(self.points()))

    def table(self, title: str) -> Table:
        table = Table("setting", "weekly+ (use)", "opt-outs / month", title=title)
        for p in self.points():
            table.add_row(p.label, f"{p.share.mean:.2%} [{p.share.low:.2%}, {p.share.high:.2%}]",
                          f"{p.optout.mean:.2%} [{p.optout.low:.2%}, {p.optout.high:.2%}]")
        return table

    def plot(self, png: Path, title: str) -> None:
        write_sweep_plot(self.series, png, title=title)


def run_sweep(catalog: Catalog, settings: Settings, model_policy: Callable[[int], Policy], *,
              residents: int, seeds: list[int], weeks: int, k: int, end: date | None,
              caps: bool, sensitivity: bool, progress: Progress) -> Sweep:
    """Run the sweep (``caps``) and/or the sensitivity (``sensitivity``); see the module
    docstring."""
    names = [MODEL_OUTREACH]
    labels = {MODEL_OUTREACH: "default cap"}
    if caps:
        names = []
        for cap in CAPS:
            gap_h = WEEK_S / cap / 3600.0

            def factory(seed: int, cap: int = cap, gap_h: float = gap_h) -> Policy:
                return with_outreach(model_policy(seed), seed, settings=settings,
                                     max_per_week=cap, min_gap_h=gap_h,
                                     name=cap_policy(cap))

            register_policy(cap_policy(cap), factory)
            names.append(cap_policy(cap))
            labels[cap_policy(cap)] = f"cap {cap}/week (gap {gap_h:.0f} h)"
    runs = [(1.0, names)] if caps else []
    if sensitivity:
        # the stated assumption at the default cap, then the opt-out probability scaled
        runs += [(scale, [MODEL_OUTREACH]) for scale in (1.0, *OPTOUT_SCALES)]
    sweep = Sweep()
    for scale, policies in runs:
        key = f"opt-out × {scale:g}"
        series = f"cap sweep, {key}" if policies != [MODEL_OUTREACH] else f"default cap, {key}"
        with progress(len(policies) * len(seeds), f"outreach, {series}") as bar:
            result = compare(policies, catalog, residents=residents, weeks=weeks,
                             seeds=seeds, k=k, end=end, on_run=bar,
                             nudge_params=NudgeParams(optout_scale=scale))
        sweep.results[series] = result
        sweep.series[series] = [SweepPoint.of(result, name, f"{name}@optout_x{scale:g}",
                                              f"{labels.get(name, name)}, {key}")
                                for name in policies]
    return sweep
