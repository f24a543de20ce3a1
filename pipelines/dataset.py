"""Training data: the event log → resident × service and resident × bundle confidences.

Two steps, so one read of the log serves the hold-out split *and* the final fit:

1. :meth:`EventArrays.from_frame` turns the events returned by
   :func:`bouquet.core.eventlog.read_events` (de-duplicated, erasures applied) into compact
   numeric columns — resident codes, type codes, catalog indices, nanosecond timestamps —
   plus each resident's current state: consent (the ``consent`` event received last —
   ``ingested_at``, not the client's time stamp — has value 1; no consent event means *not*
   consenting, personalisation is opt-in) and declared attributes (their latest ``profile``
   event).
2. :func:`build_dataset` selects the events before a cut-off, from consenting residents,
   and builds the matrices with ``scipy.sparse.coo_matrix`` (duplicates summed): no Python
   loop runs per event, which is what lets a million residents and tens of millions of
   events fit in a couple of minutes.

Confidence of a pair (the :class:`~bouquet.models.confidence.ConfidenceRule`, which serving
applies to recent events too)::

    strength   = Σ_events weight[type] · 0.5 ** (age_days / half_life_days)
    confidence = 1 + log_alpha · log1p(strength)          (pairs with strength > 0 only)

``weight`` comes from ``settings.event_weights`` (configuration, not code); ages are
measured from ``as_of`` (the cut-off). Administrative events (consent, profile, erase)
never weigh. An event naming a service counts for that service; an event naming a bundle
counts for the bundle and, when it names no service (``spread_bundle_events``), for each
of the bundle's services with an equal share of its strength — as serving's fold-in reads
the same events. Items no longer in the catalog are dropped and counted in ``stats``.
Holdings are per (resident, item) the latest of ``subscribe``/``unsubscribe`` being a
subscribe.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
import scipy.sparse as sp

from bouquet.core.catalog import (
    AGE_BANDS,
    HOUSEHOLDS,
    Catalog,
    available_in,
    eligibility_failure,
)
from bouquet.core.eventlog import EventLog, read_events
from bouquet.core.events import EventType
from bouquet.core.profile import all_segments
from bouquet.core.settings import Settings
from bouquet.models.confidence import ConfidenceRule
from bouquet.models.reasons import encode_drivers

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9

#: The only columns training reads from the log.
EVENT_COLUMNS: tuple[str, ...] = (
    "resident_id", "type", "service_id", "bundle_id", "ts", "value", "context", "ingested_at",
    "recommendation_id",
)
#: Event type codes used in :class:`EventArrays` (index = code).
TYPES: tuple[str, ...] = tuple(t.value for t in EventType)
_CODE = {name: i for i, name in enumerate(TYPES)}
PROFILE_FIELDS: tuple[str, ...] = ("neighbourhood", "age_band", "household", "student",
                                   "low_income")


def rule_from_settings(settings: Settings, **overrides: Any) -> ConfidenceRule:
    """The confidence rule of the settings' event and impression weights, with
    ``overrides`` (half-life, log_alpha, spreading, impression weight; None values
    ignored)."""
    values: dict[str, Any] = {"event_weights": dict(settings.event_weights),
                              "impression_weight": settings.impression_weight}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ConfidenceRule(**values)


@dataclass
class EventArrays:
    """The event log as numeric columns (one entry per event, in time order) plus the
    current state of every resident seen. Built once per training run."""

    resident_ids: np.ndarray  # code → resident id (str)
    resident: np.ndarray  # int32 code per event
    kind: np.ndarray  # int8 index into TYPES
    service: np.ndarray  # int16 catalog service index, -1 none/unknown
    bundle: np.ndarray  # int16 catalog bundle index, -1 none/unknown
    ts: np.ndarray  # int64 ns since epoch, UTC, non-decreasing
    recommended: np.ndarray  # bool per event: carries a recommendation id
    consent: np.ndarray  # bool per resident code: latest consent event has value 1
    #: per resident code (index): PROFILE_FIELDS, neighbourhood_code, segment_code
    profiles: pd.DataFrame
    #: What serving may offer each resident (zone and eligibility by their declared
    #: profile, :func:`bouquet.core.catalog.eligibility_failure`): a row of the tables
    #: below per resident code; row 0 is a resident who declared nothing.
    offer_class: np.ndarray  # int32 per resident code
    offerable_services: np.ndarray  # bool, classes × services
    offerable_bundles: np.ndarray  # bool, classes × bundles
    service_ids: tuple[str, ...]
    bundle_ids: tuple[str, ...]
    neighbourhoods: tuple[str, ...]
    catalog_version: str
    catalog_fingerprint: str
    bundle_services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return int(self.resident.shape[0])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, catalog: Catalog) -> EventArrays:
        """Encode events as returned by ``read_events(columns=EVENT_COLUMNS)``."""
        encoder = _Encoder(catalog)
        encoder.add(frame)
        return encoder.finish()

    def neighbourhood_codes(self, codes: np.ndarray) -> np.ndarray:
        """Catalog neighbourhood index of residents ``codes`` (-1 when undeclared)."""
        return self._profile_codes(codes, "neighbourhood_code")

    def segment_codes(self, codes: np.ndarray) -> np.ndarray:
        """Index into :attr:`segments` of residents ``codes`` (-1 when any of
        neighbourhood, age band and household is undeclared)."""
        return self._profile_codes(codes, "segment_code")

    def offerable(self, codes: np.ndarray, target: str) -> np.ndarray:
        """``(len(codes), items)`` bool: the services or bundles serving may offer each of
        residents ``codes``."""
        table = self.offerable_services if target == "services" else self.offerable_bundles
        return table[self.offer_class[codes]]

    @property
    def segments(self) -> tuple[str, ...]:
        """Every segment (neighbourhood × age band × household) of the catalog."""
        return tuple(all_segments(self.neighbourhoods))

    def _profile_codes(self, codes: np.ndarray, column: str) -> np.ndarray:
        out = np.full(len(codes), -1, dtype=np.int16)
        if len(self.profiles):
            lookup = np.full(len(self.resident_ids), -1, dtype=np.int16)
            lookup[self.profiles.index.to_numpy()] = self.profiles[column]
            out[:] = lookup[codes]
        return out

    def digest(self, selection: np.ndarray) -> str:
        """Content hash of the selected events (resident, type, items, time)."""
        h = hashlib.sha256()
        for column in (self.resident, self.kind, self.service, self.bundle, self.ts):
            h.update(np.ascontiguousarray(column[selection]).tobytes())
        used = _distinct_codes(self.resident[selection], len(self.resident_ids))
        h.update("\n".join(map(str, self.resident_ids[used])).encode())
        return h.hexdigest()


@dataclass
class Dataset:
    """Confidence matrices for consenting residents with at least one weighted event.

    Rows follow ``resident_ids``; columns follow the catalog's ``service_ids`` and
    ``bundle_ids`` (every catalog item has a column, even without events, so a model's
    item axis always matches the catalog it is deployed with).
    """

    resident_ids: np.ndarray  # str, row order
    service_ids: tuple[str, ...]
    bundle_ids: tuple[str, ...]
    neighbourhoods: tuple[str, ...]
    services: sp.csr_matrix  # float32 confidences
    bundles: sp.csr_matrix
    #: Per stored pair of ``services`` / ``bundles`` (same structure), the event that drove
    #: its confidence, encoded by :func:`bouquet.models.reasons.encode_drivers`.
    service_drivers: sp.csr_matrix
    bundle_drivers: sp.csr_matrix
    held_services: sp.csr_matrix  # float32 0/1
    held_bundles: sp.csr_matrix
    neighbourhood: np.ndarray  # int16 per row, -1 undeclared
    params: ConfidenceRule
    as_of: pd.Timestamp
    until: pd.Timestamp | None
    catalog_version: str
    catalog_fingerprint: str
    codes: np.ndarray  # EventArrays resident code per row (for aligning test data)
    bundle_services: dict[str, tuple[str, ...]] = field(default_factory=dict)
    segments: tuple[str, ...] = ()  # every catalog segment (core.profile.all_segments)
    segment: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # per row
    #: Recommendations shown (impressions) and taken (subscriptions carrying a
    #: recommendation id) per bundle, among consenting residents before the cut-off:
    #: ``(1 + segments) × bundles``, city-wide row first — exploration's conversion rates.
    bundle_shown: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))
    bundle_taken: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))
    stats: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def n_residents(self) -> int:
        return int(self.services.shape[0])

    def row_of(self, resident_ids: list[str] | np.ndarray) -> np.ndarray:
        """Row index of each resident id, -1 when absent."""
        index = pd.Index(self.resident_ids)
        return index.get_indexer(pd.Index(np.asarray(resident_ids, dtype=object)))

    def summary(self) -> dict[str, Any]:
        return {
            "residents": self.n_residents,
            "services": len(self.service_ids),
            "bundles": len(self.bundle_ids),
            "service_pairs": int(self.services.nnz),
            "bundle_pairs": int(self.bundles.nnz),
            "as_of": self.as_of.isoformat(),
            "fingerprint": self.fingerprint,
            **self.stats,
        }


def load_event_arrays(settings: Settings, catalog: Catalog,
                      chunk_events: int = 4_000_000) -> EventArrays:
    """Read the event log (only the columns training needs) and encode it.

    The log is read through :func:`~bouquet.core.eventlog.read_events` in runs of whole
    event dates of about ``chunk_events`` events, each encoded and dropped before the next:
    ``read_events`` holds a few copies of what it reads while it de-duplicates, so reading
    tens of millions of events at once would need many GB for strings training never keeps.
    Chunking by date is exact: a duplicate is the same event (same ``ts``, so same date
    partition), and erasures are looked up across the whole log on every call.
    """
    root = settings.event_log_path
    if not root.is_dir():
        raise ValueError(f"there is no event log at {root}: check BOUQUET_EVENT_LOG_DIR / "
                         "BOUQUET_STATE_DIR, or ingest events first (`bouquet ingest`)")
    started = time.perf_counter()
    encoder = _Encoder(catalog)
    for start, end in _date_chunks(EventLog(root), chunk_events):
        encoder.add(read_events(root, start=start, end=end, columns=list(EVENT_COLUMNS)))
    arrays = encoder.finish()
    if arrays.n_events == 0:
        raise ValueError(f"the event log at {root} is empty: nothing to train on")
    log.info("read %d events of %d residents (%d consenting) in %.1f s",
             arrays.n_events, len(arrays.resident_ids), arrays.stats["residents_consenting"],
             time.perf_counter() - started)
    return arrays


def _date_chunks(event_log: EventLog, chunk_events: int) -> list[tuple[date, date]]:
    """Consecutive event-date ranges of about ``chunk_events`` rows (Parquet metadata)."""
    chunks: list[tuple[date, date]] = []
    first: date | None = None
    rows = 0
    days = event_log.partitions()
    for day in days:
        first = first or day
        rows += sum(pq.read_metadata(f).num_rows for f in event_log.files(day, day))
        if rows >= chunk_events:
            chunks.append((first, day))
            first, rows = None, 0
    if first is not None:
        chunks.append((first, days[-1]))
    return chunks or [(date.min, date.max)]


class _Encoder:
    """Turns successive frames of events (in time order) into one :class:`EventArrays`,
    with one resident code space across frames."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.index = pd.Index([], dtype=object)
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.consent_who: list[np.ndarray] = []
        self.consent_value: list[np.ndarray] = []
        self.consent_received: list[np.ndarray] = []
        self.profile_who: list[np.ndarray] = []
        self.profile_context: list[np.ndarray] = []
        self.stats = {"events": 0, "unknown_service_events": 0, "unknown_bundle_events": 0,
                      "unknown_type_events": 0}

    def _codes(self, column: pd.Series) -> np.ndarray:
        local, uniques = pd.factorize(column, sort=False)
        known = self.index.get_indexer(pd.Index(uniques, dtype=object)) if len(self.index) \
            else np.full(len(uniques), -1)
        new = known < 0
        known[new] = len(self.index) + np.arange(int(new.sum()))
        if new.any():
            self.index = self.index.append(pd.Index(np.asarray(uniques, dtype=object)[new]))
        return known.astype(np.int32)[local]

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if not frame["ts"].is_monotonic_increasing:
            frame = frame.sort_values("ts", kind="stable")
        catalog = self.catalog
        resident = self._codes(frame["resident_id"])
        kind = pd.Categorical(frame["type"], categories=list(TYPES)).codes.astype(np.int8)
        service = pd.Categorical(frame["service_id"],
                                 categories=list(catalog.service_ids)).codes.astype(np.int16)
        bundle = pd.Categorical(frame["bundle_id"],
                                categories=list(catalog.bundle_ids)).codes.astype(np.int16)
        recommended = (frame["recommendation_id"].notna().to_numpy()
                       if "recommendation_id" in frame else np.zeros(len(frame), bool))
        self.parts.append((resident, kind, service, bundle, _ts_ns(frame["ts"]), recommended))
        self.stats["events"] += len(frame)
        self.stats["unknown_service_events"] += int(
            ((service < 0) & frame["service_id"].notna().to_numpy()).sum())
        self.stats["unknown_bundle_events"] += int(
            ((bundle < 0) & frame["bundle_id"].notna().to_numpy()).sum())
        self.stats["unknown_type_events"] += int((kind < 0).sum())
        is_consent = kind == _CODE["consent"]
        if is_consent.any():
            self.consent_who.append(resident[is_consent])
            self.consent_value.append(
                frame["value"].to_numpy(dtype=np.float64, na_value=np.nan)[is_consent])
            # consent takes effect in order of receipt (ingested_at), not of the time stamp
            # the client wrote; a frame without it (built by hand) keeps time order
            received = frame["ingested_at"] if "ingested_at" in frame else frame["ts"]
            self.consent_received.append(_ts_ns(received)[is_consent])
        is_profile = kind == _CODE["profile"]
        if is_profile.any():
            who = resident[is_profile]
            last = _last_index(who)
            self.profile_who.append(who[last])
            self.profile_context.append(
                frame["context"].to_numpy(dtype=object, na_value=None)[is_profile][last])

    def finish(self) -> EventArrays:
        catalog = self.catalog
        columns = list(zip(*self.parts, strict=True)) if self.parts else [
            [np.zeros(0, t)] for t in (np.int32, np.int8, np.int16, np.int16, np.int64, bool)]
        resident, kind, service, bundle, ts, recommended = (np.concatenate(c) for c in columns)
        self.parts.clear()
        n_res = len(self.index)
        # Consent: the consent event received last decides (ties: the later one read).
        consent = np.zeros(n_res, dtype=bool)
        if self.consent_who:
            who, value = np.concatenate(self.consent_who), np.concatenate(self.consent_value)
            received = np.concatenate(self.consent_received)
            order = np.lexsort((received, who))  # stable: ties keep the order read
            last = order[_last_index(who[order])]
            consent[who[last]] = value[last] == 1.0
        profiles = _parse_profiles(
            np.concatenate(self.profile_who) if self.profile_who else np.zeros(0, np.int32),
            np.concatenate(self.profile_context) if self.profile_context
            else np.zeros(0, object), catalog)
        offer_class, offerable_services, offerable_bundles = _offer_classes(profiles, n_res,
                                                                            catalog)
        stats = {**self.stats, "residents_seen": n_res,
                 "residents_consenting": int(consent.sum())}
        return EventArrays(
            resident_ids=np.asarray(self.index, dtype=object), resident=resident, kind=kind,
            service=service, bundle=bundle, ts=ts, recommended=recommended, consent=consent,
            profiles=profiles, offer_class=offer_class, offerable_services=offerable_services,
            offerable_bundles=offerable_bundles,
            service_ids=tuple(catalog.service_ids), bundle_ids=tuple(catalog.bundle_ids),
            neighbourhoods=tuple(catalog.neighbourhood_ids), catalog_version=catalog.version,
            catalog_fingerprint=catalog.fingerprint,
            bundle_services={b.id: tuple(b.services) for b in catalog.bundles}, stats=stats,
        )


def build_dataset(
    arrays: EventArrays,
    params: ConfidenceRule,
    *,
    until: pd.Timestamp | None = None,
    as_of: pd.Timestamp | None = None,
) -> Dataset:
    """Confidence matrices from events strictly before ``until`` (all events when None).

    Decay ages are measured from ``as_of`` (default: ``until``, else the latest event).
    """
    select = arrays.consent[arrays.resident]
    if until is not None:
        select &= arrays.ts < _ts_value(until)
    if as_of is None:
        if until is not None:
            as_of = until
        else:
            last = arrays.ts[select].max() if select.any() else 0
            as_of = pd.Timestamp(int(last), tz="UTC")
    kind = arrays.kind.astype(np.int16)
    known = select & (kind >= 0)
    # an event's weight: its type's, or the rule's impression weight for a recommended view
    weight = np.zeros(arrays.n_events, dtype=np.float64)
    weight[known] = np.where(arrays.recommended[known],
                             params.impression_vector(TYPES)[kind[known]],
                             params.weight_vector(TYPES)[kind[known]])
    weighted = known & (weight > 0)
    strength = np.zeros(arrays.n_events, dtype=np.float64)
    ages = (_ts_value(as_of) - arrays.ts[weighted]) / NS_PER_DAY
    strength[weighted] = weight[weighted] * params.decay(ages)
    on_service = weighted & (arrays.service >= 0)
    on_bundle = weighted & (arrays.bundle >= 0)

    codes = _distinct_codes(arrays.resident[on_service | on_bundle], len(arrays.resident_ids))
    row = np.full(len(arrays.resident_ids), -1, dtype=np.int64)
    row[codes] = np.arange(len(codes))
    n = len(codes)
    n_s, n_b = len(arrays.service_ids), len(arrays.bundle_ids)

    services = _summed(row[arrays.resident[on_service]], arrays.service[on_service],
                       strength[on_service], (n, n_s))
    bundles = _summed(row[arrays.resident[on_bundle]], arrays.bundle[on_bundle],
                      strength[on_bundle], (n, n_b))
    # what each pair's confidence is made of, for the drivers (models/reasons.py)
    s_parts = [_Contributions.of(arrays, on_service, row, arrays.service, strength, False)]
    if params.spread_bundle_events:
        only_bundle = on_bundle & (arrays.service < 0)
        spread = params.spread_matrix(arrays.bundle_services, arrays.bundle_ids,
                                      arrays.service_ids)
        services = sp.csr_matrix(services + _summed(
            row[arrays.resident[only_bundle]], arrays.bundle[only_bundle],
            strength[only_bundle], (n, n_b)) @ spread)
        s_parts.append(_Contributions.spread(arrays, only_bundle, row, strength, spread))
    for matrix in (services, bundles):
        matrix.data = params.confidence(matrix.data).astype(np.float32)
    service_drivers = _Contributions.concat(s_parts).drivers(services)
    bundle_drivers = _Contributions.of(arrays, on_bundle, row, arrays.bundle, strength,
                                       True).drivers(bundles)

    shown, taken = _recommendation_outcomes(arrays, select)
    held_services = _holdings(arrays, select, row, arrays.service, (n, n_s))
    held_bundles = _holdings(arrays, select, row, arrays.bundle, (n, n_b))
    stats = {
        "events_read": arrays.n_events,
        "residents_seen": int(arrays.stats.get("residents_seen", len(arrays.resident_ids))),
        "residents_consenting": int(arrays.consent.sum()),
        "events_used_services": int(on_service.sum()),
        "events_used_bundles": int(on_bundle.sum()),
        "residents_excluded_no_consent": int((~arrays.consent).sum()),
    }
    dataset = Dataset(
        resident_ids=np.asarray(arrays.resident_ids[codes], dtype=str),
        service_ids=arrays.service_ids, bundle_ids=arrays.bundle_ids,
        neighbourhoods=arrays.neighbourhoods,
        services=services, bundles=bundles,
        service_drivers=service_drivers, bundle_drivers=bundle_drivers,
        held_services=held_services, held_bundles=held_bundles,
        neighbourhood=arrays.neighbourhood_codes(codes),
        params=params, as_of=pd.Timestamp(as_of), until=None if until is None
        else pd.Timestamp(until), catalog_version=arrays.catalog_version,
        catalog_fingerprint=arrays.catalog_fingerprint, codes=codes,
        bundle_services=arrays.bundle_services, stats=stats, segments=arrays.segments,
        segment=arrays.segment_codes(codes), bundle_shown=shown, bundle_taken=taken,
    )
    dataset.fingerprint = fingerprint(dataset)
    return dataset


def fingerprint(dataset: Dataset) -> str:
    """Hash of everything a model sees: parameters, catalog, cut-off, residents, matrices.

    Two builds with the same fingerprint train identical models (given a seed), however
    the log files happen to be laid out (compaction, re-ingestion) — the hash is of the
    content, not of file names.
    """
    h = hashlib.sha256()
    header = {
        "params": dataset.params.to_dict(),
        "catalog": dataset.catalog_fingerprint,
        "as_of": dataset.as_of.isoformat(),
        "until": None if dataset.until is None else dataset.until.isoformat(),
        "services": list(dataset.service_ids),
        "bundles": list(dataset.bundle_ids),
        "composition": {b: list(s) for b, s in sorted(dataset.bundle_services.items())},
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    h.update("\n".join(dataset.resident_ids.tolist()).encode())
    h.update(dataset.neighbourhood.tobytes())
    h.update(np.ascontiguousarray(dataset.segment).tobytes())
    for table in (dataset.bundle_shown, dataset.bundle_taken):
        h.update(np.ascontiguousarray(table, dtype=np.float64).tobytes())
    for matrix in (dataset.services, dataset.bundles, dataset.held_services,
                   dataset.held_bundles):
        matrix.sort_indices()
        for part in (matrix.indptr, matrix.indices, matrix.data):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


# --- helpers -----------------------------------------------------------------------------


def _summed(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
            shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR of ``values`` summed per (row, col)."""
    matrix = sp.coo_matrix((values, (rows, cols.astype(np.int32))), shape=shape).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


@dataclass
class _Contributions:
    """Events' shares of pairs' strengths: (row, column, share, driver code) per share."""

    rows: np.ndarray
    cols: np.ndarray
    shares: np.ndarray
    codes: np.ndarray
    ts: np.ndarray

    @classmethod
    def of(cls, arrays: EventArrays, mask: np.ndarray, row: np.ndarray, items: np.ndarray,
           strength: np.ndarray, is_bundle: bool) -> _Contributions:
        """Events counting for their own item (a service, or a bundle)."""
        own = items[mask].astype(np.int64)
        return cls(row[arrays.resident[mask]], own, strength[mask],
                   encode_drivers(arrays.kind[mask], np.full(len(own), is_bundle), own,
                                  arrays.ts[mask] // NS_PER_DAY), arrays.ts[mask])

    @classmethod
    def spread(cls, arrays: EventArrays, mask: np.ndarray, row: np.ndarray,
               strength: np.ndarray, spread: sp.csr_matrix) -> _Contributions:
        """Bundle-only events shared over their bundle's services (the bundle drives)."""
        bundle = arrays.bundle[mask].astype(np.int64)
        counts = np.diff(spread.indptr)[bundle]
        pick = np.repeat(np.arange(len(bundle)), counts)
        starts = np.repeat(spread.indptr[bundle], counts)
        offsets = np.arange(len(pick)) - np.repeat(np.cumsum(counts) - counts, counts)
        where = starts + offsets
        return cls(row[arrays.resident[mask]][pick], spread.indices[where].astype(np.int64),
                   strength[mask][pick] * spread.data[where],
                   encode_drivers(arrays.kind[mask][pick], np.ones(len(pick), bool),
                                  bundle[pick], (arrays.ts[mask] // NS_PER_DAY)[pick]),
                   arrays.ts[mask][pick])

    @classmethod
    def concat(cls, parts: list[_Contributions]) -> _Contributions:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("rows", "cols", "shares", "codes", "ts")))

    def drivers(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Per stored pair of ``matrix`` the code of its largest share (ties: the latest),
        in the matrix's own structure."""
        n_cols = matrix.shape[1]
        keys = self.rows.astype(np.int64) * n_cols + self.cols
        order = np.lexsort((self.ts, self.shares, keys))
        keys, codes = keys[order], self.codes[order]
        last = np.flatnonzero(np.r_[keys[1:] != keys[:-1], True]) if len(keys) else keys
        matrix.sort_indices()
        if len(last) != matrix.nnz:
            raise AssertionError("drivers do not match the confidence matrix's pairs")
        return sp.csr_matrix((codes[last], matrix.indices.copy(), matrix.indptr.copy()),
                             shape=matrix.shape)


def _recommendation_outcomes(arrays: EventArrays, select: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Impressions (``view`` with a recommendation id) and attributed subscriptions per
    bundle of the ``select``-ed events: ``(1 + segments) × bundles`` each, city-wide first
    (every selected resident, whether or not their segment is declared)."""
    n_seg, n_b = len(arrays.segments), len(arrays.bundle_ids)
    out = []
    for kind in ("view", "subscribe"):
        mask = select & arrays.recommended & (arrays.kind == _CODE[kind]) & (arrays.bundle >= 0)
        bundle = arrays.bundle[mask].astype(np.int64)
        segment = arrays.segment_codes(arrays.resident[mask]).astype(np.int64)
        table = np.zeros((1 + n_seg, n_b))
        table[0] = np.bincount(bundle, minlength=n_b)
        known = segment >= 0
        np.add.at(table, (1 + segment[known], bundle[known]), 1.0)
        out.append(table)
    return out[0], out[1]


def _holdings(arrays: EventArrays, select: np.ndarray, row: np.ndarray, items: np.ndarray,
              shape: tuple[int, int]) -> sp.csr_matrix:
    """1 where the latest subscribe/unsubscribe of (row, item) is a subscribe."""
    sub, unsub = _CODE["subscribe"], _CODE["unsubscribe"]
    mask = select & (items >= 0) & ((arrays.kind == sub) | (arrays.kind == unsub))
    mask[mask] &= row[arrays.resident[mask]] >= 0
    r = row[arrays.resident[mask]]
    i = items[mask].astype(np.int64)
    last = _last_index(r * shape[1] + i)
    held = arrays.kind[mask][last] == sub
    rows, cols = r[last][held], i[last][held]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)


def _last_index(keys: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct key (keys in time order)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    return len(keys) - 1 - first_in_reversed


def _ts_ns(column: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a timestamp column, without Python objects."""
    index = pd.DatetimeIndex(pd.to_datetime(column, utc=True))
    return index.as_unit("ns").asi8.astype(np.int64, copy=False)


def _ts_value(moment: pd.Timestamp | Any) -> int:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.as_unit("ns").value)


def _parse_profiles(who: np.ndarray, contexts: np.ndarray, catalog: Catalog) -> pd.DataFrame:
    """Declared attributes of each resident's latest profile event, indexed by code.

    ``who``/``contexts`` are candidates in time order (several per resident possible):
    the last one per resident wins. JSON is parsed once, by Arrow, for the winners only.
    """
    columns = [*PROFILE_FIELDS, "neighbourhood_code", "segment_code"]
    if len(who) == 0:
        return pd.DataFrame(columns=columns, index=pd.Index([], dtype=np.int64))
    last = _last_index(who)
    who, contexts = who[last], contexts[last]
    lines = "\n".join(c if isinstance(c, str) and c.startswith("{") else "{}" for c in contexts)
    table = pajson.read_json(io.BytesIO(lines.encode()),
                             parse_options=pajson.ParseOptions(newlines_in_values=False))
    out = pd.DataFrame(index=pd.Index(who.astype(np.int64)))
    for name in PROFILE_FIELDS:
        if name in table.column_names and not pa.types.is_null(table[name].type):
            out[name] = table[name].to_numpy(zero_copy_only=False)
        else:
            out[name] = None
    out["neighbourhood_code"] = pd.Categorical(
        out["neighbourhood"], categories=list(catalog.neighbourhood_ids)).codes.astype(np.int16)
    # segment = (neighbourhood, age band, household) in core.profile.all_segments order
    age = pd.Categorical(out["age_band"], categories=list(AGE_BANDS)).codes.astype(np.int32)
    household = pd.Categorical(out["household"],
                               categories=list(HOUSEHOLDS)).codes.astype(np.int32)
    nb = out["neighbourhood_code"].to_numpy().astype(np.int32)
    declared = (nb >= 0) & (age >= 0) & (household >= 0)
    out["segment_code"] = np.where(
        declared, (nb * len(AGE_BANDS) + age) * len(HOUSEHOLDS) + household,
        -1).astype(np.int16)
    return out


def _offer_classes(profiles: pd.DataFrame, n_residents: int, catalog: Catalog
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per resident code a class of identical declared profiles, and per class the services
    and bundles serving may offer (by the catalog's own zone and eligibility rules): a city
    has at most a few hundred distinct profiles, whatever its size."""
    def offerable(profile: dict[str, Any]) -> tuple[list[bool], list[bool]]:
        return tuple([available_in(item.zones, profile.get("neighbourhood"))  # type: ignore
                      and eligibility_failure(item.eligibility, profile) is None
                      for item in items] for items in (catalog.services, catalog.bundles))

    classes: dict[tuple[Any, ...], int] = {(): 0}
    rows = [offerable({})]
    offer_class = np.zeros(n_residents, dtype=np.int32)
    if len(profiles):
        fields = profiles[list(PROFILE_FIELDS)].astype(object)
        keys = list(fields.where(fields.notna(), None).itertuples(index=False, name=None))
        for code, key in zip(profiles.index.to_numpy(), keys, strict=True):
            found = classes.get(key)
            if found is None:
                profile = {name: (bool(value) if name in ("student", "low_income") else value)
                           for name, value in zip(PROFILE_FIELDS, key, strict=True)
                           if value is not None}
                found = classes[key] = len(rows)
                rows.append(offerable(profile))
            offer_class[code] = found
    return (offer_class, np.array([r[0] for r in rows], dtype=bool),
            np.array([r[1] for r in rows], dtype=bool))


def _distinct_codes(codes: np.ndarray, size: int) -> np.ndarray:
    """The distinct values of ``codes`` (integers in ``[0, size)``), sorted — what
    ``np.unique`` gives, in O(events + size) instead of a sort of every event."""
    present = np.zeros(size, dtype=bool)
    present[codes] = True
    return np.flatnonzero(present)
