"""The outreach figures of ``bouquet simulate compare``: what nudges add to pull, what they
cost in opt-outs, and how both move with the cap and with the opt-out assumption.

Every figure is a mean over seeds with a 95% interval (t over seeds; relative lifts by the
delta method on the per-seed pairs, :meth:`Comparison.lift`), like the pull figures of
:mod:`bouquet.simulation.report`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from bouquet.simulation.closed_loop import Comparison, Estimate
from bouquet.simulation.report import SHARE_FIGURE, estimate_figures, finish_share_axes

#: The outreach policies of the question and their pull-only counterparts.
MODEL_OUTREACH = "model+outreach"
POPULAR_OUTREACH = "popular+outreach"
MODEL_PULL = "model"
#: Figure of :attr:`PolicyRun.outreach` that the opt-out aims are stated on.
OPTOUT = "optout_rate_per_month"
SHARE = "weekly_or_better"


def outreach_figures(result: Comparison) -> list[tuple[str, float, str]]:
    """``(name, value, unit)`` of the benchmark output contract for the outreach question
    (only those whose policies ran): ``lift_outreach_vs_pull`` (model + outreach over the
    model alone, relative, with its interval), ``lift_model_outreach_vs_popular_outreach``,
    ``optout_rate_per_month@default_cap`` and, per outreach policy, its opt-out rate, open
    rate and nudges per contactable resident and week."""
    have = set(result.policies)
    out: list[tuple[str, float, str]] = []
    if {MODEL_OUTREACH, MODEL_PULL} <= have:
        out += estimate_figures("lift_outreach_vs_pull",
                                result.lift(MODEL_OUTREACH, MODEL_PULL), "relative")
        out += estimate_figures("diff_outreach_vs_pull",
                                result.uplift(MODEL_OUTREACH, MODEL_PULL), "share of residents")
    if {MODEL_OUTREACH, POPULAR_OUTREACH} <= have:
        out += estimate_figures("lift_model_outreach_vs_popular_outreach",
                                result.lift(MODEL_OUTREACH, POPULAR_OUTREACH), "relative")
    if MODEL_OUTREACH in have:
        out += estimate_figures("optout_rate_per_month@default_cap",
                                result.estimate(MODEL_OUTREACH, OPTOUT),
                                "share of contactable / month")
    for policy in result.policies:
        runs = [r for r in result.runs if r.policy == policy]
        if not runs or not runs[0].outreach:
            continue
        for figure, unit in ((OPTOUT, "share of contactable / month"),
                             ("open_rate", "share of nudges"),
                             ("nudges_per_contactable_week", "nudges")):
            out += estimate_figures(f"{figure}@{policy}", result.estimate(policy, figure), unit)
    return out


@dataclass(frozen=True)
class SweepPoint:
    """One outreach setting of the sweep: its key (in figure names), its label (in tables
    and the plot), use-based weekly share and opt-outs."""

    key: str
    label: str
    share: Estimate
    optout: Estimate

    @classmethod
    def of(cls, result: Comparison, policy: str, key: str, label: str) -> SweepPoint:
        return cls(key, label, result.estimate(policy, SHARE), result.estimate(policy, OPTOUT))


def sweep_figures(points: list[SweepPoint]) -> list[tuple[str, float, str]]:
    """The sweep's points as benchmark figures (``weekly_share_use@<label>`` and
    ``optout_rate_per_month@<label>``, each with its interval)."""
    out: list[tuple[str, float, str]] = []
    for p in points:
        out += estimate_figures(SHARE_FIGURE.format(policy=p.key), p.share, "share of residents")
        out += estimate_figures(f"{OPTOUT}@{p.key}", p.optout, "share of contactable / month")
    return out


def write_sweep_plot(series: dict[str, list[SweepPoint]], png_path: Path, *, title: str
                     ) -> None:
    """Use-based weekly share against opt-outs per month, one line per series (the cap
    sweep under each opt-out assumption), 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, points in series.items():
        x = [100 * p.optout.mean for p in points]
        y = [100 * p.share.mean for p in points]
        xerr = [[100 * (p.optout.mean - p.optout.low) for p in points],
                [100 * (p.optout.high - p.optout.mean) for p in points]]
        yerr = [[100 * (p.share.mean - p.share.low) for p in points],
                [100 * (p.share.high - p.share.mean) for p in points]]
        finite = all(v == v for pair in (*xerr, *yerr) for v in pair)
        ax.errorbar(x, y, xerr=xerr if finite else None, yerr=yerr if finite else None,
                    marker="o", capsize=3, label=name)
        for p, xi, yi in zip(points, x, y, strict=True):
            ax.annotate(p.label.split(",")[0], (xi, yi), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    finish_share_axes(fig, ax, xlabel="opt-outs per month (% of contactable residents)",
                      title=title, legend="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(buffer.getvalue())
