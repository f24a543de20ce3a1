"""The operator figures: selection (dimension, value, last N weeks), derived shares and
small-cell suppression, turning :class:`~bouquet.analytics.engagement.Engagement` tables
into :class:`~bouquet.analytics.tables.Table` objects.

One function per figure family, all used by the API, the CLI and (through the API) the
dashboard, so a number is computed and suppressed in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bouquet.analytics.engagement import (
    CADENCES,
    DIMENSIONS,
    FUNNEL_STAGES,
    HISTOGRAM,
    LIFETIME,
    QUANTILES,
    Engagement,
)
from bouquet.analytics.suppression import FLAG, SuppressionSpec, suppress
from bouquet.analytics.tables import Table

#: The per-row list of merged classes shown in place of their hidden parts.
MERGED = "merged"
#: Merged cadence classes, finest first: column → the classes it adds up. When a part is
#: hidden (a small class, or its companion), the merged class is what the row shows of
#: them: "weekly or better", else "monthly or better" (the window's actives).
MERGED_CLASSES: dict[str, tuple[str, ...]] = {
    "weekly_plus": ("daily", "weekly"),
    "active_window": ("daily", "weekly", "monthly"),
}
#: ``by`` values accepted everywhere.
BREAKDOWNS: tuple[str, ...] = ("all", *DIMENSIONS)
BUCKETS = [name for _, _, name in HISTOGRAM]
LIFETIME_BUCKETS = [name for _, _, name in LIFETIME]
PCTS = [name for _, name in QUANTILES]
SHARES = [f"share_{c}" for c in CADENCES]


@dataclass(frozen=True)
class FigureDef:
    title: str
    columns: list[str]
    spec: SuppressionSpec
    period: str  # "week" | "month" | "day" | "cohort" | "none"


_KEYS = ["dimension", "value"]
FIGURES: dict[str, FigureDef] = {
    "cadence": FigureDef(
        title="Residents by cadence, as of the end of each ISO week",
        columns=[*_KEYS, "week", "week_start", "known", *CADENCES, "weekly_plus",
                 "active_window", *SHARES, "share_weekly_plus", "share_active_window",
                 MERGED, "window_complete", "week_complete"],
        spec=SuppressionSpec(
            counts=["known", *CADENCES, "weekly_plus", "active_window"],
            gates=[("known", [*CADENCES, "weekly_plus", "active_window"])],
            # the merged classes first, finest first: a hidden class takes its companion
            # inside the smallest merged class that holds it (daily ↔ weekly, then weekly
            # or better ↔ monthly), and the merged class is shown in their place, instead
            # of a large band (yearly, dormant) being hidden for a handful of residents
            partitions=[("weekly_plus", ["daily", "weekly"]),
                        ("active_window", ["weekly_plus", "monthly"]),
                        ("active_window", ["daily", "weekly", "monthly"]),
                        ("known", ["active_window", "yearly", "dormant"]),
                        ("known", ["weekly_plus", "monthly", "yearly", "dormant"]),
                        ("known", list(CADENCES))],
            across=["week"],
            derived={f"share_{c}": [c, "known"] for c in (*CADENCES, *MERGED_CLASSES)},
        ),
        period="week",
    ),
    "stickiness": FigureDef(
        title="Stickiness: daily and weekly actives over 28-day actives, per ISO week",
        columns=[*_KEYS, "week", "week_start", "days_observed", "dau_mean", "wau", "mau",
                 "dau_mau", "wau_mau", "window_complete", "week_complete"],
        spec=SuppressionSpec(
            counts=["dau_mean", "wau", "mau"],
            gates=[("mau", ["dau_mean", "wau"])],
            derived={"dau_mau": ["dau_mean", "mau"], "wau_mau": ["wau", "mau"]},
        ),
        period="week",
    ),
    "contacts": FigureDef(
        title="Contacts per resident per week: histogram, means and percentiles",
        columns=[*_KEYS, "week", "week_start", "known", "active", "contacts",
                 "mean_per_known", "mean_per_active", *PCTS, *BUCKETS, "week_complete"],
        spec=SuppressionSpec(
            counts=["known", "active", "contacts", *BUCKETS],
            gates=[("known", ["active", "contacts", *BUCKETS]),
                   ("active", ["contacts", *PCTS])],
            partitions=[("known", BUCKETS), ("known", ["h0", "active"]),
                        ("active", BUCKETS[1:])],
            across=["week"],
            derived={"mean_per_known": ["contacts", "known"],
                     "mean_per_active": ["contacts", "active"]},
            quantiles={p: (f"{p}_n_le", f"{p}_n_ge") for p in PCTS},
        ),
        period="week",
    ),
    "cohorts": FigureDef(
        title="Cohorts by month of first contact: share still in contact N months later",
        columns=[*_KEYS, "cohort", "months_since", "cohort_size", "retained", "retention"],
        spec=SuppressionSpec(
            counts=["cohort_size", "retained"],
            gates=[("cohort_size", ["retained"])],
            derived={"retention": ["retained", "cohort_size"]},
        ),
        period="cohort",
    ),
    "monthly": FigureDef(
        title="Calendar months: monthly actives, mean daily and weekly actives, stickiness",
        columns=[*_KEYS, "month", "days_observed", "weeks", "mau", "dau_mean", "wau_mean",
                 "dau_mau", "wau_mau", "month_complete"],
        spec=SuppressionSpec(
            counts=["mau", "dau_mean", "wau_mean"],
            gates=[("mau", ["dau_mean", "wau_mean"])],
            derived={"dau_mau": ["dau_mean", "mau"], "wau_mau": ["wau_mean", "mau"]},
        ),
        period="month",
    ),
    "lifetime": FigureDef(
        title="Lifetime contacts per resident: single-contact share, distribution, "
              "concentration",
        columns=[*_KEYS, "residents", "contacts", "share_single", "mean", "p50", "p90",
                 "p99", "top10_share", *LIFETIME_BUCKETS],
        spec=SuppressionSpec(
            counts=["residents", "contacts", *LIFETIME_BUCKETS],
            gates=[("residents", ["contacts", *LIFETIME_BUCKETS]),
                   ("top10_residents", ["top10_share"])],
            partitions=[("residents", LIFETIME_BUCKETS)],
            across=["dimension"],
            derived={"share_single": ["l1", "residents"], "mean": ["contacts", "residents"]},
            quantiles={p: (f"{p}_n_le", f"{p}_n_ge") for p in ("p50", "p90", "p99")},
        ),
        period="none",
    ),
    "daily": FigureDef(
        title="Daily active residents",
        columns=[*_KEYS, "day", "dau"],
        spec=SuppressionSpec(counts=["dau"]),
        period="day",
    ),
}

FUNNEL_COLUMNS = ["dimension", "value", "model_version", "variant", "arm",
                  *[f"{s}_events" for s in FUNNEL_STAGES], "residents_shown",
                  *[f"{s}_residents" for s in FUNNEL_STAGES[1:]],
                  *[f"{s}_rate" for s in FUNNEL_STAGES[1:]]]
FUNNEL_SPEC = SuppressionSpec(
    counts=[*[f"{s}_events" for s in FUNNEL_STAGES], "residents_shown",
            *[f"{s}_residents" for s in FUNNEL_STAGES[1:]]],
    gates=[("residents_shown", [*[f"{s}_events" for s in FUNNEL_STAGES],
                                *[f"{s}_residents" for s in FUNNEL_STAGES[1:]]])],
    derived={f"{s}_rate": [f"{s}_residents", "residents_shown"] for s in FUNNEL_STAGES[1:]},
    across=["model_version", "variant"],
    across_cells=[*[f"{s}_events" for s in FUNNEL_STAGES], "residents_shown",
                  *[f"{s}_residents" for s in FUNNEL_STAGES[1:]]],
)
UPLIFT_COLUMNS = ["dimension", "value", "arm", "baseline", "stage", "residents",
                  "converted", "rate", "baseline_residents", "baseline_converted",
                  "baseline_rate", "difference", "ci_low", "ci_high", "relative_uplift",
                  "significant"]
_UPLIFT_INPUTS = ["converted", "baseline_converted", "residents", "baseline_residents"]
FUNNEL_WEEKLY_SPEC = SuppressionSpec(
    counts=FUNNEL_SPEC.counts, gates=FUNNEL_SPEC.gates, derived=FUNNEL_SPEC.derived,
    across=["model_version", "variant", "week"], across_cells=FUNNEL_SPEC.across_cells,
)
UPLIFT_SPEC = SuppressionSpec(
    counts=["residents", "converted", "baseline_residents", "baseline_converted"],
    gates=[("residents", ["converted"]), ("baseline_residents", ["baseline_converted"])],
    derived={"rate": ["converted", "residents"],
             "baseline_rate": ["baseline_converted", "baseline_residents"],
             **{c: _UPLIFT_INPUTS for c in ["difference", "ci_low", "ci_high",
                                            "relative_uplift", "significant"]}},
)


class BadQuery(ValueError):
    """A selection that cannot be answered (unknown figure, dimension or value)."""


def select(frame: pd.DataFrame, by: str, value: str | None) -> pd.DataFrame:
    if by not in BREAKDOWNS:
        raise BadQuery(f"by must be one of {', '.join(BREAKDOWNS)}, not {by!r}")
    if frame.empty:
        return frame
    out = frame[frame["dimension"] == by]
    return only_value(out, by, value)


def only_value(frame: pd.DataFrame, by: str, value: str | None) -> pd.DataFrame:
    """The rows of one ``value`` of the ``by`` breakdown (``BadQuery`` if it has none).

    Applied only to a breakdown suppressed as a whole: suppressing the selected rows alone
    would drop the complementary cells chosen against the other values, and a hidden cell
    could then be recovered as the city's figure minus the other values' ones."""
    if value is None or by == "all" or frame.empty:
        return frame
    known = set(frame["value"])
    if value not in known:
        raise BadQuery(f"{by} {value!r} has no data; values: {', '.join(sorted(known))}")
    return frame[frame["value"] == value]


def _last(frame: pd.DataFrame, column: str, n: int | None) -> pd.DataFrame:
    if n is None or frame.empty:
        return frame
    if n < 1:
        raise BadQuery("weeks/months/days must be at least 1")
    keep = sorted(frame[column].unique())[-n:]
    return frame[frame[column].isin(keep)]


def suppressed_breakdown(eng: Engagement, figure: str, k: int, by: str) -> pd.DataFrame:
    """One engagement figure's whole ``by`` breakdown (every value, every period), with its
    derived shares, suppressed as a whole — what every selection of it is cut from."""
    if figure not in FIGURES:
        raise BadQuery(f"figure must be one of {', '.join(FIGURES)}, not {figure!r}")
    fig = FIGURES[figure]
    frame = select(getattr(eng, figure), by, None).copy()
    if frame.empty:
        return frame
    if figure == "cadence":
        return suppressed_cadence(frame, k)
    return suppress(frame, fig.spec, k)


def suppressed_cadence(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Cadence rows (a whole breakdown) with their derived columns, suppressed, and each
    row's merged classes named."""
    return merged_flags(suppress(cadence_columns(frame), FIGURES["cadence"].spec, k))


def cadence_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The cadence table's derived columns: the merged classes (weekly or better, the
    window's actives) and every class's share of the known residents."""
    frame = frame.copy()
    for merged, parts in MERGED_CLASSES.items():
        frame[merged] = frame[list(parts)].sum(axis=1)
    known = frame["known"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in (*CADENCES, *MERGED_CLASSES):
            frame[f"share_{c}"] = np.where(known > 0, frame[c] / known, np.nan)
    return frame


def merged_flags(shown: pd.DataFrame) -> pd.DataFrame:
    """Name, in each row's ``merged`` list, the merged classes to draw in place of hidden
    parts (finest first; a coarser one only for parts no finer one covers), so readers
    draw "weekly or better" as one band rather than a gap or a missing band."""
    shown = shown.copy()
    shown[MERGED] = [_merged(set(flags)) for flags in shown[FLAG]]
    return shown


def _merged(flags: set[str]) -> list[str]:
    out: list[str] = []
    covered: set[str] = set()
    for merged, parts in MERGED_CLASSES.items():
        if merged not in flags and (set(parts) & flags) - covered:
            out.append(merged)
            covered |= set(parts)
    return out


def engagement_figure(eng: Engagement, figure: str, k: int, *, by: str = "all",
                      value: str | None = None, last: int | None = None,
                      shown: pd.DataFrame | None = None, events: str = "use") -> Table:
    """One engagement figure for ``by`` (all, or every value of one dimension, or one
    ``value``), limited to the ``last`` weeks (months, days, cohorts): cut from the
    suppressed whole breakdown (``shown``, default: computed here)."""
    if shown is None:
        shown = suppressed_breakdown(eng, figure, k, by)
    fig = FIGURES[figure]
    period_col = {"week": "week_start", "month": "month", "day": "day",
                  "cohort": "cohort", "none": None}[fig.period]
    shown = only_value(shown, by, value)
    if period_col and not shown.empty:
        shown = _last(shown, period_col, last)
    rules = eng.rules
    return Table.from_frame(
        figure, fig.title, shown, k, columns=fig.columns, by=by, value=value, events=events,
        rules={"window_days": rules.window_days, "daily_min_days": rules.daily_min_days,
               "weekly_min_weeks": rules.weekly_min_weeks,
               "yearly_weeks": rules.yearly_weeks},
        source=eng.summary,
    )


def suppressed_arms(arms: pd.DataFrame, k: int) -> pd.DataFrame:
    """The funnel per arm (every value of a breakdown), suppressed as a whole."""
    return suppress(arms, FUNNEL_SPEC, k) if not arms.empty else arms


#: What an empty funnel answer says: the funnel fills only when front ends echo the id, so
#: an operator who sees nothing must learn why rather than conclude that nobody converts.
EMPTY_FUNNEL_HINT = (
    "No event carries a recommendation_id yet. The funnel counts the view, click, subscribe "
    "and use events whose recommendation_id echoes the one a recommendation answer gave: "
    "front ends must send it back with each of those events (docs/engagement.md, "
    "Recommendation funnel and uplift).")
#: Where the hint points: the event contract in the API's own description (public on a
#: laptop, for key holders in production), and the doc section in the repository.
EMPTY_FUNNEL_DOC = {
    "href": "/docs#/events/post_events_v1_events_post",
    "title": "POST /v1/events: the recommendation_id field",
    "file": "docs/engagement.md#recommendation-funnel-and-uplift",
}


def funnel_figure(shown: pd.DataFrame, k: int, *, by: str = "all", value: str | None = None,
                  **meta: object) -> Table:
    """The funnel figure from :func:`suppressed_arms`, for one ``value`` of ``by`` or all;
    with no arm at all, ``hint`` says what front ends must send and ``doc`` where."""
    selected = only_value(shown, by, value)
    if shown.empty:
        meta = {**meta, "hint": EMPTY_FUNNEL_HINT, "doc": EMPTY_FUNNEL_DOC}
    return Table.from_frame("funnel", "Recommendation funnel per model version and variant "
                            "(residents; attributed through recommendation_id)",
                            selected, k, columns=FUNNEL_COLUMNS, by=by, value=value, **meta)


def funnel_weekly_figure(weekly: pd.DataFrame, k: int, **meta: object) -> Table:
    shown = suppress(weekly, FUNNEL_WEEKLY_SPEC, k) if not weekly.empty else weekly
    return Table.from_frame("funnel_weekly", "Recommendation funnel per arm and ISO week",
                            shown, k, columns=[*FUNNEL_COLUMNS[:4], "week",
                                               *FUNNEL_COLUMNS[4:]], **meta)


def suppressed_uplift(table: pd.DataFrame, k: int, arms: pd.DataFrame | None = None
                      ) -> pd.DataFrame:
    """Uplift rows of a whole breakdown, suppressed; with ``arms`` (:func:`suppressed_arms`
    of the same breakdown), an uplift count is also hidden wherever the funnel hides the same
    number (residents shown, residents converted of an arm or of the baseline): the two
    figures publish the same counts and must hide the same ones."""
    if table.empty:
        return table
    preset = _funnel_hidden_in_uplift(table, arms) if arms is not None else None
    return suppress(table, UPLIFT_SPEC, k, preset=preset)


def uplift_figure(shown: pd.DataFrame, k: int, *, by: str = "all", value: str | None = None,
                  **meta: object) -> Table:
    """The uplift figure from :func:`suppressed_uplift`, for one ``value`` of ``by`` or all."""
    return Table.from_frame("uplift", "Uplift of each arm over the baseline: difference of "
                            "conversion rates with a 95% Newcombe interval",
                            only_value(shown, by, value), k, columns=UPLIFT_COLUMNS, by=by,
                            value=value, **meta)


def _funnel_hidden_in_uplift(table: pd.DataFrame, arms: pd.DataFrame
                             ) -> dict[str, np.ndarray]:
    """Uplift column → rows whose number the suppressed funnel hides."""
    hidden = {(r["value"], r["arm"], c) for r in arms.to_dict("records")
              for c in (r.get(FLAG) or [])}
    rows = table.to_dict("records")

    def mask(arm_column: str, column_of: Any) -> np.ndarray:
        return np.array([(r["value"], r[arm_column], column_of(r)) in hidden for r in rows],
                        dtype=bool)

    return {
        "residents": mask("arm", lambda r: "residents_shown"),
        "converted": mask("arm", lambda r: f"{r['stage']}_residents"),
        "baseline_residents": mask("baseline", lambda r: "residents_shown"),
        "baseline_converted": mask("baseline", lambda r: f"{r['stage']}_residents"),
    }
