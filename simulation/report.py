"""What ``bouquet simulate compare`` reports: the figures of the question, and the plot.

The question is whether tailored bundles move residents to a weekly or daily cadence, so
the headline is the **use-based weekly-or-better share** at the last week; beside it the
daily share, use contacts and exposure per resident per week. Every figure is a mean over
seeds with a 95% interval; comparisons between policies are paired by seed (each seed is
one simulated world shared by every policy).

The plot (weekly-or-better share at the end of each week, one line per policy with its
interval) is written as a PNG and as a self-contained HTML page (the chart inline as SVG,
the figures as a table: no file or network access needed to read it).
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bouquet.simulation.closed_loop import Comparison, Estimate

#: (label, figure of :data:`~bouquet.simulation.closed_loop.FIGURES`, unit, as a percentage)
HEADLINE: tuple[tuple[str, str, str, bool], ...] = (
    ("weekly or better (use)", "weekly_or_better", "share of residents", True),
    ("daily (use)", "daily", "share of residents", True),
    ("use contacts / resident / week", "use", "events per resident per week", False),
    ("exposure / resident / week", "exposure", "events per resident per week", False),
)
#: Benchmark figure names of the per-policy headline share (other tools read them).
SHARE_FIGURE = "weekly_share_use@{policy}"


@dataclass(frozen=True)
class Headline:
    """The comparison's answer: model against popular and against the consent oracle."""

    lift: Estimate | None  # relative lift of the model over popular (weekly-or-better)
    gap_closed: Estimate | None  # share of the popular → oracle gap the model closes


def headline(result: Comparison, model: str = "model", floor: str = "popular",
             ceiling: str = "oracle") -> Headline:
    have = set(result.policies)
    lift = result.lift(model, floor) if {model, floor} <= have else None
    gap = (result.gap_closed(model, floor, ceiling) if {model, floor, ceiling} <= have
           else None)
    return Headline(lift, gap)


def estimate_figures(name: str, e: Estimate, unit: str) -> list[tuple[str, float, str]]:
    """An estimate as three figures of the benchmark contract: ``name``, ``name_ci_low``
    and ``name_ci_high``."""
    return [(name, e.mean, unit), (f"{name}_ci_low", e.low, unit),
            (f"{name}_ci_high", e.high, unit)]


def benchmark_figures(result: Comparison) -> list[tuple[str, float, str]]:
    """``(name, value, unit)`` of the benchmark output contract: per policy the headline
    figures (``weekly_share_use@<policy>`` and friends, each with ``_ci_low``/``_ci_high``),
    then ``lift_model_vs_popular`` (with its interval) and ``oracle_gap_closed``."""
    out: list[tuple[str, float, str]] = []
    for policy in result.policies:
        for _, figure, unit, _ in HEADLINE:
            name = (SHARE_FIGURE.format(policy=policy) if figure == "weekly_or_better"
                    else f"{figure}_per_resident_week@{policy}" if figure in ("use", "exposure")
                    else f"{figure}_share_use@{policy}")
            out += estimate_figures(name, result.estimate(policy, figure), unit)
    found = headline(result)
    if found.lift is not None:
        out += estimate_figures("lift_model_vs_popular", found.lift, "relative")
    if found.gap_closed is not None:
        out += estimate_figures("oracle_gap_closed", found.gap_closed, "share of the gap")
    return out


def _png_and_svg(result: Comparison, title: str) -> tuple[bytes, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for policy in result.policies:
        curve = result.weekly_curve(policy)
        weeks = list(range(1, len(curve) + 1))
        mean = [100 * e.mean for e in curve]
        ax.plot(weeks, mean, marker="o", markersize=3, label=policy)
        if len(result.seeds) > 1:
            ax.fill_between(weeks, [100 * e.low for e in curve], [100 * e.high for e in curve],
                            alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish_share_axes(fig, ax, xlabel="week", title=title, legend="upper left")
    png, svg = io.BytesIO(), io.StringIO()
    fig.savefig(png, format="png")
    fig.savefig(svg, format="svg")
    plt.close(fig)
    return png.getvalue(), svg.getvalue()


def finish_share_axes(fig: Any, ax: Any, *, xlabel: str, title: str, legend: str) -> None:
    """The house style of a chart whose y axis is the use-based weekly-or-better share."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("weekly or better, use (% of residents)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=9)
    fig.tight_layout()


def write_plot(result: Comparison, png_path: Path, html_path: Path, *, title: str,
               notes: list[str] | None = None) -> None:
    """The weekly-or-better share per week and policy, as PNG and as an HTML page."""
    png, svg = _png_and_svg(result, title)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(png)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(_page(result, svg[svg.index("<svg"):], title, notes or []), "utf-8")


def _cell(e: Estimate, percent: bool) -> str:
    if percent:
        text = f"{100 * e.mean:.2f}%"
        return text if math.isnan(e.low) else f"{text} [{100 * e.low:.2f}, {100 * e.high:.2f}]"
    text = f"{e.mean:.3f}"
    return text if math.isnan(e.low) else f"{text} [{e.low:.3f}, {e.high:.3f}]"


def _page(result: Comparison, svg: str, title: str, notes: list[str]) -> str:
    rows = "".join(
        "<tr><th>" + html.escape(policy) + "</th>"
        + "".join(f"<td>{_cell(result.estimate(policy, figure), percent)}</td>"
                  for _, figure, _, percent in HEADLINE) + "</tr>"
        for policy in result.policies)
    found = headline(result)
    lines = []
    if found.lift is not None:
        lines.append(f"Relative lift of the model over popular: {_cell(found.lift, True)}")
    if found.gap_closed is not None:
        lines.append("Share of the popular → consent-oracle gap the model closes: "
                     f"{_cell(found.gap_closed, True)}")
    extra = "".join(f"<p>{html.escape(t)}</p>" for t in [*lines, *notes])
    head = "".join(f"<th>{html.escape(label)}</th>" for label, *_ in HEADLINE)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;
text-align:right}}th:first-child{{text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
{svg}
<p>Mean over seeds [95% interval]; use cadence (use, pay, subscribe, rate).</p>
<table><tr><th>policy</th>{head}</tr>{rows}</table>
{extra}
</body></html>
"""
