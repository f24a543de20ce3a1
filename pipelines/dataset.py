"""Training data: the event log → resident × service and resident × bundle confidences.

Two steps, so one read of the log serves the hold-out split *and* the final fit:

1. :func:`load_event_arrays` scans the log column by column in chunks of whole dates
   (:func:`bouquet.core.eventlog.scan_events`: de-duplicated, erasures applied, the rows
   of ``read_events``) and turns it into compact numeric columns — resident codes, type
   codes, catalog indices, nanosecond timestamps, 17 bytes an event — plus each resident's
   current state: consent (the personalisation ``consent`` event received last —
   ``ingested_at``, not the client's time stamp — has value 1; no consent event means *not*
   consenting, personalisation is opt-in; contact consent, for outreach, is another purpose
   and plays no part) and declared attributes (per attribute, the latest ``profile`` event
   declaring it). :meth:`EventArrays.from_frame` does the same for events already in a
   DataFrame.
2. :func:`build_dataset` selects the events before a cut-off, from consenting residents,
   and builds the matrices with ``scipy.sparse.coo_matrix`` (duplicates summed): no Python
   loop runs per event, and the per-event temporaries (strengths, the drivers' sorts) are
   made a block at a time, so memory stays near the arrays' own size.

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
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import scipy.sparse as sp

from bouquet.core.catalog import (
    AGE_BANDS,
    HOUSEHOLDS,
    Catalog,
    available_in,
    eligibility_failure,
)
from bouquet.core.eventlog import (
    SCAN_CHUNK_EVENTS,
    EventChunk,
    EventLog,
    date_chunks,
    scan_events,
)
from bouquet.core.events import EventType
from bouquet.core.profile import all_segments
from bouquet.core.settings import Settings
from bouquet.models.cadence import offer_use_rates
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
        """Encode events as returned by ``read_events(columns=EVENT_COLUMNS)`` (each once;
        put in time order here if they are not; ``ingested_at`` and ``recommendation_id``
        may be absent from events built by hand)."""
        columns = [c for c in EVENT_COLUMNS
                   if c in frame.columns or c not in ("ingested_at", "recommendation_id")]
        table = pa.Table.from_pandas(frame[columns], preserve_index=False)
        encoder = _Encoder(catalog, capacity=table.num_rows)
        encoder.add(EventChunk.of(table))
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
    #: Use events per holder per week of each bundle, and per user per week of each
    #: service, among consenting residents before the cut-off
    #: (:func:`bouquet.models.cadence.offer_use_rates`): serving's cadence weights and the
    #: outreach planner's usage frequency.
    bundle_use_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    service_use_rate: np.ndarray = field(default_factory=lambda: np.zeros(0))
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
                      chunk_events: int = SCAN_CHUNK_EVENTS) -> EventArrays:
    """Read the event log (only the columns training needs) and encode it.

    The log is scanned in runs of whole event dates of about ``chunk_events`` raw rows
    (:func:`~bouquet.core.eventlog.scan_events`: the rows and order of ``read_events``,
    found from the event ids, ingestion times, times and residents alone), and each column
    is read on its own, as Arrow arrays, and turned into numbers before the next: strings
    never become Python objects and only one string column of one chunk is held at a time.
    The numeric columns are filled into arrays sized from the Parquet footers, so the whole
    log is never held twice.
    """
    root = settings.event_log_path
    if not root.is_dir():
        raise ValueError(f"there is no event log at {root}: check BOUQUET_EVENT_LOG_DIR / "
                         "BOUQUET_STATE_DIR, or ingest events first (`bouquet ingest`)")
    started = time.perf_counter()
    plan = date_chunks(EventLog(root), chunk_events)
    encoder = _Encoder(catalog, capacity=sum(rows for *_, rows in plan))
    for chunk in scan_events(root, chunks=plan):
        encoder.add(chunk)
        del chunk  # before the next is read
        # Arrow's allocator keeps freed pages for reuse; each chunk's strings are gone
        # once encoded, so give them back rather than carry them into training
        pa.default_memory_pool().release_unused()
    arrays = encoder.finish()
    pa.default_memory_pool().release_unused()
    if arrays.n_events == 0:
        raise ValueError(f"the event log at {root} is empty: nothing to train on")
    log.info("read %d events of %d residents (%d consenting) in %.1f s",
             arrays.n_events, len(arrays.resident_ids), arrays.stats["residents_consenting"],
             time.perf_counter() - started)
    return arrays


class _Encoder:
    """Turns successive :class:`~bouquet.core.eventlog.EventChunk` s (in time order) into
    one :class:`EventArrays`, with one resident code space across chunks (codes in order of
    first appearance)."""

    _DTYPES = {"resident": np.int32, "kind": np.int8, "service": np.int16,
               "bundle": np.int16, "ts": np.int64, "recommended": np.bool_}

    def __init__(self, catalog: Catalog, capacity: int) -> None:
        self.catalog = catalog
        self.ids: list[pa.Array] = []  # resident ids by code, in parts
        self.known = pa.array([], pa.string())  # the parts concatenated (lookups)
        self.n_residents = 0
        self.columns = {name: np.empty(capacity, dtype)
                        for name, dtype in self._DTYPES.items()}
        self.filled = 0
        self.consent_who: list[np.ndarray] = []
        self.consent_value: list[np.ndarray] = []
        self.consent_received: list[np.ndarray] = []
        self.profile_who: list[np.ndarray] = []
        self.profile_context: list[pa.Array] = []
        self.stats = {"events": 0, "unknown_service_events": 0, "unknown_bundle_events": 0,
                      "unknown_type_events": 0}

    def _resident_codes(self, chunk: EventChunk) -> np.ndarray:
        """Global code of each of the chunk's distinct residents; new residents get the
        next codes in the order they first appear among the chunk's events."""
        codes = np.full(len(chunk.residents), -1, dtype=np.int32)
        if self.n_residents:
            codes = pc.fill_null(pc.index_in(chunk.residents, value_set=self.known),
                                 -1).to_numpy().astype(np.int32)
        if (codes < 0).any():
            appearing = pd.unique(chunk.resident[chunk.rows])
            new = appearing[codes[appearing] < 0]
            codes[new] = self.n_residents + np.arange(len(new), dtype=np.int32)
            self.n_residents += len(new)
            self.ids.append(chunk.residents.take(pa.array(new)))
            self.known = pa.concat_arrays(self.ids)
        return codes

    def _put(self, name: str, values: np.ndarray) -> None:
        column = self.columns[name]
        end = self.filled + len(values)
        if end > len(column):  # more events than the footers announced: grow
            grown = np.empty(max(end, 2 * len(column)), column.dtype)
            grown[:self.filled] = column[:self.filled]
            self.columns[name] = column = grown
        column[self.filled:end] = values

    def add(self, chunk: EventChunk) -> None:
        rows = chunk.rows
        if not len(rows):
            return
        catalog = self.catalog
        resident = self._resident_codes(chunk)[chunk.resident[rows]]
        self._put("resident", resident)
        kind, unknown = _codes_in(chunk.column("type"), TYPES, rows)
        self._put("kind", kind.astype(np.int8))
        self.stats["unknown_type_events"] += unknown
        for name, ids in (("service", catalog.service_ids), ("bundle", catalog.bundle_ids)):
            codes, unknown = _codes_in(chunk.column(f"{name}_id"), ids, rows)
            self._put(name, codes.astype(np.int16))
            self.stats[f"unknown_{name}_events"] += unknown
        self._put("ts", chunk.ts[rows])
        self._put("recommended", _recommended(chunk, rows))
        self.filled += len(rows)
        self.stats["events"] += len(rows)
        is_consent = kind == _CODE["consent"]
        is_profile = kind == _CODE["profile"]
        if is_consent.any():
            context = chunk.column("context").cast(pa.string())
            # Personalisation consent only: contact consent (outreach) is another purpose,
            # and its events say so in their context (written compact by the intake and
            # the consumer).
            contact = pc.fill_null(pc.match_substring(
                context.take(pa.array(rows[is_consent])), '"purpose":"contact"'), False)
            is_consent[is_consent] = ~contact.to_numpy(zero_copy_only=False)
        if is_consent.any():
            self.consent_who.append(resident[is_consent])
            value = chunk.column("value").cast(pa.float64())
            self.consent_value.append(
                pc.fill_null(value, np.nan).to_numpy()[rows[is_consent]])
            # consent takes effect in order of receipt (ingested_at), not of the time stamp
            # the client wrote; events without it (built by hand) keep time order
            self.consent_received.append(_received_ns(chunk, rows[is_consent]))
        if is_profile.any():
            # every profile event: each sets only the attributes it carries (as ingestion
            # writes the profile hash), so a later one may leave earlier attributes standing
            self.profile_who.append(resident[is_profile])
            self.profile_context.append(chunk.full_context(rows[is_profile]))

    def finish(self) -> EventArrays:
        catalog = self.catalog
        resident, kind, service, bundle, ts, recommended = (
            self.columns[name][:self.filled] for name in self._DTYPES)
        n_res = self.n_residents
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
            pa.concat_arrays(self.profile_context) if self.profile_context
            else pa.array([], pa.string()), catalog)
        offer_class, offerable_services, offerable_bundles = _offer_classes(profiles, n_res,
                                                                            catalog)
        stats = {**self.stats, "residents_seen": n_res,
                 "residents_consenting": int(consent.sum())}
        ids = pa.concat_arrays(self.ids) if self.ids else pa.array([], pa.string())
        return EventArrays(
            resident_ids=ids.to_numpy(zero_copy_only=False).astype(object, copy=False),
            resident=resident, kind=kind, service=service, bundle=bundle, ts=ts,
            recommended=recommended, consent=consent, profiles=profiles,
            offer_class=offer_class, offerable_services=offerable_services,
            offerable_bundles=offerable_bundles,
            service_ids=tuple(catalog.service_ids), bundle_ids=tuple(catalog.bundle_ids),
            neighbourhoods=tuple(catalog.neighbourhood_ids), catalog_version=catalog.version,
            catalog_fingerprint=catalog.fingerprint,
            bundle_services={b.id: tuple(b.services) for b in catalog.bundles}, stats=stats,
        )


def _codes_in(values: pa.Array, names: tuple[str, ...] | list[str],
              rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of each selected row's value in ``names`` (-1: missing or unknown), and how
    many selected rows name something not in ``names``."""
    values = values.cast(pa.string())
    found = pc.index_in(values, value_set=pa.array(list(names), pa.string()))
    codes = pc.fill_null(found, -1).to_numpy()[rows]
    unknown = int(((codes < 0) & values.is_valid().to_numpy(zero_copy_only=False)[rows]).sum())
    return codes, unknown


def _has_column(chunk: EventChunk, name: str) -> bool:
    source = chunk.source
    return name in (source.column_names if isinstance(source, pa.Table)
                    else source.schema.names)


def _recommended(chunk: EventChunk, rows: np.ndarray) -> np.ndarray:
    """Whether each selected row carries a recommendation id (False for every row when the
    events have no such column): only the column's validity is kept, never its strings."""
    if not _has_column(chunk, "recommendation_id"):
        return np.zeros(len(rows), dtype=bool)
    valid = chunk.column("recommendation_id").is_valid()
    return valid.to_numpy(zero_copy_only=False)[rows]


def _received_ns(chunk: EventChunk, rows: np.ndarray) -> np.ndarray:
    """When each selected row was received (``ingested_at``, ns since the epoch, int64 min
    when missing); its event time when the events carry no receipt time (built by hand)."""
    if not _has_column(chunk, "ingested_at"):
        return chunk.ts[rows]
    times = chunk.column("ingested_at")
    if not pa.types.is_timestamp(times.type):
        times = times.cast(pa.timestamp("ns", tz="UTC"))
    times = times.cast(pa.timestamp("ns", tz=times.type.tz))
    missing = np.iinfo(np.int64).min
    return pc.fill_null(times.cast(pa.int64()), missing).to_numpy()[rows]


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
            last = np.max(arrays.ts, where=select, initial=0) if select.any() else 0
            as_of = pd.Timestamp(int(last), tz="UTC")
    weighted, strength = _strengths(arrays, params, select, _ts_value(as_of))
    on_service = weighted & (arrays.service >= 0)
    on_bundle = weighted & (arrays.bundle >= 0)

    codes = _distinct_codes(arrays.resident[on_service | on_bundle], len(arrays.resident_ids))
    row = np.full(len(arrays.resident_ids), -1, dtype=np.int32)
    row[codes] = np.arange(len(codes), dtype=np.int32)
    n = len(codes)
    n_s, n_b = len(arrays.service_ids), len(arrays.bundle_ids)

    services = _summed(row[arrays.resident[on_service]], arrays.service[on_service],
                       strength[on_service], (n, n_s))
    bundles = _summed(row[arrays.resident[on_bundle]], arrays.bundle[on_bundle],
                      strength[on_bundle], (n, n_b))
    only_bundle = spread = None
    if params.spread_bundle_events:
        only_bundle = on_bundle & (arrays.service < 0)
        spread = params.spread_matrix(arrays.bundle_services, arrays.bundle_ids,
                                      arrays.service_ids)
        services = sp.csr_matrix(services + _summed(
            row[arrays.resident[only_bundle]], arrays.bundle[only_bundle],
            strength[only_bundle], (n, n_b)) @ spread)
    for matrix in (services, bundles):
        matrix.data = params.confidence(matrix.data).astype(np.float32)
    service_drivers = _Drivers(arrays, row, strength, on_service, False, only_bundle,
                               spread).of(services)
    bundle_drivers = _Drivers(arrays, row, strength, on_bundle, True).of(bundles)

    shown, taken = _recommendation_outcomes(arrays, select)
    held_services = _holdings(arrays, select, row, arrays.service, (n, n_s))
    held_bundles = _holdings(arrays, select, row, arrays.bundle, (n, n_b))
    bundle_rate, service_rate = _use_rates(arrays, select, held_bundles, _ts_value(as_of))
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
        bundle_use_rate=bundle_rate, service_use_rate=service_rate,
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
    for table in (dataset.bundle_shown, dataset.bundle_taken, dataset.bundle_use_rate,
                  dataset.service_use_rate):
        h.update(np.ascontiguousarray(table, dtype=np.float64).tobytes())
    for matrix in (dataset.services, dataset.bundles, dataset.held_services,
                   dataset.held_bundles):
        matrix.sort_indices()
        for part in (matrix.indptr, matrix.indices, matrix.data):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


# --- helpers -----------------------------------------------------------------------------

#: Events whose strengths are computed at once (the temporaries are ~40 bytes an event).
EVENT_BLOCK = 2_000_000


def _strengths(arrays: EventArrays, params: ConfidenceRule, select: np.ndarray,
               now: int) -> tuple[np.ndarray, np.ndarray]:
    """(selected events of a weighing type, weight × decay of each event — 0 for the
    others); an event weighs its type's weight, or the rule's impression weight when it is
    a recommended view (an impression). Computed a block of events at a time, element by
    element, so the result does not depend on the block size."""
    weights = params.weight_vector(TYPES)
    impressions = params.impression_vector(TYPES)
    weighted = select & (arrays.kind >= 0)
    strength = np.zeros(arrays.n_events, dtype=np.float64)
    for lo in range(0, arrays.n_events, EVENT_BLOCK):
        part = slice(lo, lo + EVENT_BLOCK)
        kind = np.maximum(arrays.kind[part], 0)
        weight = np.where(arrays.recommended[part], impressions[kind], weights[kind])
        mine = weighted[part]  # a view: refined in place
        mine &= weight > 0
        at = np.flatnonzero(mine)
        ages = (now - arrays.ts[part][at]) / NS_PER_DAY
        strength[part][at] = weight[at] * params.decay(ages)
    return weighted, strength



def _summed(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
            shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR of ``values`` summed per (row, col)."""
    matrix = sp.coo_matrix((values, (rows, cols.astype(np.int32))), shape=shape).tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


#: Contributions (event shares of pairs) sorted at once when finding drivers: the peak
#: memory of :class:`_Drivers` is about 50 bytes times this, whatever the log's size.
DRIVER_BLOCK = 2_000_000


@dataclass
class _Drivers:
    """Per stored pair of a confidence matrix, the event that drove it (models/reasons.py):
    among the events' shares of the pair's strength, the largest (ties: the latest event,
    then a bundle-wide event shared over the services after the service's own events).

    Events count for their own item (``own`` events: ``service``, or ``bundle`` when
    ``is_bundle``) or, for services, as a bundle-only event shared over the bundle's
    services (``shared`` events and the ``spread`` matrix). The shares are sorted in blocks
    of consecutive residents of about :data:`DRIVER_BLOCK` shares — a pair's shares are
    all its resident's — and each share carries only its event's position: the driver
    code is packed for the winners alone.
    """

    arrays: EventArrays
    row: np.ndarray  # matrix row of each resident code (-1: none)
    strength: np.ndarray  # per event
    own: np.ndarray  # bool per event
    is_bundle: bool
    shared: np.ndarray | None = None  # bool per event
    spread: sp.csr_matrix | None = None

    def of(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        """Driver codes in ``matrix``'s own structure."""
        arrays = self.arrays
        block = max(DRIVER_BLOCK, 1)
        n_codes = len(arrays.resident_ids)
        shares = np.bincount(arrays.resident[self.own], minlength=n_codes)
        if self.shared is not None and self.spread is not None:
            fan = np.diff(self.spread.indptr)[arrays.bundle[self.shared]]
            shares += np.bincount(arrays.resident[self.shared], weights=fan,
                                  minlength=n_codes).astype(np.int64)
        # residents' blocks: consecutive codes (so consecutive rows) of ~`block` shares
        first = np.cumsum(shares) - shares
        bounds = np.flatnonzero(np.diff(first // block, prepend=-1)) \
            if n_codes else np.zeros(0, np.int64)
        winners = [self._block(lo, hi, matrix.shape[1])
                   for lo, hi in zip(bounds, [*bounds[1:], n_codes], strict=True)]
        codes = np.concatenate(winners) if winners else np.zeros(0, np.int64)
        matrix.sort_indices()
        if len(codes) != matrix.nnz:
            raise AssertionError("drivers do not match the confidence matrix's pairs")
        return sp.csr_matrix((codes, matrix.indices.copy(), matrix.indptr.copy()),
                             shape=matrix.shape)

    def _block(self, lo: int, hi: int, n_cols: int) -> np.ndarray:
        """Driver codes of the pairs of residents with codes in ``[lo, hi)``, by pair."""
        arrays = self.arrays
        mine = (arrays.resident >= lo) & (arrays.resident < hi)
        own = np.flatnonzero(self.own & mine)
        items = arrays.bundle if self.is_bundle else arrays.service
        keys = [self.row[arrays.resident[own]].astype(np.int64) * n_cols + items[own]]
        weights = [self.strength[own]]
        source = [own * 2]  # event position, low bit: shared over a bundle's services
        if self.shared is not None and self.spread is not None:
            spread = self.spread
            events = np.flatnonzero(self.shared & mine)
            bundle = arrays.bundle[events].astype(np.int64)
            counts = np.diff(spread.indptr)[bundle]
            pick = np.repeat(np.arange(len(events)), counts)
            offsets = np.arange(len(pick)) - np.repeat(np.cumsum(counts) - counts, counts)
            where = np.repeat(spread.indptr[bundle], counts) + offsets
            keys.append(self.row[arrays.resident[events]][pick].astype(np.int64) * n_cols
                        + spread.indices[where])
            weights.append(self.strength[events][pick] * spread.data[where])
            source.append(events[pick] * 2 + 1)
        key, weight, src = (np.concatenate(parts) for parts in (keys, weights, source))
        order = np.lexsort((arrays.ts[src >> 1], weight, key))
        key = key[order]
        last = np.flatnonzero(np.r_[key[1:] != key[:-1], True]) if len(key) else key
        event, shared = src[order[last]] >> 1, (src[order[last]] & 1).astype(bool)
        bundle_driven = shared | self.is_bundle
        item = np.where(bundle_driven, arrays.bundle[event], items[event])
        return encode_drivers(arrays.kind[event], bundle_driven, item,
                              arrays.ts[event] // NS_PER_DAY)


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
    r = row[arrays.resident[mask]].astype(np.int64)
    i = items[mask].astype(np.int64)
    last = _last_index(r * shape[1] + i)
    held = arrays.kind[mask][last] == sub
    rows, cols = r[last][held], i[last][held]
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)


def _use_rates(arrays: EventArrays, select: np.ndarray, held_bundles: sp.csr_matrix,
               now: int) -> tuple[np.ndarray, np.ndarray]:
    """How often an offer is used by those who have it: the selected ``use`` events that
    carry each bundle per holder at the cut-off, and those that name each service per
    resident who used it, per week since the first use event (the log's uses may start
    long after its subscriptions). One clock for both, so the planner may compare a
    bundle's rate with a service's."""
    used = select & (arrays.kind == _CODE["use"])
    weeks = (now - int(arrays.ts[used].min())) / (7 * NS_PER_DAY) if used.any() else 0.0
    return offer_use_rates(arrays.resident[used], arrays.bundle[used], arrays.service[used],
                           np.asarray(held_bundles.sum(axis=0)).ravel(),
                           len(arrays.service_ids), weeks)


def _last_index(keys: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each distinct key (keys in time order)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    return len(keys) - 1 - first_in_reversed


def _ts_value(moment: pd.Timestamp | Any) -> int:
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.as_unit("ns").value)


def _parse_profiles(who: np.ndarray, contexts: pa.Array, catalog: Catalog) -> pd.DataFrame:
    """Declared attributes of each resident, indexed by code: per attribute, the value of
    the latest profile event that declares it (a profile event sets only the attributes it
    carries, the rule of the real-time profile hash).

    ``who``/``contexts`` are every profile event in time order (several per resident
    possible). JSON is parsed once, by Arrow.
    """
    columns = [*PROFILE_FIELDS, "neighbourhood_code", "segment_code"]
    if len(who) == 0:
        return pd.DataFrame(columns=columns, index=pd.Index([], dtype=np.int64))
    contexts = contexts.cast(pa.string())
    # one JSON object per line, built in Arrow: the contexts never become Python strings
    objects = pc.if_else(pc.fill_null(pc.starts_with(contexts, "{"), False), contexts, "{}")
    lines = pc.binary_join_element_wise(objects, "", "\n")
    _, offsets, data = lines.buffers()
    bounds = np.frombuffer(offsets, np.int32)[lines.offset:lines.offset + len(lines) + 1]
    text = data[bounds[0]:bounds[-1]]
    table = pajson.read_json(pa.BufferReader(text),
                             parse_options=pajson.ParseOptions(newlines_in_values=False))
    residents = np.unique(who)
    out = pd.DataFrame(index=pd.Index(residents.astype(np.int64)))
    for name in PROFILE_FIELDS:
        values = np.full(len(residents), None, dtype=object)
        if name in table.column_names and not pa.types.is_null(table[name].type):
            column = table[name]
            given = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
            last = given[_last_index(who[given])]
            at = np.searchsorted(residents, who[last])
            taken = column.take(pa.array(last)).combine_chunks()
            if pa.types.is_string(taken.type):
                # text attributes as categories: a few distinct values for a million residents
                encoded = taken.dictionary_encode()
                codes = np.full(len(residents), -1, dtype=np.int32)
                codes[at] = encoded.indices.to_numpy(zero_copy_only=False)
                out[name] = pd.Categorical.from_codes(
                    codes, categories=encoded.dictionary.to_pylist())
                continue
            values[at] = taken.to_numpy(zero_copy_only=False)
        out[name] = values
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
