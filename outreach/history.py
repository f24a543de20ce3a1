"""What the planner learns from the event log: when residents are active and how nudges
fared. (How often each offer is used is the published version's measure, the one serving
ranks by: :meth:`bouquet.outreach.candidates.PublishedLists.use_frequency`.)

The log is read over the last ``BOUQUET_OUTREACH_HISTORY_DAYS`` in runs of whole event dates
(a few million events at a time), each reduced to arrays before the next is read, as Arrow
columns turned into integer codes (dictionary encoding) — a million residents' history is
tens of millions of events, which the pandas objects of
:func:`~bouquet.core.eventlog.read_events` would hold in many gigabytes. What the planner
sees is what ``read_events`` returns, by the same rules:

* **each event once**: a run whose event ids are all distinct (the rule: a physical
  duplicate only follows a crash) is used as it is; otherwise its duplicates are dropped
  (a duplicate is the same event, so it is in the same date's files);
* **erasures**: an event is gone when its resident has an ``erase`` event time-stamped at or
  after it; only the erase events from the window's first day on can hide an event of the
  window, so the rest of the log is never read.

Out of each run:

* **hours**: contacts (every cadence class except ``notify``, which is when Bouquet sent,
  not when the resident was there) of the residents being planned, by local hour;
* **outcomes** of outreach nudges, recognised by their recommendation id's variant
  (``outreach``): deliveries (``notify``), opens, and use-class events attributed to a nudge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bouquet.core.cadence import USE_TYPES
from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import SCHEMA, EventLog, read_table
from bouquet.core.events import CONTACT_TYPES, OUTREACH_CHANNELS
from bouquet.core.outreach import OUTREACH_VARIANT, outreach_references
from bouquet.core.recommendation import RecommendationIds, development_ids

COLUMNS = ["event_id", "resident_id", "type", "service_id", "bundle_id", "ts", "channel",
           "recommendation_id"]
#: Types whose local hour says when a resident is there to read a nudge.
HOUR_TYPES: frozenset[str] = CONTACT_TYPES - {"notify"}
CHUNK_EVENTS = 2_000_000
_US_PER_HOUR = 3_600_000_000


@dataclass
class Outcomes:
    """Outreach outcomes in the window, one row per nudge: who, which offer (planner offer
    index: bundles then services), which channel, when."""

    delivered: pd.DataFrame  # resident_id, recommendation_id, offer, channel, ts
    opened: pd.DataFrame  # the same columns, for open events
    converted: frozenset[str]  # recommendation ids with a use-class event attributed

    @property
    def opened_ids(self) -> frozenset[str]:
        return frozenset(self.opened["recommendation_id"])


@dataclass
class History:
    hours: np.ndarray  # (n, 24) float32, aligned with the residents asked
    outcomes: Outcomes
    events: int  # events read


def hash_ids(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """A 64-bit hash of each resident id (pandas' vectorised hash): how events are matched
    to residents without a string index."""
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def _date_runs(log: EventLog, start: date, end: date, rows: int) -> list[tuple[date, date]]:
    runs: list[tuple[date, date]] = []
    first: date | None = None
    count = 0
    by_day = log.files_by_day(start, end)
    days = list(by_day)
    for day, files in by_day.items():
        first = first or day
        count += sum(pq.read_metadata(f).num_rows for f in files)
        if count >= rows:
            runs.append((first, day))
            first, count = None, 0
    if first is not None:
        runs.append((first, days[-1]))
    return runs


def _erasures(log: EventLog, start: date) -> dict[str, int]:
    """Resident id → time (µs) of their latest erase event, from ``start`` on."""
    files = log.files(start)
    if not files:
        return {}
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    # one filtered pass: a city erases someone most weeks, so a first look at the type
    # column alone would nearly always be followed by this read anyway
    found = dataset.to_table(columns=["resident_id", "ts"], filter=pc.field("type") == "erase")
    if found.num_rows == 0:
        return {}
    latest = found.group_by("resident_id").aggregate([("ts", "max")])
    return dict(zip(latest["resident_id"].to_pylist(),
                    latest["ts_max"].cast(pa.int64()).to_pylist(), strict=True))


def _once(table: pa.Table) -> pa.Table:
    """The rows of ``table`` with each event id once (any copy: copies are the same
    event)."""
    if len(pc.unique(table["event_id"])) == table.num_rows:
        return table
    indexed = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = indexed.group_by("event_id", use_threads=False).aggregate([("_row", "min")])
    return table.take(pa.array(np.sort(first["_row_min"].to_numpy())))


def string_codes(column: pa.ChunkedArray, mapping: dict[str, int]) -> np.ndarray:
    """Integer codes of a string column through ``mapping`` (−1: null or unmapped)."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    lookup = np.array([mapping.get(v, -1) for v in encoded.dictionary.to_pylist()] + [-1],
                      dtype=np.int64)
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return lookup[indices]


def _planned(column: pa.ChunkedArray, index: pd.Index) -> np.ndarray:
    """Per event: its resident's position in ``index`` (hashes of the residents being
    planned; −1 for others) — hashed and looked up once per distinct resident of the run,
    not per event."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    hashes = hash_ids(encoded.dictionary.to_numpy(zero_copy_only=False))
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    return index.get_indexer(hashes)[indices]


def _utc_offsets(since_us: int, until_us: int, timezone: str) -> tuple[int, np.ndarray]:
    """(first UTC hour, offset in seconds of local time at each UTC hour of the window):
    time-zone changes happen on the hour."""
    zone = ZoneInfo(timezone)
    first = since_us // _US_PER_HOUR
    last = until_us // _US_PER_HOUR
    offsets = np.array([datetime.fromtimestamp(h * 3600, zone).utcoffset().total_seconds()
                        for h in range(first, last + 1)], dtype=np.int64)
    return first, offsets


def read_history(root: Path, catalog: Catalog, resident_ids: Sequence[str], now: float,
                 days: int, timezone: str, chunk_events: int = CHUNK_EVENTS,
                 recommendation_ids: RecommendationIds | None = None) -> History:
    """Hours of ``resident_ids`` and outcomes over the ``days`` before
    ``now`` (see the module docstring). Outcomes count only the nudge ids
    ``recommendation_ids`` verifies (the deployment's, from
    :meth:`RecommendationIds.for_settings`; default: the development key's)."""
    recommendation_ids = recommendation_ids or development_ids()
    n = len(resident_ids)
    moment = datetime.fromtimestamp(now, UTC)
    start = (moment - timedelta(days=days)).date()
    since_us, until_us = int((now - days * 86400) * 1e6), int(now * 1e6)
    first_hour, offsets = _utc_offsets(since_us, until_us, timezone)
    wanted = pd.Index(hash_ids(resident_ids) if n else np.zeros(0, np.uint64))
    if not wanted.is_unique:  # two ids with one 64-bit hash: both keep the first's hours
        wanted = pd.Index(wanted.where(~wanted.duplicated(), np.uint64(0)))
    hours = np.zeros(n * 24, dtype=np.float64)
    n_bundles = len(catalog.bundle_ids)
    bundle_index = {b: i for i, b in enumerate(catalog.bundle_ids)}
    service_index = {s: i for i, s in enumerate(catalog.service_ids)}
    type_names = sorted(HOUR_TYPES | USE_TYPES | {"notify", "open", "erase", "consent",
                                                  "profile"})
    type_code = {t: i for i, t in enumerate(type_names)}
    is_hour_type = np.array([t in HOUR_TYPES for t in type_names] + [False])
    is_use_type = np.array([t in USE_TYPES for t in type_names] + [False])
    channel_code = {c: i for i, c in enumerate(OUTREACH_CHANNELS)}
    log = EventLog(root)
    cutoffs = _erasures(log, start)
    erased_ids = pa.array(list(cutoffs), pa.string())
    delivered, opened, converted = [], [], []
    events = 0
    for first, last in _date_runs(log, start, moment.date(), chunk_events):
        table = _once(read_table(root, start=first, end=last, columns=COLUMNS))
        ts = table["ts"].cast(pa.int64()).to_numpy()
        keep = (ts >= since_us) & (ts <= until_us)
        if cutoffs:
            hit = pc.is_in(table["resident_id"], value_set=erased_ids).to_numpy(
                zero_copy_only=False)
            for i in np.flatnonzero(hit & keep):
                if ts[i] <= cutoffs[table["resident_id"][int(i)].as_py()]:
                    keep[i] = False
        if not keep.all():
            table = table.filter(pa.array(keep))
            ts = ts[keep]
        events += table.num_rows
        if table.num_rows == 0:
            continue
        planned = _planned(table["resident_id"], wanted)
        kind = string_codes(table["type"], type_code)
        # hours of the residents being planned
        hour_rows = is_hour_type[kind] & (planned >= 0)
        if hour_rows.any():
            t = ts[hour_rows]
            local = ((t // 1_000_000 + offsets[t // _US_PER_HOUR - first_hour]) // 3600) % 24
            hours += np.bincount(planned[hour_rows] * 24 + local, minlength=n * 24)
        # outreach outcomes
        ours = pc.fill_null(pc.match_substring(table["recommendation_id"],
                                               f".{OUTREACH_VARIANT}."), False)
        if pc.any(ours).as_py():
            part = table.filter(ours)
            references = part["recommendation_id"].to_pylist()
            variant = outreach_references(references, recommendation_ids)
            part_kind = kind[ours.to_numpy(zero_copy_only=False)]
            offer = string_codes(part["bundle_id"], bundle_index)
            service_offer = string_codes(part["service_id"], service_index)
            offer = np.where(offer >= 0, offer, np.where(service_offer >= 0,
                                                         service_offer + n_bundles, -1))
            rows = pd.DataFrame({
                "resident_id": part["resident_id"].to_pylist(),
                "recommendation_id": references, "offer": offer,
                "channel": string_codes(part["channel"], channel_code),
                "ts": ts[ours.to_numpy(zero_copy_only=False)]})
            delivered.append(rows[variant & (part_kind == type_code["notify"])])
            opened.append(rows[variant & (part_kind == type_code["open"])])
            converted.append(rows.loc[variant & is_use_type[part_kind], "recommendation_id"])
    return History(
        hours=hours.reshape(n, 24).astype(np.float32),
        outcomes=Outcomes(_outcome_rows(delivered), _outcome_rows(opened),
                          frozenset(pd.concat(converted).tolist()) if converted
                          else frozenset()),
        events=events)


def _outcome_rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per nudge (its first event), offer and channel known; ``ts`` as µs."""
    columns = ["resident_id", "recommendation_id", "offer", "channel", "ts"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c in ("offer", "channel", "ts")
                                          else object) for c in columns})
    rows = pd.concat(parts, ignore_index=True)
    rows = rows[(rows["offer"] >= 0) & (rows["channel"] >= 0)]
    rows = rows.sort_values("ts", kind="stable").drop_duplicates("recommendation_id")
    return rows.reset_index(drop=True)
