"""Engagement figures on demand, cached per event-log state: what the API and CLI call.

Reducing the event log is the expensive part (DuckDB over the Parquet files,
:class:`~bouquet.analytics.logdb.LogDatabase`); the figures are cheap slices of it.
:class:`EngagementService` therefore keeps the reduced log and every computed table in
process, keyed on a fingerprint of the log's files (name, size, modification time) and of
the erasure register. The fingerprint is re-checked at most every ``ttl_s`` seconds
(``Settings.engagement_cache_ttl_s``): a new file written by the consumer shows up within
that delay, and an unchanged log is never re-read. Concurrent requests for a cold cache
wait for one computation instead of starting several.

Every engagement figure is computed over the contacts of one cadence class
(:mod:`bouquet.core.cadence`): ``use`` — the headline —, ``response`` or ``exposure``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from cachetools import LRUCache

from bouquet.analytics import figures, funnel, live
from bouquet.analytics.backfill import observed_start
from bouquet.analytics.engagement import CADENCES, DIMENSIONS, CadenceRules, Engagement
from bouquet.analytics.freshness import ChangeWatch, file_states
from bouquet.analytics.logdb import CLASSES, ErasureLookup, LogDatabase
from bouquet.analytics.suppression import SuppressionSpec, suppress
from bouquet.analytics.tables import Table, plain
from bouquet.core.catalog import Catalog, load_catalog
from bouquet.core.eventlog import EventLog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import RecommendationIds
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)

#: Computed tables kept per log state (least recently used first out): a request's
#: ``by``, ``value``, ``weeks``/``months``/``days`` make the key, so an unbounded cache would
#: grow with whatever an operator key asks for.
MEMO_ENTRIES = 256

#: Live actives: the neighbourhood sets of a day or week add up to the city's set (a
#: resident counts in the neighbourhood their profile had): rule 4 across them, per bucket.
LIVE_ACTIVE_SPEC = SuppressionSpec(counts=["active"], across=["period", "bucket"],
                                   across_cells=["active"])
#: Live contacts: the types of a day or week add up to its ``all`` row: rule 4 across the
#: types (a ``dimension`` column says which rows are types), per bucket.
LIVE_CONTACTS_SPEC = SuppressionSpec(counts=["contacts"], across=["period", "bucket"],
                                     partition_dimensions=("type",), across_cells=["contacts"])
LIVE_FUNNEL_SPEC = SuppressionSpec(counts=[f"{s}_events" for s in
                                           ("shown", "opened", "subscribed", "used")])
ROLLING_SPEC = SuppressionSpec(counts=["active"])


def live_tables(snap: live.LiveSnapshot, k: int) -> dict[str, Table]:
    """The live snapshot's four tables, suppressed (what the API, the CSV export and the
    dashboard show)."""
    meta = {"day": snap.day, "week": snap.week, "taken_at": snap.taken_at}
    contacts = snap.contacts.assign(dimension=np.where(snap.contacts["type"] == "all",
                                                       "all", "type"))
    return {
        "active": Table.from_frame(
            "live_active", "Distinct active residents today, yesterday and this week "
            "(Redis)", suppress(snap.active, LIVE_ACTIVE_SPEC, k), k, **meta),
        "contacts": Table.from_frame(
            "live_contacts", "Contact events per type today, yesterday and this week "
            "(Redis)", suppress(contacts, LIVE_CONTACTS_SPEC, k), k,
            columns=list(snap.contacts.columns), **meta),
        "funnel": Table.from_frame(
            "live_funnel", "Attributed funnel events per arm since ingestion began "
            "(Redis)", suppress(snap.funnel, LIVE_FUNNEL_SPEC, k), k, **meta),
        "rolling": Table.from_frame(
            "live_rolling", "Residents whose latest contact is in the trailing window "
            "(Redis)", suppress(snap.rolling, ROLLING_SPEC, k), k, **meta),
    }


def rules_from_settings(settings: Settings) -> CadenceRules:
    return CadenceRules.for_window(settings.engagement_window_days)


class EngagementService:
    """Engagement, funnel and live figures for one deployment (one per process)."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None, *,
                 rules: CadenceRules | None = None, ttl_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 erasures: ErasureLookup | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or load_catalog(settings.catalog_path)
        self.rules = rules or rules_from_settings(settings)
        self.ttl_s = settings.engagement_cache_ttl_s if ttl_s is None else ttl_s
        self.k = settings.small_cell_k
        self.keys = Keys(settings.redis_key_prefix)
        self.recommendation_ids = RecommendationIds.for_settings(settings)
        self._lock = threading.Lock()
        self._watch = ChangeWatch(self.fingerprint, self.ttl_s, clock)
        self.erasures = erasures
        self._data: LogDatabase | None = None
        self._memo: LRUCache[tuple, Any] = LRUCache(maxsize=MEMO_ENTRIES)
        self.computations = 0  # how many times the log was read (tests check the cache)

    # --- cache ---------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.settings.event_log_path

    def fingerprint(self) -> tuple:
        """(relative name, size, mtime) of every complete file of the log, and how many
        residents the erasure register names."""
        out: list[tuple] = []
        if self.erasures is not None:
            self.erasures.reload()
            out.append(("erasure register", len(self.erasures), 0))
        out.extend(file_states(EventLog(self.root).files(), self.root))
        return tuple(out)

    def _current(self) -> LogDatabase:
        """The reduced log, re-read only when the files changed (checked every ttl_s)."""
        with self._lock:
            self._watch.refresh(self._data is not None, self._reopen)
            assert self._data is not None
            return self._data

    def _reopen(self) -> None:
        if self._data is not None:
            self._data.close()
        self._data = LogDatabase.for_settings(self.settings, self.catalog,
                                              erasures=self.erasures,
                                              recommendation_ids=self.recommendation_ids)
        self._memo.clear()
        self.computations += 1

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        self._current()
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        value = build()
        with self._lock:
            self._memo[key] = value
        return value

    def data(self) -> LogDatabase:
        return self._current()

    def engagement(self, events: str = "use") -> Engagement:
        """Every engagement table over the contacts of one cadence class."""
        if events not in CLASSES:
            raise figures.BadQuery(f"events must be one of {', '.join(CLASSES)}, "
                                   f"not {events!r}")
        return self._cached(("engagement", events, self.rules),
                            lambda: self._current().engagement((events,), self.rules))

    def invalidate(self) -> None:
        """Forget everything (the next call re-reads the log)."""
        with self._lock:
            self._data, self._fingerprint = None, None
            self._memo.clear()
            self._checked_at = -float("inf")

    # --- figures -------------------------------------------------------------------------
    def figure(self, name: str, *, by: str = "all", value: str | None = None,
               last: int | None = None, events: str = "use") -> Table:
        """An engagement figure (see :data:`bouquet.analytics.figures.FIGURES`) over the
        contacts of the cadence class ``events``."""
        eng = self.engagement(events)
        shown = self._cached(("shown", name, by, self.k, events),
                             lambda: figures.suppressed_breakdown(eng, name, self.k, by))
        return self._cached(("figure", name, by, value, last, self.k, events),
                            lambda: figures.engagement_figure(eng, name, self.k, by=by,
                                                              value=value, last=last,
                                                              shown=shown, events=events))

    def _since_day(self, weeks: int | None) -> int | None:
        data = self._current()
        if weeks is None or data.last_day is None:
            return None
        if weeks < 1:
            raise figures.BadQuery("weeks must be at least 1")
        last_monday = data.last_day - (data.last_day + 3) % 7
        return last_monday - 7 * (weeks - 1)

    def funnel_arms(self, weeks: int | None = None, by: str = "all",
                    value: str | None = None) -> pd.DataFrame:
        """The funnel per arm of every value of ``by`` (unsuppressed), or of one ``value``."""
        if by not in figures.BREAKDOWNS:
            raise figures.BadQuery(f"by must be one of {', '.join(figures.BREAKDOWNS)}")
        arms = self._cached(("arms", weeks, by), lambda: self._current().funnel(
            since_day=self._since_day(weeks), by=by))
        return figures.only_value(arms, by, value)

    def _suppressed_arms(self, weeks: int | None, by: str) -> pd.DataFrame:
        """The whole breakdown's funnel, suppressed once (values are selected after)."""
        return self._cached(("arms_shown", weeks, by, self.k), lambda: figures.suppressed_arms(
            self.funnel_arms(weeks, by), self.k))

    def funnel(self, weeks: int | None = None, by: str = "all",
               value: str | None = None) -> Table:
        return figures.funnel_figure(self._suppressed_arms(weeks, by), self.k, weeks=weeks,
                                     by=by, value=value)

    def funnel_weekly(self, weeks: int | None = None) -> Table:
        frame = self._cached(("arms_weekly", weeks), lambda: self._current().funnel(
            since_day=self._since_day(weeks), weekly=True))
        return figures.funnel_weekly_figure(frame, self.k, weeks=weeks)

    def uplift(self, baseline: str | None = None, weeks: int | None = None,
               by: str = "all", value: str | None = None) -> Table:
        """Uplift over the whole breakdown, suppressed together with the funnel's numbers,
        then the ``value`` asked for."""
        arms = self.funnel_arms(weeks, by)
        figures.only_value(arms, by, value)  # an unknown value is a BadQuery here too

        def whole() -> tuple[pd.DataFrame, str | None]:
            try:
                table = funnel.uplift(arms, baseline)
            except ValueError as exc:
                raise figures.BadQuery(str(exc)) from None
            chosen = table["baseline"].iloc[0] if len(table) else \
                funnel.choose_baseline(arms)
            return figures.suppressed_uplift(table, self.k, self._suppressed_arms(weeks, by)), \
                chosen

        shown, chosen = self._cached(("uplift_shown", baseline, weeks, by, self.k), whole)
        return figures.uplift_figure(shown, self.k, weeks=weeks, baseline=chosen, by=by,
                                     value=value,
                                     method="Newcombe hybrid score (method 10), 95%")

    # --- live ----------------------------------------------------------------------------
    def live(self, client: redis.Redis, now: datetime | None = None) -> dict[str, Table]:
        """Today's and this week's counters from Redis, suppressed like everything else."""
        return live_tables(live.snapshot(client, self.keys, now), self.k)

    # --- summary -------------------------------------------------------------------------
    def summary(self, client: redis.Redis | None = None) -> dict[str, Any]:
        """Headline figures of the latest complete week — use cadence, with the response and
        exposure cadences beside it —, the dimension values (for filters), the definitions'
        parameters, where observed use begins after a backfill (``backfill``, or None)
        and, with a Redis client, the live counters."""
        eng = self.engagement("use")
        data = self._current()
        out: dict[str, Any] = {
            "source": eng.summary,
            "small_cell_k": self.k,
            "rules": {"window_days": self.rules.window_days,
                      "daily_min_days": self.rules.daily_min_days,
                      "weekly_min_weeks": self.rules.weekly_min_weeks,
                      "yearly_weeks": self.rules.yearly_weeks},
            "dimensions": {d: list(data.dimension_values[d]) for d in DIMENSIONS},
            "cadences": list(CADENCES),
            "classes": list(CLASSES),
            "headline": None,
            "beside": {},
            "backfill": observed_start(eng.daily),
        }
        cadence = self.figure("cadence", last=6).rows
        if cadence:
            # the latest complete week (the week in progress is what the live counters show)
            complete = [i for i, r in enumerate(cadence) if r["week_complete"]]
            i = complete[-1] if complete else len(cadence) - 1
            before = cadence[i - 4] if i >= 4 else None
            out["headline"] = {
                **self._week_figures("use", i),
                **{c: cadence[i][c] for c in CADENCES},
                **{f"share_{c}": cadence[i][f"share_{c}"] for c in CADENCES},
                "share_weekly_plus_4_weeks_before": before["share_weekly_plus"]
                if before else None,
                "p50_contacts_per_active": self.figure("contacts", last=6).rows[i]["p50"],
                "share_single_contact": self.figure("lifetime").rows[0]["share_single"],
            }
            out["headline"]["suppressed"] = sorted(
                set(out["headline"]["suppressed"])
                | set(self.figure("contacts", last=6).rows[i]["suppressed"]))
            out["beside"] = {events: self._week_figures(events, i) for events in CLASSES
                             if events != "use"}
        if client is not None:
            out["live"] = {name: t.to_json() for name, t in self.live(client).items()}
        return plain_dict(out)

    def _week_figures(self, events: str, i: int) -> dict[str, Any]:
        """One cadence class's headline figures in row ``i`` of the latest six weeks."""
        cadence = self.figure("cadence", last=6, events=events).rows[i]
        stick = self.figure("stickiness", last=6, events=events).rows[i]
        contacts = self.figure("contacts", last=6, events=events).rows[i]
        return {"events": events, "week": cadence["week"],
                "week_complete": cadence["week_complete"], "known": cadence["known"],
                "share_weekly_plus": cadence["share_weekly_plus"],
                "dau_mau": stick["dau_mau"], "wau_mau": stick["wau_mau"],
                "mean_contacts_per_known": contacts["mean_per_known"],
                "suppressed": sorted(set(cadence["suppressed"]) | set(stick["suppressed"])
                                     | set(contacts["suppressed"]))}


def plain_dict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_dict(v) for v in value]
    return plain(value)
