"""Outreach figures for operators: what was planned, sent, opened and converted, who opted
out, and the lift — the use-based weekly share of residents assigned to nudges against
the holdout's, with a 95 % interval. Every definition is here, once (docs/outreach.md
repeats them); the operator API, its CSV and the dashboard show what this module returns.

The module reads two stores and nothing else, so that it moves to another engine (DuckDB
over the same Parquet) as one piece: the event log through
:func:`~bouquet.core.eventlog.read_events` (de-duplicated, erasures applied) and the plan
ledger (:class:`~bouquet.core.outreach.NudgeLedger`). :func:`load_outreach_data` reduces
them to a few integer-coded frames; every figure is a group-by of those.

Definitions (UTC days and ISO weeks, as every engagement figure):

* **planned**: nudges in the ledger whose send time falls in the week;
* **sent**, **opened**, **dismissed**: distinct nudges (recommendation ids of the
  ``outreach`` variant) with a ``notify``, ``open``, ``dismiss`` event in the week;
  **converted**: distinct nudges with a use-class event (use, pay, subscribe, rate) carrying
  their id, counted in the week of the first;
* **contactable**: residents whose latest contact-consent event before the week is a grant;
  **opted out**: those of them whose contact consent was withdrawn during the week;
* **lift**, as of the end of each week: the residents whose first contact-consent grant
  came before the four-week window (so the window is entirely after it) are split by the
  holdout hash (:func:`bouquet.core.outreach.in_holdout`) into *nudged* (assigned to
  outreach, whether a nudge reached them or not: intention to treat) and *holdout*; in each
  group, the share at a weekly-or-better **use** cadence (use-class events in at least
  3 of the 4 weeks, :func:`bouquet.core.cadence.weekly_or_better`); the difference with
  Newcombe's 95 % interval (:func:`bouquet.analytics.funnel.newcombe_difference`) and the
  relative lift. By neighbourhood the groups are the neighbourhood's residents; by domain,
  the cadence counts that domain's use only.

Slices: ``all``, ``neighbourhood`` (the ledger's segment; an event's resident's latest
declared neighbourhood, as in engagement) and ``domain`` (the offer's). Opt-outs belong to
no domain. Small cells are suppressed by :func:`bouquet.analytics.suppression.suppress`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bouquet.analytics.engagement import UNKNOWN, iso_week_label, monday_of_week
from bouquet.analytics.freshness import ChangeWatch, file_states
from bouquet.analytics.funnel import newcombe_difference
from bouquet.analytics.suppression import SuppressionSpec, suppress
from bouquet.analytics.tables import Table
from bouquet.core.cadence import USE_TYPES, WINDOW_WEEKS, weekly_or_better
from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import EventLog, read_events
from bouquet.core.outreach import NudgeLedger, in_holdout, outreach_references
from bouquet.core.recommendation import RecommendationIds, development_ids

log = logging.getLogger(__name__)

BREAKDOWNS: tuple[str, ...] = ("all", "neighbourhood", "domain")
STAGES: tuple[str, ...] = ("planned", "sent", "opened", "converted", "dismissed")
FUNNEL_COLUMNS = ["dimension", "value", "week", "week_start", *STAGES, "open_rate",
                  "conversion_rate", "contactable", "opted_out", "opt_out_rate"]
FUNNEL_SPEC = SuppressionSpec(
    counts=[*STAGES, "contactable", "opted_out"],
    derived={"open_rate": ["opened", "sent"], "conversion_rate": ["converted", "opened"],
             "opt_out_rate": ["opted_out", "contactable"]},
    across=["week"], across_cells=[*STAGES, "contactable", "opted_out"],
)
LIFT_COLUMNS = ["dimension", "value", "week", "week_start", "nudged_residents",
                "nudged_weekly", "nudged_share", "holdout_residents", "holdout_weekly",
                "holdout_share", "difference", "ci_low", "ci_high", "relative_lift"]
_LIFT_COUNTS = ["nudged_residents", "nudged_weekly", "holdout_residents", "holdout_weekly"]
LIFT_SPEC = SuppressionSpec(
    counts=_LIFT_COUNTS,
    gates=[("nudged_residents", ["nudged_weekly"]), ("holdout_residents", ["holdout_weekly"])],
    derived={"nudged_share": ["nudged_weekly", "nudged_residents"],
             "holdout_share": ["holdout_weekly", "holdout_residents"],
             **{c: _LIFT_COUNTS for c in ("difference", "ci_low", "ci_high", "relative_lift")}},
    across=["week"], across_cells=_LIFT_COUNTS,
)
_EVENT_COLUMNS = ["resident_id", "type", "service_id", "bundle_id", "ts", "value",
                  "recommendation_id", "context"]


class BadQuery(ValueError):
    """A selection that cannot be answered."""


@dataclass
class OutreachData:
    """The two stores reduced to what the figures group (one row per item)."""

    nudges: pd.DataFrame  # ledger: week, neighbourhood, domain
    outcomes: pd.DataFrame  # outreach events: reference, stage, week, neighbourhood, domain
    uses: pd.DataFrame  # use-class events: resident, week, domain (distinct)
    consent: pd.DataFrame  # contact consent events: resident, day, value (time order)
    residents: pd.DataFrame  # per resident code: neighbourhood, holdout
    weeks: list[int]  # every week since outreach began, ascending

    @property
    def empty(self) -> bool:
        return not self.weeks


def _week(days: np.ndarray) -> np.ndarray:
    return (np.asarray(days, dtype=np.int64) + 3) // 7


def load_outreach_data(event_log: Path, ledger_root: Path, catalog: Catalog, salt: str,
                       share: float, recommendation_ids: RecommendationIds | None = None
                       ) -> OutreachData:
    """Read the log and the ledger once (see the module docstring). Outcomes count only
    the nudge ids ``recommendation_ids`` verifies (the deployment's, from
    :meth:`RecommendationIds.for_settings`; default: the development key's)."""
    frame = read_events(event_log, columns=_EVENT_COLUMNS)
    codes, ids = pd.factorize(frame["resident_id"])
    ts = frame["ts"]
    day = ((ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.days).to_numpy(np.int64)
    kind = frame["type"].to_numpy(object)
    # each resident's latest declared neighbourhood
    neighbourhood = np.full(len(ids), UNKNOWN, dtype=object)
    profiles = frame["type"].eq("profile").to_numpy()
    if profiles.any():
        declared = frame.loc[profiles, "context"].str.extract(
            r'"neighbourhood"\s*:\s*"(?P<nb>[^"]*)"')["nb"]
        known = declared.notna().to_numpy()
        who = codes[profiles][known]
        neighbourhood[who] = declared.to_numpy(object)[known]  # later rows overwrite
    holdout = in_holdout(ids.tolist(), salt, share) if len(ids) else np.zeros(0, bool)
    residents = pd.DataFrame({"neighbourhood": neighbourhood, "holdout": holdout})
    domain = np.array([catalog.domain_of(s, b) or UNKNOWN for s, b in zip(
        frame["service_id"].to_numpy(object), frame["bundle_id"].to_numpy(object),
        strict=True)], dtype=object) if len(frame) else np.zeros(0, object)
    week = _week(day)
    # outreach outcomes: events carrying an outreach recommendation id
    reference = frame["recommendation_id"]
    ours = outreach_references(reference.to_numpy(object),
                               recommendation_ids or development_ids())
    stage = pd.Series(kind).map({"notify": "sent", "open": "opened", "dismiss": "dismissed",
                                 **dict.fromkeys(USE_TYPES, "converted")}).to_numpy(object)
    pick = ours & pd.notna(stage)
    outcomes = pd.DataFrame({"reference": reference.to_numpy(object)[pick],
                             "stage": stage[pick], "week": week[pick],
                             "neighbourhood": neighbourhood[codes[pick]],
                             "domain": domain[pick]})
    # a nudge counts once per stage, in the week of its first event of that stage
    outcomes = outcomes.drop_duplicates(["reference", "stage"], keep="first")
    use = np.isin(kind, list(USE_TYPES))
    uses = pd.DataFrame({"resident": codes[use], "week": week[use], "domain": domain[use]}
                        ).drop_duplicates()
    contact = (kind == "consent") & frame["context"].str.contains(
        '"purpose":"contact"', regex=False, na=False).to_numpy(bool)
    consent = pd.DataFrame({"resident": codes[contact], "day": day[contact],
                            "value": frame["value"].to_numpy(np.float64)[contact]})
    ledger = NudgeLedger(ledger_root).read(columns=["send_at", "segment", "domain"])
    send_day = (ledger["send_at"].cast("int64").to_numpy() // 86_400_000_000) \
        if ledger.num_rows else np.zeros(0, np.int64)
    nudges = pd.DataFrame({"week": _week(send_day),
                           "neighbourhood": ledger["segment"].to_numpy(zero_copy_only=False),
                           "domain": ledger["domain"].to_numpy(zero_copy_only=False)})
    # the weeks since outreach began: its first contact consent, nudge or outcome
    started = [w for w in (_week(consent["day"]).min() if len(consent) else None,
                           nudges["week"].min() if len(nudges) else None,
                           outcomes["week"].min() if len(outcomes) else None)
               if w is not None]
    weeks = []
    if started:
        first = int(min(started))
        last = int(max([*week.tolist(), *nudges["week"].tolist(), first]))
        weeks = list(range(first, last + 1))
    return OutreachData(nudges, outcomes, uses, consent, residents, weeks)


def _select(frame: pd.DataFrame, by: str, value: str | None) -> pd.DataFrame:
    if by not in BREAKDOWNS:
        raise BadQuery(f"by must be one of {', '.join(BREAKDOWNS)}, not {by!r}")
    out = frame[frame["dimension"] == by] if len(frame) else frame
    if value is not None and by != "all" and len(out):
        if value not in set(out["value"]):
            raise BadQuery(f"{by} {value!r} has no data")
        out = out[out["value"] == value]
    return out


def _weeks(data: OutreachData, last: int | None) -> list[int]:
    if last is not None and last < 1:
        raise BadQuery("weeks must be at least 1")
    return data.weeks[-last:] if last else list(data.weeks)


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    rows["week_start"] = [monday_of_week(w).isoformat() for w in rows["week"]]
    rows["week"] = [iso_week_label(w) for w in rows["week"]]
    return rows


# --- the funnel ----------------------------------------------------------------------------
def funnel_table(data: OutreachData, weeks: list[int]) -> pd.DataFrame:
    """Planned → sent → opened → converted, dismissed, contactable and opted out, per week
    and slice (unsuppressed)."""
    parts = []
    for by in BREAKDOWNS:
        group = ["week"] if by == "all" else ["week", by]
        counts = [data.nudges.groupby(group).size().rename("planned")]
        for stage in STAGES[1:]:
            counts.append(data.outcomes[data.outcomes["stage"] == stage].groupby(group)
                          .size().rename(stage))
        table = pd.concat(counts, axis=1).fillna(0)
        if by != "domain":
            table = table.join(_consent_by_week(data, weeks, by), how="outer")
        table = table.reset_index()
        table = table[table["week"].isin(weeks)]
        table["dimension"] = by
        table["value"] = "all" if by == "all" else table[by].astype(str)
        parts.append(table)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    for c in (*STAGES, "contactable", "opted_out"):
        out[c] = out[c].astype(np.float64) if c in out else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        out["open_rate"] = np.where(out["sent"] > 0, out["opened"] / out["sent"], np.nan)
        out["conversion_rate"] = np.where(out["opened"] > 0, out["converted"] / out["opened"],
                                          np.nan)
        out["opt_out_rate"] = np.where(out["contactable"] > 0,
                                       out["opted_out"] / out["contactable"], np.nan)
    for c in STAGES:
        out[c] = out[c].fillna(0).astype(np.int64)
    out = out.sort_values(["dimension", "value", "week"], kind="stable")
    return _labelled(out.reset_index(drop=True))[FUNNEL_COLUMNS]


def _consent_by_week(data: OutreachData, weeks: list[int], by: str) -> pd.DataFrame:
    """Contactable at the start of each week, and withdrawals during it."""
    events = data.consent
    rows = []
    nb = data.residents["neighbourhood"].to_numpy(object)
    for w in weeks:
        start = 7 * w - 3  # the Monday (epoch day) of week w
        before = events[events["day"] < start]
        latest = before.groupby("resident")["value"].last()
        contactable = latest[latest == 1].index.to_numpy()
        during = events[(events["day"] >= start) & (events["day"] < start + 7)
                        & (events["value"] == 0)]
        opted = np.intersect1d(during["resident"].unique(), contactable)
        if by == "all":
            rows.append({"week": w, "contactable": len(contactable), "opted_out": len(opted)})
        else:
            c = pd.Series(nb[contactable]).value_counts()
            o = pd.Series(nb[opted]).value_counts()
            for value in sorted(set(c.index) | set(o.index)):
                rows.append({"week": w, by: value, "contactable": int(c.get(value, 0)),
                             "opted_out": int(o.get(value, 0))})
    index = ["week"] if by == "all" else ["week", by]
    if not rows:
        return pd.DataFrame(columns=[*index, "contactable", "opted_out"]).set_index(index)
    return pd.DataFrame(rows).set_index(index)


# --- the lift ------------------------------------------------------------------------------
def lift_table(data: OutreachData, weeks: list[int]) -> pd.DataFrame:
    """Use-based weekly share of nudged vs holdout residents, per week and slice, with the
    difference's 95 % interval (unsuppressed)."""
    first_grant = data.consent[data.consent["value"] == 1].groupby("resident")["day"].min()
    holdout = data.residents["holdout"].to_numpy(bool)
    nb = data.residents["neighbourhood"].to_numpy(object)
    rows = []
    for w in weeks:
        window_start = 7 * (w - WINDOW_WEEKS + 1) - 3
        population = first_grant[first_grant < window_start].index.to_numpy()
        if not len(population):
            continue
        recent = data.uses[(data.uses["week"] > w - WINDOW_WEEKS) & (data.uses["week"] <= w)]
        slices: list[tuple[str, str, np.ndarray, pd.DataFrame]] = [
            ("all", "all", population, recent)]
        for value in sorted(set(nb[population])):
            slices.append(("neighbourhood", value, population[nb[population] == value],
                           recent))
        for value in sorted(set(recent["domain"])):
            slices.append(("domain", value, population, recent[recent["domain"] == value]))
        for by, value, people, uses in slices:
            row = pd.Index(people).get_indexer(uses["resident"])
            seen = row >= 0
            grid = np.zeros((len(people), WINDOW_WEEKS), dtype=bool)
            grid[row[seen], uses["week"].to_numpy()[seen] - (w - WINDOW_WEEKS + 1)] = True
            in_group = weekly_or_better(grid)
            treated = ~holdout[people]
            rows.append({"dimension": by, "value": value, "week": w,
                         "nudged_residents": int(treated.sum()),
                         "nudged_weekly": int((in_group & treated).sum()),
                         "holdout_residents": int((~treated).sum()),
                         "holdout_weekly": int((in_group & ~treated).sum())})
    if not rows:
        return pd.DataFrame(columns=LIFT_COLUMNS)
    out = pd.DataFrame(rows)
    d, low, high = newcombe_difference(out["nudged_weekly"], out["nudged_residents"],
                                       out["holdout_weekly"], out["holdout_residents"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["nudged_share"] = out["nudged_weekly"] / out["nudged_residents"].where(
            out["nudged_residents"] > 0)
        out["holdout_share"] = out["holdout_weekly"] / out["holdout_residents"].where(
            out["holdout_residents"] > 0)
        out["relative_lift"] = np.where(out["holdout_share"] > 0,
                                        d / out["holdout_share"], np.nan)
    out["difference"], out["ci_low"], out["ci_high"] = d, low, high
    out = out.sort_values(["dimension", "value", "week"], kind="stable")
    return _labelled(out.reset_index(drop=True))[LIFT_COLUMNS]


# --- figures -------------------------------------------------------------------------------
def funnel_figure(data: OutreachData, k: int, *, by: str = "all", value: str | None = None,
                  weeks: int | None = None) -> Table:
    frame = funnel_table(data, _weeks(data, weeks))
    shown = suppress(frame, FUNNEL_SPEC, k) if len(frame) else frame
    return Table.from_frame(
        "outreach", "Outreach per ISO week: nudges planned, sent, opened, converted and "
        "dismissed; contactable residents and opt-outs", _select(shown, by, value), k,
        columns=FUNNEL_COLUMNS, by=by, value=value)


def lift_figure(data: OutreachData, k: int, *, by: str = "all", value: str | None = None,
                weeks: int | None = None) -> Table:
    frame = lift_table(data, _weeks(data, weeks))
    shown = suppress(frame, LIFT_SPEC, k) if len(frame) else frame
    return Table.from_frame(
        "outreach_lift", "Use-based weekly-or-better share of residents assigned to nudges "
        "vs the holdout, as of the end of each week; difference with a 95% Newcombe "
        "interval", _select(shown, by, value), k, columns=LIFT_COLUMNS, by=by, value=value,
        method="intention to treat; Newcombe hybrid score (method 10), 95%")


def _partition(name: str, title: str, column: str, measure: str, counts: dict[str, int],
               total: int | None, k: int, hide_all: bool = False) -> dict[str, Any]:
    """A small table whose cells add up to a published total: the small-cell rules with
    the complementary rule (one hidden cell takes the next smallest with it), as one row
    (``suppress`` rule 3); ``hide_all`` when the total itself is hidden."""
    names = list(counts)
    cells = [f"c{i}" for i in range(len(names))]
    row = pd.DataFrame([{"total": total if total is not None else 0,
                         **dict(zip(cells, counts.values(), strict=True))}])
    shown = suppress(row, SuppressionSpec(counts=cells, partitions=[("total", cells)]), k)
    hidden = set(shown["suppressed"].iloc[0])
    frame = pd.DataFrame({column: names, measure: [
        None if hide_all or c in hidden else int(v)
        for c, v in zip(cells, counts.values(), strict=True)]})
    frame["suppressed"] = [[measure] if hide_all or c in hidden else [] for c in cells]
    return Table.from_frame(name, title, frame, k, columns=[column, measure]).to_json()


def plan_preview(nudges: pd.DataFrame, excluded: dict[str, int], residents: int, k: int,
                 **meta: Any) -> dict[str, Any]:
    """A plan's aggregates (never a resident): why contactable residents get no nudge, and
    the nudges by channel, neighbourhood, domain and local send hour; small cells hidden,
    with their complements (the parts of each table add up to its total)."""
    planned = len(nudges)
    reasons = {"planned": planned, **excluded}
    why = _partition("excluded", "contactable residents: planned, or why not", "reason",
                     "residents", reasons, residents, k)
    planned_hidden = why["rows"][0]["residents"] is None
    out: dict[str, Any] = {"residents": residents if residents >= k or not residents
                           else None, "planned": None if planned_hidden else planned, **meta,
                           "excluded": why}
    for name, column in (("by_channel", "channel"), ("by_neighbourhood", "segment"),
                         ("by_domain", "domain"), ("by_hour", "hour")):
        counts = nudges[column].value_counts().sort_index() if planned else pd.Series(
            dtype=np.int64)
        out[name] = _partition(name, f"nudges {name.replace('_', ' ')}", column, "nudges",
                               {str(key): int(v) for key, v in counts.items()}, planned, k,
                               hide_all=planned_hidden)
    return out


class OutreachFigures:
    """The outreach figures of one deployment, cached per state of the log and the ledger
    (re-checked at most every ``ttl_s``), as :class:`~bouquet.analytics.service.EngagementService`
    caches engagement."""

    def __init__(self, event_log: Path, ledger_root: Path, catalog: Catalog, *, salt: str,
                 share: float, k: int, ttl_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 recommendation_ids: RecommendationIds | None = None) -> None:
        self.event_log, self.ledger_root = Path(event_log), Path(ledger_root)
        self.catalog, self.salt, self.share, self.k = catalog, salt, share, k
        self.ttl_s = ttl_s
        self.recommendation_ids = recommendation_ids
        self._lock = threading.Lock()
        self._data: OutreachData | None = None
        self._watch = ChangeWatch(self.fingerprint, ttl_s, clock)

    def fingerprint(self) -> tuple:
        return tuple(file_states([*EventLog(self.event_log).files(),
                                  *NudgeLedger(self.ledger_root).files()]))

    def data(self) -> OutreachData:
        with self._lock:
            self._watch.refresh(self._data is not None, self._load)
            assert self._data is not None
            return self._data

    def _load(self) -> None:
        self._data = load_outreach_data(self.event_log, self.ledger_root, self.catalog,
                                        self.salt, self.share, self.recommendation_ids)

    def funnel(self, by: str = "all", value: str | None = None,
               weeks: int | None = None) -> Table:
        return funnel_figure(self.data(), self.k, by=by, value=value, weeks=weeks)

    def lift(self, by: str = "all", value: str | None = None,
             weeks: int | None = None) -> Table:
        return lift_figure(self.data(), self.k, by=by, value=value, weeks=weeks)

