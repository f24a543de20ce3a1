"""Replay a real bike-share log (ValleyBike) as Bouquet interaction events.

Every kept trip becomes one ``use`` of the ``bike-share`` service by its rider at the
trip's start, reported by the partner (channel ``partner``). Riders are pseudonymised
with a keyed hash (:func:`bouquet.privacy.pseudonyms.pseudonymise`, secret
``Settings.pseudonym_secret``), so no raw user id enters Bouquet. Event ids derive from
the route id, so replaying the same file twice writes the same ids and the second copy is
de-duplicated by every reader.

Each rider also gets one ``profile`` event one second before their first trip: its
context is empty by default (the log says nothing about where riders live); with
``assign_neighbourhoods`` a catalog neighbourhood is picked deterministically from the
pseudonym — a demo convenience, clearly not a fact about the rider. No ``consent`` event
is sent unless ``grant_consent``: these riders never opted in to personalisation, so by
default they count in engagement metrics but not in training data.

Real-data noise is counted, never repaired (times are never invented):

* ``missing_start`` — start time absent (``-``) or unparseable: dropped;
* ``clock_error`` — a start that cannot be right: more than 45 days away from the month
  the route id is tagged with (``route_MM_YYYY@…``; GPS units that booted with a 1980 or
  2010 clock), or, without a tag, more than 30 days before the trip's end: dropped;
* ``end_before_start``: dropped (one of the two times is wrong, we cannot tell which);
* ``missing_end`` — end absent or unparseable while the start is valid: **kept** (the
  start is real; the duration is unknown, so it is not treated as a false start);
* ``short`` — trips under a minute, most of them false starts (undocking and docking a
  bike again): dropped by default, kept with ``keep_short``. Counted either way.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import DECLARED_COLUMNS, SCHEMA
from bouquet.privacy.pseudonyms import pseudonymise

log = logging.getLogger(__name__)

SERVICE_ID = "bike-share"
PSEUDONYM_PREFIX = "vb-"
SHORT_TRIP_S = 60
_ROUTE_MONTH = re.compile(r"^route_(\d{2})_(\d{4})@")
_EVENT_ID_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass
class ReplayCounts:
    """What the reader saw in the file and what it did with each row."""

    rows: int = 0
    riders: int = 0  # distinct riders among kept trips
    kept: int = 0  # trips that become use events
    missing_start: int = 0
    clock_error: int = 0
    end_before_start: int = 0
    missing_end: int = 0  # rows with no valid end time (any start)
    missing_end_kept: int = 0  # ... whose start is valid, so they are kept
    short: int = 0  # trips under a minute (valid start and end)
    short_dropped: int = 0
    first_start: str | None = None
    last_start: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trips:
    """The kept trips: raw user id, route id and start time (UTC), sorted by start."""

    user_id: np.ndarray  # object (str)
    route_id: np.ndarray  # object (str)
    start_us: np.ndarray  # int64 µs since the epoch, UTC
    counts: ReplayCounts


def _parse_times(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values.where(values != "-"), errors="coerce", utc=True,
                          format="ISO8601")


def read_trips(path: Path, *, keep_short: bool = False, limit: int | None = None) -> Trips:
    """Read and clean a ValleyBike-layout file (``route_id, user_id, started_at,
    ended_at``; TSV, optionally gzipped); see the module docstring for the rules."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, nrows=limit)
    missing = {"route_id", "user_id", "started_at", "ended_at"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    counts = ReplayCounts(rows=len(frame))
    start = _parse_times(frame["started_at"])
    end = _parse_times(frame["ended_at"])
    valid_start = start.notna().to_numpy()
    valid_end = end.notna().to_numpy()
    counts.missing_start = int((~valid_start).sum())
    counts.missing_end = int((~valid_end).sum())
    counts.missing_end_kept = int((valid_start & ~valid_end).sum())

    tag = frame["route_id"].str.extract(_ROUTE_MONTH)
    tagged = tag.notna().all(axis=1).to_numpy()
    month = pd.to_datetime(tag[1] + "-" + tag[0] + "-01", errors="coerce", utc=True)
    mid_month = month + pd.Timedelta(days=15)
    far_from_tag = ((start - mid_month).abs() > pd.Timedelta(days=45)).fillna(False).to_numpy()
    long_before_end = ((end - start) > pd.Timedelta(days=30)).fillna(False).to_numpy()
    clock_error = valid_start & np.where(tagged, far_from_tag, long_before_end)
    counts.clock_error = int(clock_error.sum())

    duration = (end - start).dt.total_seconds().to_numpy()
    both = valid_start & valid_end & ~clock_error
    end_before_start = both & (duration < 0)
    counts.end_before_start = int(end_before_start.sum())
    short = both & (duration >= 0) & (duration < SHORT_TRIP_S)
    counts.short = int(short.sum())
    keep = valid_start & ~clock_error & ~end_before_start
    if not keep_short:
        keep &= ~short
        counts.short_dropped = counts.short
    kept = frame.loc[keep, ["user_id", "route_id"]]
    start_us = start[keep].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    order = np.argsort(start_us, kind="stable")
    counts.kept = int(keep.sum())
    counts.riders = int(kept["user_id"].nunique())
    if counts.kept:
        counts.first_start = pd.Timestamp(start_us[order[0]], unit="us", tz="UTC").isoformat()
        counts.last_start = pd.Timestamp(start_us[order[-1]], unit="us", tz="UTC").isoformat()
    return Trips(kept["user_id"].to_numpy()[order], kept["route_id"].to_numpy()[order],
                 start_us[order], counts)


def event_id_for_route(route_id: str) -> str:
    """Deterministic event id of a trip: ``vb-`` + the route id made id-safe."""
    safe = _EVENT_ID_SAFE.sub(".", route_id)
    return f"vb-{safe}"[:80]


def replay_table(trips: Trips, catalog: Catalog, secret: str, *,
                 assign_neighbourhoods: bool = False, grant_consent: bool = False) -> pa.Table:
    """Interaction events (event-log layout, sorted by time) for the kept trips."""
    if SERVICE_ID not in catalog.service_by_id:
        raise ValueError(f"the catalog has no {SERVICE_ID!r} service to replay trips onto")
    uniques, inverse = np.unique(trips.user_id.astype(str), return_inverse=True)
    pseudonyms = np.array([pseudonymise(u, secret, prefix=PSEUDONYM_PREFIX) for u in uniques],
                          object)
    resident = pseudonyms[inverse]
    n = len(resident)
    use_ids = np.array([event_id_for_route(r) for r in trips.route_id], object)

    first = np.full(len(uniques), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, inverse, trips.start_us)
    profile_ts = first - 1_000_000
    if assign_neighbourhoods:
        neighbourhoods = catalog.neighbourhood_ids
        contexts = [f'{{"neighbourhood":"{neighbourhoods[int(p[-8:], 16) % len(neighbourhoods)]}"}}'
                    for p in pseudonyms]
    else:
        contexts = [None] * len(uniques)
    admin_types = ["profile"] + (["consent"] if grant_consent else [])
    blocks = [{
        "event_id": use_ids, "resident_id": resident, "type": np.full(n, "use", object),
        "service_id": np.full(n, SERVICE_ID, object), "ts": trips.start_us,
        "channel": np.full(n, "partner", object), "value": np.full(n, None, object),
        "context": np.full(n, None, object),
    }]
    for kind in admin_types:
        m = len(uniques)
        blocks.append({
            "event_id": np.array([f"vb-{kind}-{p[len(PSEUDONYM_PREFIX):]}" for p in pseudonyms],
                                 object),
            "resident_id": pseudonyms, "type": np.full(m, kind, object),
            "service_id": np.full(m, None, object),
            "ts": profile_ts + (1 if kind == "consent" else 0),
            "channel": np.full(m, "partner", object),
            "value": np.full(m, 1.0 if kind == "consent" else None, object),
            "context": np.array(contexts if kind == "profile" else [None] * m, object),
        })
    merged = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    order = np.argsort(merged["ts"], kind="stable")
    total = len(order)
    return pa.table({
        "event_id": pa.array(merged["event_id"][order], pa.string()),
        "resident_id": pa.array(merged["resident_id"][order], pa.string()),
        "type": pa.array(merged["type"][order], pa.string()),
        "service_id": pa.array(merged["service_id"][order], pa.string()),
        "bundle_id": pa.nulls(total, pa.string()),
        "ts": pa.array(merged["ts"][order], pa.timestamp("us", tz="UTC")),
        "channel": pa.array(merged["channel"][order], pa.string()),
        "value": pa.array(merged["value"][order], pa.float64()),
        "recommendation_id": pa.nulls(total, pa.string()),
        "context": pa.array(merged["context"][order], pa.string()),
        "schema_version": pa.array(np.ones(total, np.int16)),
        "ingested_at": pa.nulls(total, pa.timestamp("us", tz="UTC")),
        # a profile's declared attributes stay in `context`; the log's writer types them
        **{name: pa.nulls(total, SCHEMA.field(name).type) for name in DECLARED_COLUMNS},
    }, schema=SCHEMA)


def pacing_offsets(table: pa.Table, speedup: float | None) -> np.ndarray | None:
    """Seconds after the start at which each event should be sent to compress the log's
    time ``speedup`` times (None: as fast as possible)."""
    if not speedup:
        return None
    ts = table["ts"].cast(pa.int64()).to_numpy()
    return (ts - ts[0]) / 1e6 / speedup if len(ts) else ts.astype(float)
