"""Turning Kafka records into one ingestion batch: validate, de-duplicate, lay out.

This is the consumer's hot path (every record passes here once), so it builds the three
outputs of a batch directly instead of going through intermediate objects:

* columns of the event-log table (:data:`bouquet.core.eventlog.COLUMNS`), to become one
  Arrow table per batch;
* the flat argument list of the Redis batch script (:mod:`bouquet.streaming.state`);
* dead letters (original bytes + reason) for the dead-letter topic.

Validation is exactly :func:`bouquet.core.events.parse_event` followed by
:func:`bouquet.core.events.check_against_catalog`, so the reason codes are the shared
ones; a record that fails, or that trips an unexpected error, becomes a dead letter and
the batch goes on.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import SCHEMA
from bouquet.core.events import (
    CONTACT_TYPES,
    EVENT_ID_RE,
    ID_RE,
    MAX_CONTEXT_BYTES,
    MAX_CONTEXT_DEPTH,
    REFERENCE_RE,
    Channel,
    EventRejected,
    EventType,
    InteractionEvent,
    _context_depth,
    _personal_data_in,
    check_against_catalog,
    parse_event,
)
from bouquet.core.keys import Keys
from bouquet.core.recommendation import parse_recommendation_id
from bouquet.streaming.state import FUNNEL_STAGES, PROFILE_BOOLEANS

log = logging.getLogger(__name__)

#: Reason codes the consumer adds to those of ``parse_event`` / ``check_against_catalog``.
REASON_EMPTY = "empty_message"
REASON_INTERNAL = "internal_error"

_LOG_COLUMNS = ("event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
                "channel", "value", "recommendation_id", "context", "schema_version")


@dataclass
class DeadLetter:
    """A record that cannot be ingested, with where it came from and why."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


@dataclass
class Batch:
    """What one flush writes: log columns, Redis script slots, dead letters, offsets."""

    columns: dict[str, list[Any]] = field(default_factory=lambda: {c: [] for c in _LOG_COLUMNS})
    slots: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: (topic, partition) → next offset to commit (last offset in the batch + 1)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: (topic, partition) → first offset in the batch (where to rewind if it is dropped)
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    #: produce timestamps (ms) of the valid events, for the produce→visible delay
    produced_ms: list[int] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    records: int = 0
    in_batch_duplicates: int = 0
    started: float = 0.0

    @property
    def events(self) -> int:
        return len(self.columns["event_id"])

    def table(self) -> pa.Table:
        """The valid events as an event-log Arrow table (``ingested_at`` left to the log)."""
        return pa.table({name: pa.array(self.columns[name], SCHEMA.field(name).type)
                         for name in _LOG_COLUMNS})


# --- the fast path ---------------------------------------------------------------------
# Most events are plain: ids and enums of the expected types, a small context or none.
# For those, a few dict look-ups and compiled regexes (and core.events' own context
# checks) replace the pydantic model (3-4x faster); any event the fast path is not sure
# about — a profile, an unusual type, a failed check —
# goes to parse_event, which alone decides rejections and their reasons. The fast path
# only *accepts* what parse_event accepts, with the same values (property-tested in
# tests/streaming/test_ingest_batch.py).
_FAST_FIELDS = frozenset({"schema_version", "event_id", "resident_id", "type", "service_id",
                          "bundle_id", "ts", "channel", "value", "recommendation_id",
                          "context"})
_EVENT_ID = re.compile(EVENT_ID_RE).fullmatch
_RESIDENT = re.compile(ID_RE).fullmatch
_TARGET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$").fullmatch
_REFERENCE = re.compile(REFERENCE_RE).fullmatch
_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
                 r"(Z|[+-][0-9]{2}:[0-9]{2})").fullmatch
_TYPES = {t.value: t for t in EventType if t.value != "profile"}
_CHANNELS = {c.value: c for c in Channel}


class FastEvent:
    """The attributes of :class:`InteractionEvent` the consumer reads (fast path only)."""

    __slots__ = ("event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
                 "channel", "value", "recommendation_id", "context", "schema_version")

    def __init__(self, **values: Any) -> None:
        for name, value in values.items():
            setattr(self, name, value)


def fast_event(raw: bytes, max_bytes: int) -> FastEvent | None:
    """The event when it is plainly valid, else None (then ask :func:`parse_event`)."""
    if len(raw) > max_bytes:
        return None
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if type(d) is not dict or not d.keys() <= _FAST_FIELDS:
        return None
    get = d.get
    version, event_id, resident_id = get("schema_version"), get("event_id"), get("resident_id")
    kind, channel, ts = get("type"), get("channel"), get("ts")
    kind = _TYPES.get(kind) if type(kind) is str else None
    channel = _CHANNELS.get(channel) if type(channel) is str else None
    if type(version) is not int or version != 1 or kind is None or channel is None \
            or type(event_id) is not str or not _EVENT_ID(event_id) \
            or type(resident_id) is not str or not _RESIDENT(resident_id) \
            or type(ts) is not str or not _TS(ts):
        return None
    service_id, bundle_id, reference = get("service_id"), get("bundle_id"), get("recommendation_id")
    if service_id is not None and (type(service_id) is not str or not _TARGET(service_id)):
        return None
    if bundle_id is not None and (type(bundle_id) is not str or not _TARGET(bundle_id)):
        return None
    if reference is not None and (type(reference) is not str or not _REFERENCE(reference)):
        return None
    value = get("value")
    if value is not None:
        if type(value) not in (int, float) or not math.isfinite(value) \
                or not -1e9 <= value <= 1e9:
            return None
        value = float(value)
    context = get("context", {})
    if context:  # the same three rules as InteractionEvent's context validator
        if type(context) is not dict \
                or len(json.dumps(context, separators=(",", ":"))) > MAX_CONTEXT_BYTES \
                or _context_depth(context) > MAX_CONTEXT_DEPTH or _personal_data_in(context):
            return None
    elif type(context) is not dict:
        return None
    has_target = service_id is not None or bundle_id is not None
    if kind in CONTACT_TYPES:
        if not has_target or (kind == "rate" and (value is None or not 1 <= value <= 5)):
            return None
    elif has_target or (kind == "consent" and value not in (0, 1)):
        return None
    try:
        when = datetime.fromisoformat(ts).astimezone(UTC)
    except ValueError:
        return None
    return FastEvent(event_id=event_id, resident_id=resident_id, type=kind,
                     service_id=service_id, bundle_id=bundle_id, ts=when, channel=channel,
                     value=value, recommendation_id=reference, context=context,
                     schema_version=1)


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


class BatchBuilder:
    """Validates records and appends them to a :class:`Batch` (one builder per consumer)."""

    def __init__(self, catalog: Catalog, keys: Keys, *, max_event_bytes: int = 8192,
                 max_future_skew_s: int = 300) -> None:
        self.catalog = catalog
        self.keys = keys
        self.max_event_bytes = max_event_bytes
        self.max_future_skew = timedelta(seconds=max_future_skew_s)
        self._buckets: dict[date, tuple[str, str]] = {}
        self._targets: dict[tuple[str | None, str | None], tuple[str, str]] = {}
        self._funnels: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._combos: dict[tuple[str, ...], str] = {}

    def add(self, batch: Batch, record: Any, now: datetime | None = None) -> None:
        """Add one ``ConsumerRecord`` to ``batch`` (as an event or as a dead letter)."""
        batch.records += 1
        key = (record.topic, record.partition)
        batch.offsets[key] = record.offset + 1
        if key not in batch.first_offsets:
            batch.first_offsets[key] = record.offset
        value = record.value
        try:
            if not value:
                raise EventRejected(REASON_EMPTY, "the message has no value")
            event = fast_event(value, self.max_event_bytes) \
                or parse_event(value, max_bytes=self.max_event_bytes)
            check_against_catalog(event, self.catalog, now=now,
                                  max_future_skew=self.max_future_skew)
            if event.event_id in batch.event_ids:
                batch.in_batch_duplicates += 1
                return
            self._append(batch, event)
        except EventRejected as exc:
            batch.dead_letters.append(self._letter(record, exc.reason, exc.detail))
            return
        except Exception as exc:  # a bug must not stop ingestion: dead-letter and go on
            log.exception("unexpected error validating %s[%d]@%d", record.topic,
                          record.partition, record.offset)
            batch.dead_letters.append(self._letter(record, REASON_INTERNAL,
                                                   f"{type(exc).__name__}: {exc}"[:300]))
            return
        batch.event_ids.add(event.event_id)
        if record.timestamp is not None and record.timestamp > 0:
            batch.produced_ms.append(record.timestamp)

    @staticmethod
    def _letter(record: Any, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(record.topic, record.partition, record.offset, record.timestamp,
                          record.key, record.value, reason, detail)

    def _bucket(self, day: date) -> tuple[str, str]:
        found = self._buckets.get(day)
        if found is None:
            found = self._buckets[day] = (day.isoformat(), iso_week(day))
        return found

    def _target(self, service_id: str | None, bundle_id: str | None) -> tuple[str, str]:
        found = self._targets.get((service_id, bundle_id))
        if found is None:
            found = (self.catalog.domain_of(service_id, bundle_id) or "",
                     self.catalog.aggregation_factor_of(service_id, bundle_id) or "")
            self._targets[(service_id, bundle_id)] = found
        return found

    def _funnel(self, kind: str, recommendation_id: str | None) -> tuple[str, str, str]:
        stage = FUNNEL_STAGES.get(kind)
        if stage is None or recommendation_id is None:
            return "", "", ""
        attribution = parse_recommendation_id(recommendation_id)
        if attribution is None:
            return "", "", ""
        pair = (attribution.model_version, attribution.variant)
        found = self._funnels.get(pair)
        if found is None:
            found = self._funnels[pair] = (self.keys.funnel(*pair), "",
                                           f"{pair[0]}:{pair[1]}")
        return found[0], stage, found[2]

    def _append(self, batch: Batch, event: InteractionEvent) -> None:
        cols = batch.columns
        kind = event.type.value
        channel = event.channel.value
        ts = event.ts
        cols["event_id"].append(event.event_id)
        cols["resident_id"].append(event.resident_id)
        cols["type"].append(kind)
        cols["service_id"].append(event.service_id)
        cols["bundle_id"].append(event.bundle_id)
        cols["ts"].append(ts)
        cols["channel"].append(channel)
        cols["value"].append(event.value)
        cols["recommendation_id"].append(event.recommendation_id)
        cols["context"].append(json.dumps(event.context, separators=(",", ":"), sort_keys=True)
                               if event.context else None)
        cols["schema_version"].append(event.schema_version)

        epoch = f"{ts.timestamp():.6f}"
        day, week = self._bucket(ts.date())
        domain = factor = members = funnel_key = stage = funnel_member = ""
        if kind in CONTACT_TYPES:
            domain, factor = self._target(event.service_id, event.bundle_id)
            payload = recent_item(event, epoch)
            if kind in ("subscribe", "unsubscribe"):
                members = holding_members(event.service_id, event.bundle_id)
            elif kind == "dismiss":
                members = event.bundle_id or ""
            funnel_key, stage, funnel_member = self._funnel(kind, event.recommendation_id)
        elif kind == "profile":
            payload = profile_payload(event.context)
        elif kind == "consent":
            payload = "1" if event.value == 1 else "0"
        else:  # erase
            payload = ""
        combo = self._combos.get((day, week, channel, domain, factor))
        if combo is None:
            combo = self._combos[(day, week, channel, domain, factor)] = \
                f"{day}|{week}|{channel}|{domain}|{factor}"
        batch.slots.append("\x1f".join((
            event.event_id, event.resident_id, kind, epoch, combo, payload, members,
            funnel_key, stage, funnel_member)))


def holding_members(service_id: str | None, bundle_id: str | None) -> str:
    """Holdings SET members touched by a subscribe/unsubscribe: ``b:<bundle>``, ``s:<service>``."""
    parts = []
    if bundle_id:
        parts.append(f"b:{bundle_id}")
    if service_id:
        parts.append(f"s:{service_id}")
    return " ".join(parts)


def recent_item(event: InteractionEvent, epoch: str | None = None) -> str:
    """The JSON item pushed on the resident's ``recent`` list (see docs/redis-keys.md).

    Built by hand because it is on the hot path; every value is from a validated
    charset (ids, enums, a finite float), so no escaping is needed.
    """
    if epoch is None:
        epoch = f"{event.ts.timestamp():.6f}"
    parts = [f'{{"event_id":"{event.event_id}","type":"{event.type.value}","ts":{epoch}',
             f',"channel":"{event.channel.value}"']
    if event.service_id:
        parts.append(f',"service_id":"{event.service_id}"')
    if event.bundle_id:
        parts.append(f',"bundle_id":"{event.bundle_id}"')
    if event.recommendation_id:
        parts.append(f',"recommendation_id":"{event.recommendation_id}"')
    if event.value is not None:
        parts.append(f',"value":{event.value!r}')
    parts.append("}")
    return "".join(parts)


def profile_payload(context: dict[str, Any]) -> str:
    """``field\\tvalue\\t…`` of the declared attributes a profile event sets (booleans as
    "1"/"0"; attributes given as null are left as they were)."""
    parts: list[str] = []
    for name, value in context.items():
        if value is None:
            continue
        if name in PROFILE_BOOLEANS:
            value = "1" if value else "0"
        parts += (name, str(value))
    return "\t".join(parts)


def utc_now() -> datetime:
    return datetime.now(UTC)
