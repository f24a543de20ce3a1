"""Simulated events as columns of numpy arrays, and their conversion to the contract.

The simulator never builds one Python object per event: it fills :class:`EventColumns`
(integer codes for type, channel, service and bundle; microsecond UTC timestamps) and
converts a whole week at once to an Arrow table in the event-log layout
(:data:`bouquet.core.eventlog.SCHEMA`) with pyarrow compute kernels. Only the Kafka path,
which is rate-limited anyway, turns rows into JSON dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.cadence import CADENCE_CLASSES, cadence_class
from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import DECLARED_COLUMNS, SCHEMA
from bouquet.core.recommendation import RecommendationIds, development_ids

#: Type codes (index into this tuple) used in :attr:`EventColumns.type`.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "subscribe", "use", "pay", "rate", "dismiss",
                                "unsubscribe", "erase", "consent", "profile")
T = {name: code for code, name in enumerate(EVENT_TYPES)}
#: Cadence classes (:mod:`bouquet.core.cadence`) in the order of :data:`TYPE_CLASS` codes.
CADENCE_CLASS_NAMES: tuple[str, ...] = tuple(CADENCE_CLASSES)
#: Cadence class code of each type code (index into CADENCE_CLASS_NAMES; -1: administrative).
TYPE_CLASS = np.array([CADENCE_CLASS_NAMES.index(c) if (c := cadence_class(t)) else -1
                       for t in EVENT_TYPES], np.int8)
CHANNELS: tuple[str, ...] = ("app", "web", "kiosk", "desk", "phone", "partner", "system")
C = {name: code for code, name in enumerate(CHANNELS)}


def mix64(*parts: np.ndarray | int) -> np.ndarray:
    """A SplitMix64-style hash of integer columns (deterministic, vectorised)."""
    acc = np.zeros(np.broadcast(*[np.asarray(p) for p in parts]).shape, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + np.asarray(part).astype(np.uint64)
            acc ^= acc >> np.uint64(30)
            acc *= np.uint64(0xBF58476D1CE4E5B9)
            acc ^= acc >> np.uint64(27)
            acc *= np.uint64(0x94D049BB133111EB)
            acc ^= acc >> np.uint64(31)
    return acc


@dataclass
class EventColumns:
    """A batch of simulated events, one array per field (all the same length).

    ``service``/``bundle`` are catalog indexes or -1; ``value`` is NaN when absent;
    ``rec_week`` is the week whose recommendation the event answers (-1: none);
    ``context`` is an index into the profile-class contexts (-1: no context).
    """

    resident: np.ndarray  # int32 resident row
    type: np.ndarray  # int8 code in EVENT_TYPES
    service: np.ndarray  # int16
    bundle: np.ndarray  # int16
    ts: np.ndarray  # int64 microseconds since the epoch, UTC
    channel: np.ndarray  # int8 code in CHANNELS
    value: np.ndarray  # float64
    rec_week: np.ndarray  # int16
    context: np.ndarray  # int32

    @classmethod
    def empty(cls) -> EventColumns:
        return cls.build(np.zeros(0, np.int32), 0, ts=np.zeros(0, np.int64), channel=0)

    @classmethod
    def build(cls, resident: np.ndarray, type_code: int | np.ndarray, *, ts: np.ndarray,
              channel: int | np.ndarray, service: int | np.ndarray = -1,
              bundle: int | np.ndarray = -1, value: float | np.ndarray = np.nan,
              rec_week: int | np.ndarray = -1, context: int | np.ndarray = -1) -> EventColumns:
        n = len(resident)

        def col(x: Any, dtype: Any) -> np.ndarray:
            return np.broadcast_to(np.asarray(x, dtype), (n,)).astype(dtype, copy=True)

        return cls(col(resident, np.int32), col(type_code, np.int8), col(service, np.int16),
                   col(bundle, np.int16), col(ts, np.int64), col(channel, np.int8),
                   col(value, np.float64), col(rec_week, np.int16), col(context, np.int32))

    def __len__(self) -> int:
        return len(self.resident)

    @classmethod
    def concat(cls, parts: Sequence[EventColumns]) -> EventColumns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*[np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)])

    def take(self, index: np.ndarray) -> EventColumns:
        return EventColumns(*[getattr(self, f.name)[index] for f in fields(self)])

    def slice(self, lo: int, hi: int) -> EventColumns:
        """Rows ``lo:hi`` (views, no copy)."""
        return EventColumns(*[getattr(self, f.name)[lo:hi] for f in fields(self)])

    def day_chunks(self, max_rows: int) -> list[tuple[int, int]]:
        """(lo, hi) row ranges of a time-sorted batch, cut only between UTC days, each at
        most ``max_rows`` long unless a single day is longer."""
        day = self.ts // (86_400 * 1_000_000)
        starts = np.flatnonzero(np.diff(day)) + 1
        cuts = [0]
        for start in starts.tolist():
            if start - cuts[-1] >= max_rows:
                cuts.append(start)
        return list(zip(cuts, [*cuts[1:], len(self)], strict=True)) if len(self) else []

    def sorted(self) -> EventColumns:
        """Ordered by time, then resident (stable): per-resident order for Kafka."""
        return self.take(np.lexsort((self.resident, self.ts)))


@dataclass(frozen=True)
class Vocabulary:
    """What turns codes back into strings: ids, catalog entries, recommendation tags."""

    resident_ids: pa.Array  # string, one per resident row
    service_ids: pa.Array
    bundle_ids: pa.Array
    contexts: pa.Array  # profile-class context JSON
    event_prefix: str  # run tag, e.g. "s3f2a9c1d-"
    seed: int
    rec_tags: dict[int, str]  # week -> "<model_version>.<variant>." of the policy shown
    #: week -> resident row -> id given by the policy for the whole answer, or per bundle
    #: index (an answer whose items carry their own ids, e.g. an explored slot)
    rec_ids: dict[int, dict[int, str | dict[int, str]]]
    #: mints the ids of in-process policies (signed, as the API's: core/recommendation.py)
    minter: RecommendationIds = field(default_factory=development_ids)

    @classmethod
    def build(cls, resident_ids: np.ndarray, catalog: Catalog, contexts: list[str],
              run_tag: str, seed: int) -> Vocabulary:
        return cls(pa.array(resident_ids.astype(str), pa.string()),
                   pa.array(catalog.service_ids, pa.string()),
                   pa.array(catalog.bundle_ids, pa.string()),
                   pa.array(contexts, pa.string()), f"s{run_tag}-", seed, {}, {})

    def recommendation_ids(self, resident: np.ndarray, week: np.ndarray,
                           bundle: np.ndarray | None = None) -> pa.Array:
        """``<model_version>.<variant>.<token>`` per event, null where ``week`` < 0; an id
        given per item is looked up by the event's ``bundle``."""
        if not (week >= 0).any():
            return pa.nulls(len(resident), pa.string())
        out = np.full(len(resident), None, object)
        for w in np.unique(week[week >= 0]):
            mask = week == w
            given = self.rec_ids.get(int(w))
            if given is not None:
                where = np.nonzero(mask)[0]
                items = bundle[where] if bundle is not None else np.full(len(where), -1)
                out[where] = [_given_id(given.get(int(r)), int(b))
                              for r, b in zip(resident[where], items, strict=True)]
                continue
            tag = self.rec_tags.get(int(w))
            if tag is None:
                continue
            model_version, variant, _ = tag.split(".")
            out[mask] = [self.minter.mint(model_version, variant, nonce=int(n)) for n in
                         mix64(self.seed, 0x5EC, int(w), resident[mask])]
        return pa.array(out, pa.string())


def _given_id(found: str | dict[int, str] | None, bundle: int) -> str | None:
    if isinstance(found, dict):
        return found.get(bundle)
    return found


def _decode(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """Small integer codes to strings without a Python object per row."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                          pa.array(names)).cast(pa.string())


def _take_or_null(dictionary: pa.Array, codes: np.ndarray) -> pa.Array:
    mask = codes < 0
    return dictionary.take(pa.array(np.where(mask, 0, codes), pa.int32(), mask=mask))


def to_arrow(events: EventColumns, vocab: Vocabulary, *, first_seq: int = 0) -> pa.Table:
    """The events in :data:`bouquet.core.eventlog.SCHEMA` layout (``ingested_at`` is null:
    :meth:`bouquet.core.eventlog.EventLog.append` stamps it).

    Event ids are ``s<run tag>-<sequence>``: deterministic for a given run (a re-run
    writes the same ids, so a second ingestion de-duplicates), unique within it.
    """
    n = len(events)
    seq = pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64))
    event_id = pc.binary_join_element_wise(vocab.event_prefix, pc.cast(seq, pa.string()), "")
    value_mask = np.isnan(events.value)
    columns = {
        "event_id": event_id,
        "resident_id": vocab.resident_ids.take(pa.array(events.resident, pa.int32())),
        "type": _decode(events.type, EVENT_TYPES),
        "service_id": _take_or_null(vocab.service_ids, events.service),
        "bundle_id": _take_or_null(vocab.bundle_ids, events.bundle),
        "ts": pa.array(events.ts, pa.timestamp("us", tz="UTC")),
        "channel": _decode(events.channel, CHANNELS),
        "value": pa.array(np.where(value_mask, 0.0, events.value), pa.float64(),
                          mask=value_mask),
        "recommendation_id": vocab.recommendation_ids(events.resident, events.rec_week,
                                                      events.bundle),
        "context": _take_or_null(vocab.contexts, events.context),
        "schema_version": pa.array(np.ones(n, np.int16)),
        "ingested_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
        # a profile's declared attributes stay in `context`; the log's writer types them
        **{name: pa.nulls(n, SCHEMA.field(name).type) for name in DECLARED_COLUMNS},
    }
    return pa.table(columns, schema=SCHEMA)


def table_to_payloads(table: pa.Table) -> Iterator[dict[str, Any]]:
    """Contract JSON dicts (as :func:`bouquet.core.events.parse_event` reads them) from an
    event-log table; used by the Kafka path and by validation tests."""
    columns = ["event_id", "resident_id", "type", "service_id", "bundle_id", "ts", "channel",
               "value", "recommendation_id", "context"]
    for batch in table.select(columns).to_batches(max_chunksize=8192):
        rows = batch.to_pydict()
        for i in range(batch.num_rows):
            payload: dict[str, Any] = {"schema_version": 1}
            for name in columns:
                value = rows[name][i]
                if value is None:
                    continue
                if name == "ts":
                    value = value.isoformat()
                elif name == "context":
                    value = json.loads(value)
                payload[name] = value
            yield payload
