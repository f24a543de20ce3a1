"""The operator figures in DuckDB SQL over the event log's Parquet files, out of core.

Every figure is one SQL file in ``analytics/sql/`` (shipped as package data, so it is read,
linted and diffed as SQL) and one entry of :data:`FIGURES`. The files run in this order:

1. ``event_log.sql`` — the view ``events``: the log as every reader must see it, each event
   once (the first ingested copy of an ``event_id``) and erased residents gone (their
   ``erase`` events in the log, and the erasure register's entries when the caller holds
   it, :class:`ErasureLookup`). docs/engagement.md gives the same rule for other engines;
2. ``reduce.sql`` — once per state of the log: residents (first day, neighbourhood),
   contacts per resident, day, cadence class and slice values, funnel events per arm;
3. ``calendar.sql`` — days, ISO weeks and months of the log, and SQL macros;
4. per selection of cadence classes (``use``, ``response``, ``exposure``, or several):
   ``slices.sql`` (contacts per slice-resident-day and -week, cadence classes per as-of
   week), then each figure's file.

DuckDB works within ``memory_limit`` and spills to ``temp_directory`` beyond it, with
``threads`` threads (``BOUQUET_ANALYTICS_MEMORY_LIMIT``, ``BOUQUET_ANALYTICS_THREADS``).
Results are small (groups × periods) and leave as pandas frames, in the layout
:mod:`bouquet.analytics.figures` suppresses and renders.

Small tables made from the project's single definitions are handed to SQL rather than
copied into it: the event classes (:mod:`bouquet.core.cadence`), the catalog's domain and
factor of every (service, bundle) pair in the log, the funnel stages, the histogram buckets
and percentiles, and the recommendation ids whose signature does not verify (checked in
Python with :class:`~bouquet.core.recommendation.RecommendationIds`, once per distinct id).
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np
import pandas as pd

from bouquet.analytics.engagement import (
    CADENCES,
    DIMENSIONS,
    FUNNEL_STAGE_OF_TYPE,
    FUNNEL_STAGES,
    HISTOGRAM,
    HISTOGRAM_CAP,
    LIFETIME,
    QUANTILES,
    UNKNOWN,
    CadenceRules,
    Engagement,
    day_of_epoch,
    empty_engagement,
    month_ratios,
)
from bouquet.core.cadence import CADENCE_CLASSES
from bouquet.core.catalog import AggregationFactor, Catalog, Domain
from bouquet.core.eventlog import SCHEMA, EventLog
from bouquet.core.recommendation import RecommendationIds, development_ids
from bouquet.core.statefiles import private_dir

log = logging.getLogger(__name__)

#: Percentiles of lifetime contacts per resident.
LIFETIME_QUANTILES: tuple[tuple[float, str], ...] = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
#: Every cadence class, in display order: use is the headline.
CLASSES: tuple[str, ...] = tuple(CADENCE_CLASSES)

_DUCK_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "int16": "SMALLINT",
               "bool": "BOOLEAN", "timestamp[us, tz=UTC]": "TIMESTAMPTZ"}


class ErasureLookup(Protocol):
    """What the view needs of the erasure register (``privacy.erasure.ErasureRegister``):
    which of these residents were erased, and up to when (epoch seconds)."""

    def __len__(self) -> int: ...

    def erased_among(self, resident_ids: Iterable[str]) -> dict[str, float]: ...


def sql_text(name: str) -> str:
    """The text of ``analytics/sql/<name>.sql``."""
    return resources.files("bouquet.analytics").joinpath("sql", f"{name}.sql").read_text()


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class FigureQuery:
    """One engagement figure: its SQL file and the step that gives its frame its final
    columns (derived ratios, the layout of :class:`Engagement`)."""

    sql: str
    finish: Callable[[pd.DataFrame], pd.DataFrame]


def _ratio(num: pd.Series, den: pd.Series) -> np.ndarray:
    n = num.to_numpy(dtype=float)
    d = den.to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, n / d, np.nan)


def _ensure(frame: pd.DataFrame, columns: Iterable[str], fill: float) -> pd.DataFrame:
    for c in columns:
        if c not in frame.columns:
            frame[c] = fill
        frame[c] = frame[c].astype(float).fillna(fill) if not math.isnan(fill) \
            else frame[c].astype(float)
    return frame


def _quantile_columns(names: Iterable[str]) -> list[str]:
    return [c for name in names for c in (name, f"{name}_n_le", f"{name}_n_ge")]


def _with_quantiles(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    frame = _ensure(frame, names, math.nan)
    frame = _ensure(frame, [f"{n}_{s}" for n in names for s in ("n_le", "n_ge")], 0.0)
    for n in names:
        for s in ("n_le", "n_ge"):
            frame[f"{n}_{s}"] = frame[f"{n}_{s}"].astype(np.int64)
    return frame


def _with_buckets(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    frame = _ensure(frame, names, 0.0)
    for n in names:
        frame[n] = frame[n].astype(np.int64)
    return frame


def _counts(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Counts as int64: DuckDB's sums of integers are HUGEINT, which reach pandas as
    floats, and a count shown as 12.0 is not the 12 the rest of Bouquet shows."""
    for n in names:
        frame[n] = frame[n].astype(np.int64)
    return frame


def _finish_cadence(frame: pd.DataFrame) -> pd.DataFrame:
    return _counts(frame, ["known", *CADENCES])


def _finish_stickiness(frame: pd.DataFrame) -> pd.DataFrame:
    frame["dau_mau"] = _ratio(frame["dau_mean"], frame["mau"])
    frame["wau_mau"] = _ratio(frame["wau"], frame["mau"])
    return frame[["g", "week", "week_start", "days_observed", "dau_mean", "wau", "mau",
                  "dau_mau", "wau_mau", "window_complete", "week_complete"]]


def _finish_contacts(frame: pd.DataFrame) -> pd.DataFrame:
    pcts = [name for _, name in QUANTILES]
    buckets = [name for _, _, name in HISTOGRAM]
    frame = _with_quantiles(frame, pcts)
    frame = _with_buckets(frame, buckets)
    frame = _counts(frame, ["known", "active", "contacts"])
    frame["mean_per_known"] = _ratio(frame["contacts"], frame["known"])
    frame["mean_per_active"] = _ratio(frame["contacts"], frame["active"])
    return frame[["g", "week", "week_start", "known", "active", "contacts", "mean_per_known",
                  "mean_per_active", *_quantile_columns(pcts), *buckets, "week_complete"]]


def _finish_monthly(frame: pd.DataFrame) -> pd.DataFrame:
    frame["wau_mean"] = frame["wau_mean"].astype(float)
    frame["month_complete"] = frame["month_complete"].astype(bool)
    frame = _ratios_of_complete_months(frame)
    return frame[["g", "month", "days_observed", "weeks", "mau", "dau_mean", "wau_mean",
                  "dau_mau", "wau_mau", "month_complete"]]


def _ratios_of_complete_months(frame: pd.DataFrame) -> pd.DataFrame:
    """DAU/MAU and WAU/MAU of complete months only (see
    :func:`bouquet.analytics.engagement.month_ratios`)."""
    frame["dau_mau"], frame["wau_mau"] = month_ratios(
        frame["dau_mean"].to_numpy(float), frame["wau_mean"].to_numpy(float),
        frame["mau"].to_numpy(float), frame["month_complete"].to_numpy(bool))
    return frame


def _finish_cohorts(frame: pd.DataFrame) -> pd.DataFrame:
    frame["retention"] = _ratio(frame["retained"], frame["cohort_size"])
    return frame


def _finish_lifetime(frame: pd.DataFrame) -> pd.DataFrame:
    pcts = [name for _, name in LIFETIME_QUANTILES]
    buckets = [name for _, _, name in LIFETIME]
    frame = _with_quantiles(frame, pcts)
    frame = _with_buckets(frame, buckets)
    frame["top10_share"] = frame["top10_share"].astype(float)
    frame = _counts(frame, ["residents", "contacts"])
    frame["mean"] = _ratio(frame["contacts"], frame["residents"])
    frame["share_single"] = _ratio(frame["l1"], frame["residents"])
    return frame[["g", "residents", "contacts", "mean", *_quantile_columns(pcts),
                  "top10_residents", "top10_share", *buckets, "share_single"]]


def _finish_daily(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


#: Every engagement figure: name → its SQL file and finishing step. Adding a figure is a
#: SQL file over the tables of ``slices.sql`` and an entry here (and in
#: :data:`bouquet.analytics.figures.FIGURES`, which says how it is suppressed).
FIGURES: dict[str, FigureQuery] = {
    "cadence": FigureQuery("cadence", _finish_cadence),
    "stickiness": FigureQuery("stickiness", _finish_stickiness),
    "contacts": FigureQuery("contacts", _finish_contacts),
    "monthly": FigureQuery("monthly", _finish_monthly),
    "cohorts": FigureQuery("cohorts", _finish_cohorts),
    "lifetime": FigureQuery("lifetime", _finish_lifetime),
    "daily": FigureQuery("daily", _finish_daily),
}


class LogDatabase:
    """One state of the event log, reduced in DuckDB; figures computed on demand.

    Built from the log's current files (a new file means a new :class:`LogDatabase`); every
    query holds the instance's lock, since a DuckDB connection serves one query at a time.
    """

    def __init__(self, root: Path, catalog: Catalog, *,
                 recommendation_ids: RecommendationIds | None = None,
                 erasures: ErasureLookup | None = None, memory_limit: str = "1GB",
                 threads: int = 2, temp_dir: Path | None = None) -> None:
        started = time.perf_counter()
        self.root = Path(root)
        self.catalog = catalog
        self.ids = recommendation_ids or development_ids()
        self.files = EventLog(self.root).files()
        self._lock = threading.Lock()
        self._temp = Path(temp_dir) if temp_dir else Path(tempfile.gettempdir())
        private_dir(self._temp)
        self._con = duckdb.connect(config={
            "memory_limit": memory_limit, "threads": int(threads),
            "temp_directory": str(self._temp / f"bouquet-duckdb-{id(self):x}"),
            "preserve_insertion_order": False,
        })
        self.events = 0
        self.first_day: int | None = None
        self.last_day: int | None = None
        self.dimension_values: dict[str, tuple[str, ...]] = {d: () for d in DIMENSIONS}
        self.groups = pd.DataFrame({"g": [], "dimension": [], "value": []})
        if self.files:
            self._load(erasures)
        self.load_seconds = time.perf_counter() - started
        log.info("event log reduced in DuckDB: %d events, %d files in %.2f s", self.events,
                 len(self.files), self.load_seconds)

    @classmethod
    def for_settings(cls, settings: Any, catalog: Catalog,
                     erasures: ErasureLookup | None = None,
                     recommendation_ids: RecommendationIds | None = None) -> LogDatabase:
        return cls(settings.event_log_path, catalog, erasures=erasures,
                   recommendation_ids=recommendation_ids
                   or RecommendationIds.for_settings(settings),
                   memory_limit=settings.analytics_memory_limit,
                   threads=settings.analytics_threads,
                   temp_dir=settings.analytics_spill_path)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # --- SQL plumbing -----------------------------------------------------------------------
    def _exec(self, sql: str) -> list[tuple]:
        """Run statements and read their whole answer (a connection serves one at a time)."""
        return self._con.execute(sql).fetchall()

    def _run(self, name: str) -> None:
        self._exec(sql_text(name))

    def _query(self, sql: str) -> pd.DataFrame:
        return self._con.execute(sql).df()

    def _set(self, **variables: int | str | bool) -> None:
        for name, value in variables.items():
            literal = (str(value).upper() if isinstance(value, bool) else
                       str(int(value)) if isinstance(value, (int, np.integer)) else
                       _quote(str(value)))
            self._exec(f"SET VARIABLE {name} = {literal}")

    def _table(self, name: str, frame: pd.DataFrame) -> None:
        self._con.register(f"_{name}_frame", frame)
        self._exec(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _{name}_frame")
        self._con.unregister(f"_{name}_frame")

    def _enum(self, name: str, values: Sequence[str]) -> None:
        self._exec(f"DROP TYPE IF EXISTS {name}")
        self._exec(f"CREATE TYPE {name} AS ENUM ({', '.join(map(_quote, values))})")

    # --- loading ----------------------------------------------------------------------------
    def _raw_view(self) -> None:
        """``raw_events``: the files read by column name; a column of the current layout
        that no file has yet (a log written before it existed) reads as NULL."""
        files = "[" + ", ".join(_quote(str(f)) for f in self.files) + "]"
        source = (f"read_parquet({files}, union_by_name = true, filename = true, "
                  "file_row_number = true, hive_partitioning = false)")
        present = set(self._con.execute(f"DESCRIBE SELECT * FROM {source}").df()
                      ["column_name"])
        wanted = list(SCHEMA)
        columns = [f.name if f.name in present else
                   f"CAST(NULL AS {_DUCK_TYPES[str(f.type)]}) AS {f.name}" for f in wanted]
        self._exec(f"CREATE OR REPLACE TEMP VIEW raw_events AS SELECT "
                          f"{', '.join(columns)}, filename, file_row_number FROM {source}")

    def _load(self, erasures: ErasureLookup | None) -> None:
        con = self._con
        self._raw_view()
        register = pd.DataFrame({"resident_id": pd.Series([], dtype=object),
                                 "cutoff": pd.Series([], dtype=float)})
        if erasures is not None and len(erasures):
            ids = con.execute("SELECT DISTINCT resident_id FROM raw_events "
                              "WHERE resident_id IS NOT NULL").fetchnumpy()["resident_id"]
            found = erasures.erased_among(str(r) for r in ids)
            register = pd.DataFrame({"resident_id": list(found),
                                     "cutoff": [float(v) for v in found.values()]})
        self._table("register_erasures", register)
        self._run("event_log")
        events, first_day, last_day = self._exec(
            "SELECT count(*), min(day), max(day) FROM events")[0]
        self.events = int(events)
        if not self.events:
            return
        self.first_day, self.last_day = int(first_day), int(last_day)

        classes = pd.DataFrame([(t, c) for c, types in CADENCE_CLASSES.items() for t in types],
                               columns=["type", "cadence_class"])
        self._table("event_classes", classes)
        self._table("funnel_stages", pd.DataFrame(list(FUNNEL_STAGE_OF_TYPE.items()),
                                                  columns=["type", "stage"]))
        pairs = con.execute(
            "SELECT DISTINCT service_id, bundle_id, channel FROM events "
            "WHERE type IN (SELECT type FROM event_classes)").df()
        items = pairs[["service_id", "bundle_id"]].drop_duplicates()
        item_rows = [(s, b, self.catalog.domain_of(_text(s), _text(b)),
                      self.catalog.aggregation_factor_of(_text(s), _text(b)))
                     for s, b in items.itertuples(index=False)]
        self._table("item_attributes", pd.DataFrame(
            item_rows, columns=["service_id", "bundle_id", "domain", "factor"]).astype(object))
        domains = [d.value for d in Domain]
        factors = [f.value for f in AggregationFactor]
        channels = sorted({str(c) for c in pairs["channel"] if _text(c) is not None})
        self._enum("domain_t", [*domains, UNKNOWN])
        self._enum("factor_t", [*factors, UNKNOWN])
        self._enum("channel_t", [*channels, UNKNOWN] if UNKNOWN not in channels else channels)
        self._enum("class_t", list(CADENCE_CLASSES))
        self._enum("stage_t", list(FUNNEL_STAGES))
        self._table("unverified_ids", self._unverified_ids())
        self._run("reduce")

        used = self._exec("SELECT bool_or(domain = '_unknown'), bool_or(factor = '_unknown'), "
                          "bool_or(channel = '_unknown') FROM contact_days")[0]
        neighbourhoods = sorted(v for v in con.execute(
            "SELECT DISTINCT neighbourhood FROM residents").df()["neighbourhood"]
            if v != UNKNOWN)
        self.dimension_values = {
            "neighbourhood": (*neighbourhoods, UNKNOWN),
            "domain": (*domains, *([UNKNOWN] if used[0] else [])),
            "factor": (*factors, *([UNKNOWN] if used[1] else [])),
            "channel": (*channels, *([UNKNOWN] if used[2] else [])),
        }
        rows = [("all", "all")] + [(d, v) for d in DIMENSIONS
                                   for v in self.dimension_values[d]]
        self.groups = pd.DataFrame({"g": np.arange(len(rows), dtype=np.int16),
                                    "dimension": [d for d, _ in rows],
                                    "value": [v for _, v in rows]})
        self._table("groups", self.groups)
        self._exec("CREATE OR REPLACE TEMP TABLE resident_groups AS "
                    "SELECT r.rid, r.first_day, g.g AS nb_g FROM residents AS r "
                    "JOIN groups AS g ON g.dimension = 'neighbourhood' "
                    "AND g.value = r.neighbourhood")
        first_group = {d: int(self.groups.index[self.groups["dimension"] == d][0])
                       for d in DIMENSIONS}
        self._set(first_day=self.first_day, last_day=self.last_day,
                  domain_g0=first_group["domain"], factor_g0=first_group["factor"],
                  channel_g0=first_group["channel"])
        self._set(window_days=28)
        self._run("calendar")
        self._table("quantiles", pd.DataFrame([(n, q) for q, n in QUANTILES],
                                              columns=["name", "q"]))
        self._table("lifetime_quantiles", pd.DataFrame([(n, q) for q, n in LIFETIME_QUANTILES],
                                                       columns=["name", "q"]))
        self._table("histogram_buckets", _buckets(HISTOGRAM, skip_zero=True))
        self._table("lifetime_buckets", _buckets(LIFETIME))

    def _unverified_ids(self) -> pd.DataFrame:
        """The distinct recommendation ids of funnel events whose signature does not verify
        (read in batches: there can be millions of distinct ids)."""
        reader = self._con.sql(
            "SELECT DISTINCT recommendation_id FROM events "
            "WHERE recommendation_id IS NOT NULL "
            "AND type IN (SELECT type FROM funnel_stages)").to_arrow_reader(500_000)
        bad: list[str] = []
        for batch in reader:
            bad.extend(self.ids.unverified(batch.column(0).to_pylist()))
        return pd.DataFrame({"recommendation_id": pd.Series(bad, dtype=object)})

    # --- figures ----------------------------------------------------------------------------
    def engagement(self, classes: Sequence[str] = ("use",),
                   rules: CadenceRules | None = None) -> Engagement:
        """Every engagement table over the contacts of the given cadence classes."""
        rules = rules or CadenceRules()
        unknown = set(classes) - set(CADENCE_CLASSES)
        if unknown or not classes:
            raise ValueError(f"cadence classes must be among {', '.join(CADENCE_CLASSES)}")
        started = time.perf_counter()
        with self._lock:
            if not self.events:
                return empty_engagement(rules)
            return self._engagement(tuple(classes), rules, started)

    def _engagement(self, classes: tuple[str, ...], rules: CadenceRules,
                    started: float) -> Engagement:
        self._set(window_days=rules.window_days)
        self._run("calendar")
        self._set(first_week=(self.first_day + 3) // 7, last_week=(self.last_day + 3) // 7,
                  window_weeks=rules.window_weeks, yearly_weeks=rules.yearly_weeks,
                  daily_min_days=rules.daily_min_days, weekly_min_weeks=rules.weekly_min_weeks,
                  histogram_cap=HISTOGRAM_CAP)
        self._table("selected_classes", pd.DataFrame({"cadence_class": list(classes)}))
        self._run("slices")
        tables = {name: self._figure(query) for name, query in FIGURES.items()}
        contacts, contacted = self._exec(
            "SELECT coalesce(sum(contacts), 0), count(DISTINCT rid) FROM slice_days "
            "WHERE s = 0")[0]
        cadence = tables["cadence"]
        summary = {
            "events": self.events, "contacts": int(contacts),
            "residents": int(cadence["known"].iloc[len(cadence) // len(self.groups) - 1])
            if len(cadence) else 0,
            "contacted_residents": int(contacted),
            "first_day": day_of_epoch(self.first_day).isoformat(),
            "last_day": day_of_epoch(self.last_day).isoformat(),
            "weeks": int(len(cadence) // len(self.groups)),
            "load_seconds": round(self.load_seconds, 3),
            "classes": list(classes),
        }
        eng = Engagement(rules=rules, summary=summary, **tables)
        eng.compute_seconds = time.perf_counter() - started
        log.info("engagement (%s) computed in DuckDB in %.2f s", "+".join(classes),
                 eng.compute_seconds)
        return eng

    def _figure(self, query: FigureQuery) -> pd.DataFrame:
        frame = query.finish(self._query(sql_text(query.sql)))
        if "week_start" in frame.columns:
            frame["week_start"] = [d.date() if hasattr(d, "date") else d
                                   for d in frame["week_start"]]
        frame = self.groups.merge(frame, on="g", how="right", sort=False)
        return frame.drop(columns="g").reset_index(drop=True)

    def funnel(self, since_day: int | None = None, weekly: bool = False,
               by: str = "all") -> pd.DataFrame:
        """The funnel per arm (per ISO week with ``weekly``, per value of ``by``), the
        layout of :func:`bouquet.analytics.funnel.funnel_by_arm`."""
        front = ["dimension", "value", "model_version", "variant"] + (["week"] if weekly
                                                                      else [])
        stage_cols = [f"{s}_events" for s in FUNNEL_STAGES]
        people = [f"{s}_residents" for s in FUNNEL_STAGES[1:]]
        columns = [*front, "arm", *stage_cols, "residents_shown", *people,
                   *[f"{s}_rate" for s in FUNNEL_STAGES[1:]]]
        with self._lock:
            if not self.events:
                return pd.DataFrame({c: [] for c in columns})
            self._set(funnel_since_day=since_day if since_day is not None else -1,
                      funnel_weekly=weekly, funnel_by=by)
            frame = self._query(sql_text("funnel"))
        for stage in FUNNEL_STAGES[1:]:
            frame[f"{stage}_rate"] = _ratio(frame[f"{stage}_residents"],
                                            frame["residents_shown"])
        for c in [*stage_cols, "residents_shown", *people]:
            frame[c] = frame[c].astype(np.int64)
        return frame[columns].reset_index(drop=True)

    # --- reading the view -------------------------------------------------------------------
    def read_events(self, columns: Sequence[str]) -> pd.DataFrame:
        """Rows of the view ``events`` (each event once, erasures applied), sorted by time."""
        with self._lock:
            if not self.events:
                return pd.DataFrame({c: [] for c in columns})
            return self._query(f"SELECT {', '.join(columns)} FROM events "
                               "ORDER BY ts, ingested_at")


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _buckets(spec: Sequence[tuple[int, int | None, str]], skip_zero: bool = False
             ) -> pd.DataFrame:
    rows = [(name, low, high) for low, high, name in spec if not (skip_zero and high == 0)]
    return pd.DataFrame({"name": [r[0] for r in rows], "low": [r[1] for r in rows],
                         "high": pd.array([r[2] for r in rows], dtype="Int64")})
