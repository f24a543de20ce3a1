"""What the planner learns from the event log: when residents are active, how nudges fared,
and how often each service is used.

The log is read through :func:`~bouquet.core.eventlog.read_events` (de-duplicated) over the
last ``BOUQUET_OUTREACH_HISTORY_DAYS``, in runs of whole event dates so that no more than a
few million events are held at once (a duplicate is the same event, so the same date), and
each run is reduced to arrays before the next is read. Erasures are applied as
``read_events`` applies them — an event is gone when its resident has an ``erase`` event
time-stamped at or after it — from the erase events of the window itself (an erase event
before the window cannot hide an event inside it), so the rest of the log is never read.

Out of each run:

* **hours**: contacts (every cadence class except ``notify``, which is when Bouquet sent,
  not when the resident was there) of the residents being planned, by local hour;
* **outcomes** of outreach nudges, recognised by their recommendation id's variant
  (``outreach``): deliveries (``notify``), opens, and use-class events attributed to a nudge;
* **use** of services by everyone (use, pay, subscribe, rate), for the usage frequency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bouquet.core.cadence import USE_TYPES
from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import EventLog, erased_residents, read_events, read_table
from bouquet.core.events import CONTACT_TYPES, OUTREACH_CHANNELS
from bouquet.core.outreach import OUTREACH_VARIANT
from bouquet.outreach.learning import offer_frequency, service_frequency

COLUMNS = ["resident_id", "type", "service_id", "bundle_id", "ts", "channel",
           "recommendation_id"]
#: Types whose local hour says when a resident is there to read a nudge.
HOUR_TYPES: frozenset[str] = CONTACT_TYPES - {"notify"}
CHUNK_EVENTS = 2_000_000


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
    frequency: np.ndarray  # (offers,) uses a week: bundles then services
    events: int  # events read


def hash_ids(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """A 64-bit hash of each resident id (pandas' vectorised hash): how events are matched
    to residents without building a string index per run."""
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def _date_runs(log: EventLog, start: date, end: date, rows: int) -> list[tuple[date, date]]:
    runs: list[tuple[date, date]] = []
    first: date | None = None
    count = 0
    days = [d for d in log.partitions() if start <= d <= end]
    for day in days:
        first = first or day
        count += sum(pq.read_metadata(f).num_rows for f in log.files(day, day))
        if count >= rows:
            runs.append((first, day))
            first, count = None, 0
    if first is not None:
        runs.append((first, days[-1]))
    return runs


def read_history(root: Path, catalog: Catalog, resident_ids: Sequence[str], now: float, days: int,
                 timezone: str, chunk_events: int = CHUNK_EVENTS) -> History:
    """Hours of ``resident_ids``, outcomes and usage frequency over the ``days`` before
    ``now`` (see the module docstring)."""
    n = len(resident_ids)
    moment = datetime.fromtimestamp(now, UTC)
    start = (moment - timedelta(days=days)).date()
    since = pd.Timestamp(moment - timedelta(days=days))
    until = pd.Timestamp(moment)
    wanted = hash_ids(resident_ids) if n else np.zeros(0, np.uint64)
    order = np.argsort(wanted, kind="stable")
    sorted_wanted = wanted[order]
    hours = np.zeros(n * 24, dtype=np.float32)
    n_bundles = len(catalog.bundle_ids)
    bundle_index = {b: i for i, b in enumerate(catalog.bundle_ids)}
    service_index = {s: i for i, s in enumerate(catalog.service_ids)}
    members = [[service_index[s] for s in b.services if s in service_index]
               for b in catalog.bundles]
    member_count = np.array([len(m) for m in members], dtype=np.int64)
    member_start = np.concatenate([[0], np.cumsum(member_count)[:-1]]).astype(np.int64)
    member_flat = np.array([s for m in members for s in m], dtype=np.int64)
    log = EventLog(root)
    erase_table = read_table(root, start=start, columns=["resident_id", "type", "ts"])
    cutoffs = erased_residents(erase_table)
    del erase_table
    delivered, opened, converted = [], [], []
    use_who, use_service, use_weight = [], [], []
    events = 0
    for first, last in _date_runs(log, start, moment.date(), chunk_events):
        frame = read_events(root, start=first, end=last, columns=COLUMNS,
                            apply_erasures=False)
        keep = (frame["ts"] >= since) & (frame["ts"] <= until)
        if cutoffs:
            cut = frame["resident_id"].map(cutoffs)
            keep &= cut.isna() | (frame["ts"] > cut)
        frame = frame[keep.to_numpy()]
        events += len(frame)
        if frame.empty:
            continue
        kind = frame["type"]
        who = hash_ids(frame["resident_id"].to_numpy(object))
        # hours of the residents being planned
        pos = np.searchsorted(sorted_wanted, who)
        pos = np.minimum(pos, max(n - 1, 0))
        found = (sorted_wanted[pos] == who) if n else np.zeros(len(who), bool)
        is_hour = kind.isin(HOUR_TYPES).to_numpy() & found
        if is_hour.any():
            local = frame["ts"][is_hour].dt.tz_convert(timezone).dt.hour.to_numpy()
            np.add.at(hours, order[pos[is_hour]] * 24 + local, 1.0)
        # use of services, everyone
        is_use = kind.isin(USE_TYPES).to_numpy()
        service = frame["service_id"].map(service_index)
        direct = is_use & service.notna().to_numpy()
        use_who.append(who[direct])
        use_service.append(service[direct].to_numpy(np.int64))
        use_weight.append(np.ones(int(direct.sum())))
        bundle = frame["bundle_id"].map(bundle_index)
        spread = is_use & ~direct & bundle.notna().to_numpy()
        if spread.any():
            b = bundle[spread].to_numpy(np.int64)
            size = member_count[b]
            use_who.append(np.repeat(who[spread], size))
            starts = np.repeat(member_start[b], size)
            within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
            use_service.append(member_flat[starts + within])
            use_weight.append(np.repeat(1.0 / np.maximum(size, 1), size))
        # outreach outcomes
        reference = frame["recommendation_id"]
        ours = reference.notna() & reference.str.contains(f".{OUTREACH_VARIANT}.",
                                                          regex=False, na=False)
        if ours.any():
            part = frame[ours.to_numpy()]
            part = part[part["recommendation_id"].str.split(".").str[1] == OUTREACH_VARIANT]
            offer = part["bundle_id"].map(bundle_index)
            offer = offer.where(offer.notna(), part["service_id"].map(service_index)
                                + n_bundles)
            rows = pd.DataFrame({"resident_id": part["resident_id"].to_numpy(object),
                                 "recommendation_id": part["recommendation_id"].to_numpy(object),
                                 "offer": offer.to_numpy(), "channel": part["channel"].map(
                                     {c: i for i, c in enumerate(OUTREACH_CHANNELS)}).to_numpy(),
                                 "ts": part["ts"].to_numpy()})
            kinds = part["type"].to_numpy()
            delivered.append(rows[kinds == "notify"])
            opened.append(rows[kinds == "open"])
            converted.append(rows.loc[np.isin(kinds, list(USE_TYPES)), "recommendation_id"])
    service_rate = service_frequency(
        np.concatenate(use_who) if use_who else np.zeros(0, np.uint64),
        np.concatenate(use_service) if use_service else np.zeros(0, np.int64),
        np.concatenate(use_weight) if use_weight else np.zeros(0),
        len(catalog.service_ids), days / 7.0)
    return History(
        hours=hours.reshape(n, 24),
        outcomes=Outcomes(_outcome_rows(delivered), _outcome_rows(opened),
                          frozenset(pd.concat(converted).tolist()) if converted
                          else frozenset()),
        frequency=offer_frequency(service_rate, members),
        events=events)


def _outcome_rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    columns = ["resident_id", "recommendation_id", "offer", "channel", "ts"]
    if not parts:
        return pd.DataFrame({c: [] for c in columns})
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.dropna(subset=["offer", "channel"])
    rows = rows.sort_values("ts", kind="stable").drop_duplicates("recommendation_id")
    rows["offer"] = rows["offer"].astype(np.int64)
    rows["channel"] = rows["channel"].astype(np.int64)
    return rows.reset_index(drop=True)

