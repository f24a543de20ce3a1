"""Turning Kafka records into one ingestion batch: validate, de-duplicate, lay out.

This is the consumer's hot path (every record passes here once), so it builds the three
outputs of a batch directly instead of going through intermediate objects:

* rows of the event-log table (:data:`bouquet.core.eventlog.COLUMNS`), to become one
  Arrow table per batch;
* one Redis slot per event (a tuple: what :mod:`bouquet.streaming.state` aggregates);
* dead letters (original bytes + reason) for the dead-letter topic.

Validation is exactly :func:`bouquet.core.events.parse_event` followed by
:func:`bouquet.core.events.check_against_catalog`, so the reason codes are the shared
ones; a record that fails, or that trips an unexpected error, becomes a dead letter and
the batch goes on. Plain events take a fast path (msgspec + one regex, below) that can
only accept, never reject: whatever it is unsure of goes through those two functions.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import msgspec
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
    check_against_catalog,
    consent_purpose,
    parse_event,
    personal_data_in,
)
from bouquet.core.keyring import resident_ref
from bouquet.core.keys import Keys
from bouquet.core.profile import consent_payload, profile_payload
from bouquet.core.recommendation import RecommendationIds, development_ids
from bouquet.streaming.state import FUNNEL_STAGES

log = logging.getLogger(__name__)

#: Reason codes the consumer adds to those of ``parse_event`` / ``check_against_catalog``.
REASON_EMPTY = "empty_message"
REASON_INTERNAL = "internal_error"

_LOG_COLUMNS = ("event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
                "channel", "value", "recommendation_id", "context", "schema_version")
_RESIDENT, _TYPE, _TS = (_LOG_COLUMNS.index(name) for name in ("resident_id", "type", "ts"))


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

    def resident_id(self) -> str | None:
        """Whose message this was, as far as it says: the record's key (producers key by
        resident id), else a ``resident_id`` in a value that still parses; None when
        neither holds a valid id."""
        candidates = [self.key.decode("utf-8", "replace") if self.key else None]
        if self.value:
            try:
                payload = json.loads(self.value)
            except (ValueError, RecursionError):
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("resident_id"), str):
                candidates.append(payload["resident_id"])
        return next((c for c in candidates if c and _VALID_ID(c)), None)

    def dead_letter_key(self, secret: str) -> bytes:
        """The key of this letter on the dead-letter topic: the resident's keyed reference
        (never the id) and the source position, ``<ref>:<partition>:<offset>``, or
        ``-:<partition>:<offset>`` when the message names no resident. The topic is
        compacted: ``bouquet compact`` deletes an erased resident's letters by producing a
        tombstone for each of their keys (docs/privacy.md)."""
        rid = self.resident_id()
        ref = resident_ref(rid, secret) if rid else "-"
        return f"{ref}:{self.partition}:{self.offset}".encode()


_VALID_ID = re.compile(ID_RE).fullmatch


@dataclass
class Batch:
    """What one flush writes: log rows, Redis slots (one per event), dead letters, offsets."""

    #: one tuple per valid event, in :data:`_LOG_COLUMNS` order (a tuple per event is
    #: cheaper on the hot path than eleven list appends; :meth:`table` transposes in C)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    #: each valid event's Redis part (:data:`bouquet.streaming.state.Slot`), in row order
    slots: list[tuple[Any, ...]] = field(default_factory=list)
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
    #: an ``erase`` event is among the rows (set as they are laid out)
    has_erasures: bool = False
    #: the event dates (UTC) of the rows: one event-log file each
    days: set[date] = field(default_factory=set)
    started: float = 0.0

    @property
    def events(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> dict[str, list[Any]]:
        """The valid events column by column (event-log layout, without ``ingested_at``)."""
        if not self.rows:
            return {name: [] for name in _LOG_COLUMNS}
        columns = zip(*self.rows, strict=True)
        return {name: list(values) for name, values in zip(_LOG_COLUMNS, columns, strict=True)}

    def resident_ids(self) -> Iterator[str]:
        """The resident id of each event, lazily (a caller may not need them)."""
        return (row[_RESIDENT] for row in self.rows)

    def erasures(self) -> list[tuple[str, float]]:
        """(resident id, erasure epoch s) of the batch's ``erase`` events, in order."""
        if not self.has_erasures:
            return []
        return [(row[_RESIDENT], row[_TS].timestamp()) for row in self.rows
                if row[_TYPE] == "erase"]

    def extend_erasures(self, seen: Mapping[str, float]) -> int:
        """Move each ``erase`` event's time stamp to the later of its own and the newest
        event time seen for its resident — ``seen`` (resident id → epoch s, from the
        real-time state: events of earlier batches) or an earlier event of this batch.
        Returns how many moved.

        The erasure's time stamp is its cutoff (readers hide, compaction drops and the
        consumer refuses the resident's events stamped at or before it). A device whose
        clock runs ahead may have sent events stamped after the erasure request; had the
        cutoff stayed at the request time, a copy of such an event arriving after the
        erasure would count as new data and rebuild what was erased."""
        if not self.has_erasures:
            return 0
        newest: dict[str, float] = {}
        moved = 0
        for i, row in enumerate(self.rows):
            rid, when = row[_RESIDENT], row[_TS]
            epoch = when.timestamp()
            if row[_TYPE] != "erase":
                if epoch > newest.get(rid, float("-inf")):
                    newest[rid] = epoch
                continue
            cutoff = max(epoch, newest.get(rid, epoch), seen.get(rid, epoch))
            if cutoff > epoch:
                self.rows[i] = (*row[:_TS], datetime.fromtimestamp(cutoff, UTC),
                                *row[_TS + 1:])
                moved += 1
            newest.pop(rid, None)  # events after the erasure are the resident's new data
        return moved

    def erased_residents(self) -> list[str]:
        """The residents of the batch's ``erase`` events."""
        return [rid for rid, _ in self.erasures()]

    def drop_late(self, on_record: Mapping[str, float]) -> int:
        """Remove late data of erased residents before anything is written; returns how many.

        An event is late when an erasure of its resident, time-stamped at or after it, came
        before it: one on record (``on_record``: resident id → erasure epoch s, from earlier
        batches or the admin API) or an ``erase`` event earlier in this batch. Events
        *before* an ``erase`` event are kept (applied, then erased, as when the two land in
        different batches), and so are the ``erase`` events themselves. Rows and script
        slots are one per event, in the same order. Nothing to do — the usual case — costs
        nothing per event.
        """
        if not on_record and not self.has_erasures:
            return 0
        cutoffs = dict(on_record)
        keep = []
        for i, row in enumerate(self.rows):
            rid, epoch = row[_RESIDENT], row[_TS].timestamp()
            cut = cutoffs.get(rid)
            if row[_TYPE] == "erase":
                if cut is None or epoch > cut:
                    cutoffs[rid] = epoch
                keep.append(i)
            elif cut is None or epoch > cut:
                keep.append(i)
        removed = len(self.rows) - len(keep)
        if removed:
            self.rows = [self.rows[i] for i in keep]
            self.slots = [self.slots[i] for i in keep]
        return removed

    def table(self) -> pa.Table:
        """The valid events as an event-log Arrow table (``ingested_at`` left to the log)."""
        return pa.table({name: pa.array(values, SCHEMA.field(name).type)
                         for name, values in self.columns.items()})


# --- the fast path ---------------------------------------------------------------------
# Most events are plain: ids and enums of the expected types, a small context or none.
# For those, msgspec decodes the JSON straight into a typed struct in C (types, enums,
# unknown fields), one compiled regex checks every id and the timestamp at once, and a few
# comparisons do the rest — about 8x cheaper than json.loads + the pydantic model. Any event
# the fast path is not sure about (a profile, an unusual type, a failed check, JSON that
# msgspec reads differently from json, e.g. NaN) goes to parse_event, which alone decides
# rejections and their reasons. The fast path only *accepts* what parse_event accepts,
# with the same values (property-tested in tests/streaming/test_ingest_batch.py).
_PLAIN_TYPES = tuple(t.value for t in EventType if t is not EventType.PROFILE)
_CHANNEL_VALUES = tuple(c.value for c in Channel)


class _Plain(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON shape of a plain event: exact types only; patterns are checked after."""

    schema_version: Literal[1]
    event_id: str
    resident_id: str
    type: Literal[_PLAIN_TYPES]  # type: ignore[valid-type]
    ts: str
    channel: Literal[_CHANNEL_VALUES]  # type: ignore[valid-type]
    service_id: str | None = None
    bundle_id: str | None = None
    value: float | None = None
    recommendation_id: str | None = None
    context: dict[str, Any] = msgspec.field(default_factory=dict)


_DECODE_PLAIN = msgspec.json.Decoder(_Plain).decode
_TARGET_RE = r"[a-z0-9][a-z0-9_-]{0,63}"
#: event_id, resident_id, ts, service_id, bundle_id, recommendation_id joined by \x1f (an
#: absent optional field as an empty string), in one regex call. No field may contain \x1f,
#: so a value cannot shift the others.
_IDS = re.compile(
    EVENT_ID_RE[1:-1] + "\x1f" + ID_RE[1:-1] + "\x1f"
    + r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
      r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
    + f"\x1f(?:{_TARGET_RE})?\x1f(?:{_TARGET_RE})?\x1f(?:{REFERENCE_RE[1:-1]})?").fullmatch


class FastEvent:
    """The attributes of :class:`InteractionEvent` the consumer reads (fast path only)."""

    __slots__ = ("event_id", "resident_id", "type", "service_id", "bundle_id", "ts",
                 "channel", "value", "recommendation_id", "context", "schema_version")

    def __init__(self, plain: _Plain, when: datetime) -> None:
        self.event_id = plain.event_id
        self.resident_id = plain.resident_id
        self.type = plain.type
        self.service_id = plain.service_id
        self.bundle_id = plain.bundle_id
        self.ts = when
        self.channel = plain.channel
        self.value = plain.value
        self.recommendation_id = plain.recommendation_id
        self.context = plain.context
        self.schema_version = 1


def plain_event(raw: bytes, max_bytes: int) -> tuple[_Plain, datetime] | None:
    """The decoded event and its UTC time when it is plainly valid (catalog aside), else
    None: then ask :func:`parse_event`."""
    if len(raw) > max_bytes:
        return None
    try:
        e = _DECODE_PLAIN(raw)
    except (msgspec.MsgspecError, ValueError):  # ValueError: e.g. UnicodeDecodeError, which
        return None                             # msgspec raises for bad UTF-8 in a key
    service_id, bundle_id, reference = e.service_id, e.bundle_id, e.recommendation_id
    if not _IDS(f"{e.event_id}\x1f{e.resident_id}\x1f{e.ts}\x1f{service_id or ''}\x1f"
                f"{bundle_id or ''}\x1f{reference or ''}") \
            or "" in (service_id, bundle_id, reference):  # present but empty: invalid
        return None
    value = e.value
    if value is not None and not -1e9 <= value <= 1e9:
        return None
    context = e.context
    if context and (len(json.dumps(context, separators=(",", ":"))) > MAX_CONTEXT_BYTES
                    or _context_depth(context) > MAX_CONTEXT_DEPTH
                    or personal_data_in(context)):  # InteractionEvent's context rules
        return None
    kind = e.type
    if kind in CONTACT_TYPES:
        if (service_id is None and bundle_id is None) \
                or (kind == "rate" and (value is None or not 1 <= value <= 5)):
            return None
    elif service_id is not None or bundle_id is not None \
            or (kind == "consent" and (value not in (0, 1) or consent_purpose(context) is None)):
        return None
    try:
        when = datetime.fromisoformat(e.ts).astimezone(UTC)
    except ValueError:
        return None
    return e, when


def fast_event(raw: bytes, max_bytes: int) -> FastEvent | None:
    """The event when it is plainly valid, else None (then ask :func:`parse_event`)."""
    found = plain_event(raw, max_bytes)
    return None if found is None else FastEvent(*found)


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


class BatchBuilder:
    """Validates records and appends them to a :class:`Batch` (one builder per consumer)."""

    def __init__(self, catalog: Catalog, keys: Keys, *, max_event_bytes: int = 8192,
                 max_future_skew_s: int = 300,
                 max_past_skew: Mapping[str, timedelta] | None = None,
                 max_dates: int = 32,
                 recommendation_ids: RecommendationIds | None = None) -> None:
        self.catalog = catalog
        self.keys = keys
        self.recommendation_ids = recommendation_ids or development_ids()
        self.max_event_bytes = max_event_bytes
        self.max_future_skew = timedelta(seconds=max_future_skew_s)
        self.max_past_skew = dict(max_past_skew or {})
        self.max_dates = max_dates
        self._services = catalog.service_by_id
        self._bundles = catalog.bundle_by_id
        self._buckets: dict[date, tuple[str, str]] = {}
        self._targets: dict[tuple[str | None, str | None], tuple[str, str]] = {}
        self._funnels: dict[tuple[str, str], tuple[str, str]] = {}
        self._combos: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._now_s = 0.0  # the clock of the records being added (add_records)

    def add(self, batch: Batch, record: Any, now: datetime | None = None) -> bool:
        """Add one ``ConsumerRecord`` to ``batch`` (as an event or as a dead letter); False
        when the batch has no room for its event date (:meth:`add_records`)."""
        return self.add_records(batch, [record], now) == 1

    def add_records(self, batch: Batch, records: list[Any], now: datetime | None = None) -> int:
        """Add the records of one partition, in offset order (as ``poll`` returns them);
        returns how many were taken. Fewer than given when a valid event would add an event
        date beyond ``max_dates`` to the batch: the caller writes the batch and adds the
        rest to the next one (a batch writes one file per event date).

        The hot loop: a plain event that is in the catalog and within the clock's bounds is
        laid out directly; anything else goes through :meth:`_add_checked`, i.e. exactly
        ``parse_event`` + ``check_against_catalog``.
        """
        if not records:
            return 0
        now = now or utc_now()
        self._now_s = now.timestamp()
        latest = now + self.max_future_skew
        floors = {channel: now - skew for channel, skew in self.max_past_skew.items()}
        max_bytes = self.max_event_bytes
        services, bundles = self._services, self._bundles
        seen, produced, days = batch.event_ids, batch.produced_ms, batch.days
        append = self._append
        taken = 0
        for record in records:
            value = record.value
            try:
                found = plain_event(value, max_bytes) if value else None
            except Exception:  # the fast path never decides: anything odd goes the slow way
                log.debug("fast path failed on %s[%d]@%d", record.topic, record.partition,
                          record.offset, exc_info=True)
                found = None
            if found is not None:
                e, when = found
                service_id, bundle_id = e.service_id, e.bundle_id
                # check_against_catalog's rules, as a filter: what fails is re-checked by
                # the real function, which gives the reason
                if (service_id is None or service_id in services) \
                        and (bundle_id is None
                             or ((bundle := bundles.get(bundle_id)) is not None
                                 and (service_id is None or service_id in bundle.services))) \
                        and when <= latest and when.year >= 2000 \
                        and ((floor := floors.get(e.channel)) is None or when >= floor):
                    if e.event_id in seen:
                        batch.in_batch_duplicates += 1
                        taken += 1
                        continue
                    day = when.date()
                    if day not in days:
                        if len(days) >= self.max_dates:
                            break
                        days.add(day)
                    append(batch, e.event_id, e.resident_id, e.type, service_id, bundle_id,
                           when, e.channel, e.value, e.recommendation_id, e.context,
                           record.timestamp)
                    seen.add(e.event_id)
                    if record.timestamp is not None and record.timestamp > 0:
                        produced.append(record.timestamp)
                    taken += 1
                    continue
            if not self._add_checked(batch, record, now):
                break
            taken += 1
        if taken:
            first, last = records[0], records[taken - 1]
            key = (first.topic, first.partition)
            batch.offsets[key] = last.offset + 1
            batch.first_offsets.setdefault(key, first.offset)
            batch.records += taken
        return taken

    def _add_checked(self, batch: Batch, record: Any, now: datetime) -> bool:
        """The reference path: ``parse_event`` + ``check_against_catalog`` decide. False
        (nothing added) when the event's date does not fit in the batch."""
        value = record.value
        try:
            if not value:
                raise EventRejected(REASON_EMPTY, "the message has no value")
            event = parse_event(value, max_bytes=self.max_event_bytes)
            check_against_catalog(event, self.catalog, now=now,
                                  max_future_skew=self.max_future_skew,
                                  max_past_skew=self.max_past_skew)
            if event.event_id in batch.event_ids:
                batch.in_batch_duplicates += 1
                return True
            day = event.ts.date()
            if day not in batch.days:
                if len(batch.days) >= self.max_dates:
                    return False
                batch.days.add(day)
            self._append(batch, event.event_id, event.resident_id, event.type.value,
                         event.service_id, event.bundle_id, event.ts, event.channel.value,
                         event.value, event.recommendation_id, event.context,
                         record.timestamp)
        except EventRejected as exc:
            batch.dead_letters.append(self._letter(record, exc.reason, exc.detail))
            return True
        except Exception as exc:  # a bug must not stop ingestion: dead-letter and go on
            log.exception("unexpected error validating %s[%d]@%d", record.topic,
                          record.partition, record.offset)
            batch.dead_letters.append(self._letter(record, REASON_INTERNAL,
                                                   f"{type(exc).__name__}: {exc}"[:300]))
            return True
        batch.event_ids.add(event.event_id)
        if record.timestamp is not None and record.timestamp > 0:
            batch.produced_ms.append(record.timestamp)
        return True

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

    def _funnel(self, kind: str, recommendation_id: str) -> tuple[str, str, str]:
        """(funnel key, stage, funnel index member) the event credits, or empty strings.
        The arm is the id's own only when its MAC verifies; any other id (foreign, altered,
        made up by a client) credits the ``unattributed`` arm."""
        stage = FUNNEL_STAGES.get(kind)
        if stage is None:
            return "", "", ""
        arm = self.recommendation_ids.arm(recommendation_id)
        found = self._funnels.get(arm)
        if found is None:
            found = self._funnels[arm] = (self.keys.funnel(*arm), f"{arm[0]}:{arm[1]}")
        return found[0], stage, found[1]

    def _append(self, batch: Batch, event_id: str, resident_id: str, kind: str,
                service_id: str | None, bundle_id: str | None, ts: datetime, channel: str,
                value: float | None, reference: str | None, context: dict[str, Any],
                received_ms: int | None = None) -> None:
        """Lay out one valid event: its log row and its Redis slot (``received_ms``: the
        record's Kafka time stamp, which orders consent decisions)."""
        batch.rows.append((
            event_id, resident_id, kind, service_id, bundle_id, ts, channel, value, reference,
            json.dumps(context, separators=(",", ":"), sort_keys=True) if context else None,
            1))  # schema_version: the only one this consumer reads

        epoch = f"{ts.timestamp():.6f}"
        day, week = self._bucket(ts.date())
        domain = factor = members = funnel_key = stage = funnel_member = ""
        if kind in CONTACT_TYPES:
            domain, factor = self._target(service_id, bundle_id)
            payload = _recent_json(event_id, kind, epoch, channel, service_id, bundle_id,
                                   reference, value)
            if kind == "subscribe" or kind == "unsubscribe":
                members = holding_members(service_id, bundle_id)
            elif kind == "dismiss":
                members = bundle_id or ""
            if reference is not None:
                funnel_key, stage, funnel_member = self._funnel(kind, reference)
        elif kind == "profile":
            payload = profile_payload(context)
        elif kind == "consent":
            payload = consent_payload(consent_purpose(context) or "personalisation",
                                      value == 1, receipt_time(received_ms, self._now_s))
        else:  # erase
            payload = ""
            batch.has_erasures = True
        # one shared tuple per distinct combination: the state writer caches by identity
        key = (day, week, channel, domain, factor)
        combo = self._combos.setdefault(key, key)
        batch.slots.append((event_id, resident_id, kind, epoch, combo, payload, members,
                            funnel_key, stage, funnel_member))


def receipt_time(record_timestamp_ms: int | None, now_s: float) -> float:
    """When an event was received (epoch s): its Kafka record's time stamp — the producer's
    clock at the send, i.e. the intake's for events that came over HTTP, or the broker's
    with ``LogAppendTime`` — never later than now; ``now_s`` when the record has none."""
    if record_timestamp_ms is None or record_timestamp_ms <= 0:
        return now_s
    return min(record_timestamp_ms / 1000, now_s)


def holding_members(service_id: str | None, bundle_id: str | None) -> str:
    """Holdings SET members touched by a subscribe/unsubscribe: ``b:<bundle>``, ``s:<service>``."""
    parts = []
    if bundle_id:
        parts.append(f"b:{bundle_id}")
    if service_id:
        parts.append(f"s:{service_id}")
    return " ".join(parts)


def recent_item(event: InteractionEvent, epoch: str | None = None) -> str:
    """The JSON item pushed on the resident's ``recent`` list (see docs/redis-keys.md)."""
    if epoch is None:
        epoch = f"{event.ts.timestamp():.6f}"
    return _recent_json(event.event_id, event.type.value, epoch, event.channel.value,
                        event.service_id, event.bundle_id, event.recommendation_id, event.value)


def _recent_json(event_id: str, kind: str, epoch: str, channel: str, service_id: str | None,
                 bundle_id: str | None, reference: str | None, value: float | None) -> str:
    """Built by hand because it is on the hot path; every value is from a validated
    charset (ids, enums, a finite float), so no escaping is needed."""
    item = f'{{"event_id":"{event_id}","type":"{kind}","ts":{epoch},"channel":"{channel}"'
    if service_id:
        item += f',"service_id":"{service_id}"'
    if bundle_id:
        item += f',"bundle_id":"{bundle_id}"'
    if reference:
        item += f',"recommendation_id":"{reference}"'
    if value is not None:
        item += f',"value":{value!r}'
    return item + "}"


def utc_now() -> datetime:
    return datetime.now(UTC)
