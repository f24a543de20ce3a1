"""The recommendation funnel and the uplift between experiment arms.

Attribution needs no look-up: every answer of the recommendation API carries a
``recommendation_id`` = ``<model_version>.<variant>.<token>`` that front ends echo in the
events that follow (:mod:`bouquet.core.recommendation`). The token is signed: an id that
does not verify (made up or altered by a client) is credited to the ``unattributed`` row,
never to an arm, and takes no part in uplift. An *arm* is a (model version,
variant) pair. Stages, by event type (the consumer credits ``Keys.funnel`` counters the
same way): ``view`` → **shown**, ``click`` → **opened**, ``subscribe`` → **subscribed**,
``use`` → **used**.

Figures per arm (from the event log):
- ``<stage>_events``: attributed events of the stage — what the Redis counters count;
- ``residents_shown``: distinct residents shown at least one of the arm's recommendations;
- ``<stage>_residents`` (opened, subscribed, used): residents shown by the arm who also
  reached the stage through one of the arm's recommendations;
- ``<stage>_rate`` = ``<stage>_residents / residents_shown``.

The unit is the resident, not the recommendation, because residents are what the
experiment randomises (a stable hash assigns each resident to a variant): one resident's
recommendations are not independent trials, residents are.

Uplift of an arm over the baseline arm, per stage: the difference of the two rates with
a 95 % confidence interval by **Newcombe's hybrid score method** (method 10 of Newcombe,
*Statistics in Medicine* 1998, 17:873–890), built from the two Wilson score intervals. It
keeps its coverage with small counts and rates near 0 or 1, where the Wald interval
fails. The interval is valid for arms that ran concurrently on randomised residents;
comparing two model versions that served in different weeks is not an experiment.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bouquet.analytics.engagement import FUNNEL_STAGES, iso_week_label, week_of_day
from bouquet.core.outreach import OUTREACH_VARIANT
from bouquet.core.recommendation import UNATTRIBUTED

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054
#: Variant names taken as the baseline arm when none is asked for.
BASELINE_VARIANTS: tuple[str, ...] = ("control", "baseline", "popular", "none")


def wilson(x: np.ndarray | float, n: np.ndarray | float, z: float = Z95
           ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion x / n (NaN where n = 0)."""
    x = np.asarray(x, float)
    n = np.asarray(n, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def newcombe_difference(x1: np.ndarray | float, n1: np.ndarray | float,
                        x2: np.ndarray | float, n2: np.ndarray | float, z: float = Z95
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference p1 − p2 and its hybrid-score confidence interval (Newcombe method 10)."""
    x1, n1, x2, n2 = (np.asarray(v, float) for v in (x1, n1, x2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def funnel_by_arm(events: pd.DataFrame, *, since_day: int | None = None,
                  weekly: bool = False, by: str = "all") -> pd.DataFrame:
    """Funnel figures per arm (per ISO week with ``weekly``; per value of a dimension with
    ``by``), from :attr:`bouquet.analytics.engagement.EngagementData.funnel_events`.

    With ``by``, a resident counts in the slice of the events they had there: shown in
    ``domain = mobility`` and subscribed there (neighbourhood is the resident's)."""
    group = [] if by == "all" else [by]
    keys = ["model_version", "variant"] + (["week"] if weekly else []) + group
    stage_cols = [f"{s}_events" for s in FUNNEL_STAGES]
    people_cols = [f"{s}_residents" for s in FUNNEL_STAGES[1:]]
    rate_cols = [f"{s}_rate" for s in FUNNEL_STAGES[1:]]
    front = ["dimension", "value", "model_version", "variant"] + (["week"] if weekly else [])
    columns = [*front, "arm", *stage_cols, "residents_shown", *people_cols, *rate_cols]
    ev = events if since_day is None else events[events["day"] >= since_day]
    if ev.empty:
        return pd.DataFrame({c: [] for c in columns})
    ev = ev[["resident", "day", "stage", "model_version", "variant", *group]].copy()
    for name in group:
        ev[name] = ev[name].astype(str)
    if weekly:
        weeks = week_of_day(ev["day"].to_numpy())
        labels = {w: iso_week_label(w) for w in np.unique(weeks).tolist()}
        ev["week"] = pd.Series(weeks, index=ev.index).map(labels)
    counts = ev.groupby([*keys, "stage"]).size().unstack("stage", fill_value=0)
    counts = counts.reindex(columns=list(FUNNEL_STAGES), fill_value=0)
    counts.columns = stage_cols
    pairs = ev.drop_duplicates([*keys, "stage", "resident"])[[*keys, "stage", "resident"]]
    shown = pairs[pairs["stage"] == "shown"].drop(columns="stage")
    out = counts
    out["residents_shown"] = shown.groupby(keys).size().reindex(out.index, fill_value=0)
    for stage in FUNNEL_STAGES[1:]:
        reached = pairs[pairs["stage"] == stage].drop(columns="stage")
        converted = reached.merge(shown, on=[*keys, "resident"], how="inner")
        out[f"{stage}_residents"] = converted.groupby(keys).size().reindex(out.index,
                                                                              fill_value=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for stage in FUNNEL_STAGES[1:]:
            out[f"{stage}_rate"] = np.where(out["residents_shown"] > 0,
                                            out[f"{stage}_residents"] / out["residents_shown"],
                                            np.nan)
    out = out.reset_index()
    out["dimension"] = by
    out["value"] = out[by] if group else "all"
    out["arm"] = out["model_version"].astype(str) + ":" + out["variant"].astype(str)
    for c in [*stage_cols, "residents_shown", *people_cols]:
        out[c] = out[c].astype(np.int64)
    order = ["value", "model_version", "variant"] + (["week"] if weekly else [])
    return out[columns].sort_values(order).reset_index(drop=True)


def experiment_arms(arms: pd.DataFrame) -> pd.DataFrame:
    """The arms of the experiment: without the ``unattributed`` row (events echoing ids
    that do not verify), which is no arm anyone assigned residents to, nor outreach's
    nudges, which reach residents of every arm: their experiment is the holdout, and their
    lift is the outreach lift (:mod:`bouquet.analytics.outreach`)."""
    if arms.empty:
        return arms
    return arms[(arms["model_version"] != UNATTRIBUTED)
                & (arms["variant"] != OUTREACH_VARIANT)]


def choose_baseline(arms: pd.DataFrame, requested: str | None = None) -> str | None:
    """The baseline arm: ``requested`` (``<model_version>:<variant>``, or a variant name),
    else the first arm whose variant is in :data:`BASELINE_VARIANTS`, else the arm that
    showed recommendations to the most residents (never the ``unattributed`` row)."""
    arms = experiment_arms(arms)
    if arms.empty:
        return None
    if requested:
        match = arms[(arms["arm"] == requested) | (arms["variant"] == requested)]
        if match.empty:
            raise ValueError(f"baseline {requested!r} is not an arm; arms: "
                             f"{', '.join(arms['arm'])}")
        return str(match.sort_values("residents_shown", ascending=False)["arm"].iloc[0])
    for name in BASELINE_VARIANTS:
        match = arms[arms["variant"] == name]
        if not match.empty:
            return str(match.sort_values("residents_shown", ascending=False)["arm"].iloc[0])
    return str(arms.sort_values(["residents_shown", "arm"], ascending=[False, True])
               ["arm"].iloc[0])


def uplift(arms: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Per arm other than the baseline and per stage: both rates, their difference with a
    95 % Newcombe interval, the relative uplift and whether the interval excludes zero.
    With a breakdown (``value`` column), within each value, against the same baseline."""
    columns = ["dimension", "value", "arm", "baseline", "stage", "residents", "converted",
               "rate", "baseline_residents", "baseline_converted", "baseline_rate",
               "difference", "ci_low", "ci_high", "relative_uplift", "significant"]
    arms = experiment_arms(arms)
    base = choose_baseline(arms, baseline)
    if base is None:
        return pd.DataFrame({c: [] for c in columns})
    rows = []
    if "value" not in arms.columns:
        arms = arms.assign(dimension="all", value="all")
    for (dimension, value), part in arms.groupby(["dimension", "value"], sort=True):
        found = part[part["arm"] == base]
        if found.empty:
            continue
        b = found.iloc[0]
        for _, arm in part[part["arm"] != base].iterrows():
            for stage in FUNNEL_STAGES[1:]:
                x1, n1 = int(arm[f"{stage}_residents"]), int(arm["residents_shown"])
                x2, n2 = int(b[f"{stage}_residents"]), int(b["residents_shown"])
                d, lo, hi = (float(v) for v in newcombe_difference(x1, n1, x2, n2))
                p1 = x1 / n1 if n1 else math.nan
                p2 = x2 / n2 if n2 else math.nan
                rows.append({
                    "dimension": dimension, "value": value,
                    "arm": arm["arm"], "baseline": base, "stage": stage,
                    "residents": n1, "converted": x1, "rate": p1,
                    "baseline_residents": n2, "baseline_converted": x2, "baseline_rate": p2,
                    "difference": d, "ci_low": lo, "ci_high": hi,
                    "relative_uplift": (p1 / p2 - 1) if p2 else math.nan,
                    "significant": bool(lo > 0 or hi < 0) if not math.isnan(lo) else False,
                })
    return pd.DataFrame(rows, columns=columns)
