"""The event log: Bouquet's durable, append-only record of every interaction (offline store).

Layout: ``<root>/date=YYYY-MM-DD/part-<utc-time>-<writer>-<seq>.parquet``, one directory
per event date (UTC). A file is written under a temporary name, fsynced, renamed and the
directory fsynced, so a reader never sees half a file and a writer that crashes leaves at
most a ``.tmp-*`` file that readers ignore. The consumer commits Kafka offsets only after
:meth:`EventLog.append` returns.

Physical duplicates are allowed (a redelivered batch after a crash may be written twice);
:func:`read_events` removes them on ``event_id``, so every reader sees each event once.
Any data scientist can open the files with pandas, pyarrow or DuckDB. Files are created
0600 and directories 0700 (:mod:`bouquet.core.statefiles`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bouquet.core.statefiles import create_private, private_dir

log = logging.getLogger(__name__)

#: Column layout of the log (schema version 1 of the interaction event, flattened).
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("resident_id", pa.string()),
        ("type", pa.string()),
        ("service_id", pa.string()),
        ("bundle_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("channel", pa.string()),
        ("value", pa.float64()),
        ("recommendation_id", pa.string()),
        ("context", pa.string()),
        ("schema_version", pa.int16()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        # the declared attributes of a `profile` event (core.events.ResidentProfile), typed;
        # the free-form rest of its context stays in `context`
        ("neighbourhood", pa.string()),
        ("age_band", pa.string()),
        ("household", pa.string()),
        ("student", pa.bool_()),
        ("low_income", pa.bool_()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
#: Columns holding a profile's declared attributes. Files written before they existed keep
#: the attributes inside `context`; every reader gets both forms right (:func:`read_events`
#: puts them back into `context`, the analytics view falls back to `context`).
DECLARED_COLUMNS: tuple[str, ...] = ("neighbourhood", "age_band", "household", "student",
                                     "low_income")
PARTITION_PREFIX = "date="


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (fsync of the directory itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Append-only writer and partition-aware locator of the Parquet event log."""

    def __init__(self, root: Path, writer_id: str | None = None) -> None:
        self.root = Path(root)
        self.writer_id = writer_id or uuid.uuid4().hex[:8]
        self._seq = 0
        self._next_stamp_us = 0

    def partition_dir(self, day: date) -> Path:
        return self.root / f"{PARTITION_PREFIX}{day.isoformat()}"

    def partitions(self) -> list[date]:
        """Event dates present in the log, oldest first."""
        if not self.root.exists():
            return []
        # scandir's entries know their type: no stat per partition (a log has hundreds)
        with os.scandir(self.root) as entries:
            days = [date.fromisoformat(entry.name[len(PARTITION_PREFIX):]) for entry in entries
                    if entry.name.startswith(PARTITION_PREFIX) and entry.is_dir()]
        return sorted(days)

    def files_by_day(self, start: date | None = None, end: date | None = None
                     ) -> dict[date, list[Path]]:
        """Each event date in [start, end] (both inclusive) with its complete Parquet
        files, oldest first; a partition holding none maps to an empty list. Callers that
        walk the log day by day take this one listing rather than asking :meth:`files`
        per day, which would list every partition each time."""
        found: dict[date, list[Path]] = {}
        for day in self.partitions():
            if (start and day < start) or (end and day > end):
                continue
            found[day] = sorted(self.partition_dir(day).glob("part-*.parquet"))
        return found

    def files(self, start: date | None = None, end: date | None = None) -> list[Path]:
        """Complete Parquet files for event dates in [start, end] (both inclusive)."""
        return [f for files in self.files_by_day(start, end).values() for f in files]

    def append(self, records: Sequence[dict[str, Any]] | pa.Table) -> list[Path]:
        """Durably write events (dicts in :data:`COLUMNS` layout, or an Arrow table).

        Returns the files written. When this returns, the events survive a crash of this
        process and of the machine (data and directory entries are fsynced).
        """
        table = records if isinstance(records, pa.Table) else _to_table(records)
        if table.num_rows == 0:
            return []
        table = split_declared(table)
        if "ingested_at" not in table.column_names or table["ingested_at"].null_count:
            column = pa.array(self._receipt_stamps(table.num_rows),
                              pa.timestamp("us", tz="UTC"))
            if "ingested_at" in table.column_names:
                table = table.set_column(table.schema.get_field_index("ingested_at"),
                                         "ingested_at", column)
            else:
                table = table.append_column("ingested_at", column)
        table = table.select(list(COLUMNS)).cast(SCHEMA)
        days = pc.strftime(table["ts"], format="%Y-%m-%d")
        written: list[Path] = []
        for day_text in pc.unique(days).to_pylist():
            part = table.filter(pc.equal(days, day_text))
            written.append(self._write_file(date.fromisoformat(day_text), part))
        return written

    def _receipt_stamps(self, n: int) -> np.ndarray:
        """``ingested_at`` of ``n`` rows appended now (µs since the epoch): strictly
        increasing in row order and across this writer's appends, so the log keeps the
        order in which events were received — also between rows of one batch that land in
        different date files — and readers can order by it (consent decisions take effect
        in order of receipt)."""
        now_us = time.time_ns() // 1000
        base = max(now_us, self._next_stamp_us)
        self._next_stamp_us = base + n
        return base + np.arange(n, dtype=np.int64)

    def _write_file(self, day: date, table: pa.Table) -> Path:
        directory = self.partition_dir(day)
        new_dir = not directory.exists()
        private_dir(directory)
        if new_dir:
            fsync_dir(self.root)
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"part-{stamp}-{self.writer_id}-{self._seq:06d}.parquet"
        tmp = directory / f".tmp-{name}"
        with create_private(tmp) as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
        fsync_dir(directory)
        return directory / name


def split_declared(table: pa.Table) -> pa.Table:
    """``table`` with each profile event's declared attributes moved from ``context`` into
    :data:`DECLARED_COLUMNS` (the rest of the context stays JSON; None when nothing is
    left). Rows that already fill those columns, and other event types, are kept as they
    are; so are contexts that declare nothing (only those that name an attribute are
    parsed)."""
    n = table.num_rows
    names = set(table.column_names)
    for name in DECLARED_COLUMNS:
        if name not in names:
            table = table.append_column(name, pa.nulls(n, SCHEMA.field(name).type))
    if "context" not in names or n == 0:
        return table
    filled = np.zeros(n, bool)
    for name in DECLARED_COLUMNS:
        filled |= table[name].is_valid().to_numpy(zero_copy_only=False)
    candidate = pc.and_(pc.equal(table["type"], "profile"), pc.match_substring_regex(
        table["context"], '"(' + "|".join(DECLARED_COLUMNS) + ')"'))
    rows = np.flatnonzero(pc.fill_null(candidate, False).to_numpy(zero_copy_only=False)
                          & ~filled)
    if rows.size == 0:
        return table
    context = table["context"].to_numpy(zero_copy_only=False).astype(object)
    declared: dict[str, np.ndarray] = {
        name: table[name].to_numpy(zero_copy_only=False).astype(object)
        for name in DECLARED_COLUMNS}
    for i in rows.tolist():
        found = json.loads(context[i])
        for name in DECLARED_COLUMNS:
            declared[name][i] = found.pop(name, None)
        context[i] = json.dumps(found, separators=(",", ":"), sort_keys=True) if found \
            else None
    table = table.set_column(table.schema.get_field_index("context"), "context",
                             pa.array(context, pa.string(), from_pandas=True))
    for name in DECLARED_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(declared[name], SCHEMA.field(name).type,
                                          from_pandas=True))
    return table


def merge_declared(frame: pd.DataFrame) -> pd.Series:
    """The full ``context`` of each row, as the event carried it: the JSON of ``context``
    with the typed declared attributes put back (rows written before typed columns still
    hold them in ``context``)."""
    context = frame["context"].to_numpy(dtype=object, na_value=None).copy()
    present = [n for n in DECLARED_COLUMNS if n in frame.columns]
    if not present or not len(frame):
        return pd.Series(context, index=frame.index, dtype=object)
    values = {n: frame[n].to_numpy(dtype=object, na_value=None) for n in present}
    has = np.zeros(len(frame), bool)
    for n in present:
        has |= pd.notna(values[n])
    for i in np.flatnonzero(has).tolist():
        merged = json.loads(context[i]) if context[i] else {}
        merged.update({n: _plain(values[n][i]) for n in present
                       if values[n][i] is not None and not pd.isna(values[n][i])})
        context[i] = json.dumps(merged, separators=(",", ":"), sort_keys=True)
    return pd.Series(context, index=frame.index, dtype=object)


def _with_context(table: pa.Table) -> pa.Table:
    """``table`` whose ``context`` has the declared attribute columns put back, as
    :func:`read_events` gives it; only the rows that declare something are rebuilt."""
    present = [n for n in DECLARED_COLUMNS if n in table.column_names]
    if "context" not in table.column_names or not present or table.num_rows == 0:
        return table
    declares = np.zeros(table.num_rows, bool)
    for n in present:
        declares |= table[n].is_valid().to_numpy(zero_copy_only=False)
    if not declares.any():
        return table
    where = np.flatnonzero(declares)
    merged = merge_declared(table.select(["context", *present])
                            .take(pa.array(where)).to_pandas())
    context = table["context"].to_numpy(zero_copy_only=False).astype(object)
    context[where] = merged.to_numpy(dtype=object)
    return table.set_column(table.schema.get_field_index("context"), "context",
                            pa.array(context, pa.string(), from_pandas=True))


def _plain(value: Any) -> Any:
    return bool(value) if isinstance(value, (bool, np.bool_)) else value


def _to_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    columns = {name: [r.get(name) for r in records] for name in COLUMNS}
    return pa.table({name: pa.array(values, SCHEMA.field(name).type)
                     for name, values in columns.items()})


def read_table(
    root: Path,
    *,
    start: date | None = None,
    end: date | None = None,
    columns: Iterable[str] | None = None,
) -> pa.Table:
    """Raw rows of the log for event dates in [start, end], duplicates included."""
    files = EventLog(root).files(start, end)
    wanted = list(columns) if columns is not None else list(COLUMNS)
    if not files:
        return SCHEMA.empty_table().select(wanted)
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    return dataset.to_table(columns=wanted)


def erased_residents(table: pa.Table) -> dict[str, pd.Timestamp]:
    """Resident id → time of their latest erasure request found in ``table``."""
    erasures = table.filter(pc.equal(table["type"], "erase")).select(["resident_id", "ts"])
    if erasures.num_rows == 0:
        return {}
    latest = erasures.group_by("resident_id").aggregate([("ts", "max")])
    return dict(zip(latest["resident_id"].to_pylist(),
                    [pd.Timestamp(t) for t in latest["ts_max"].to_pylist()], strict=True))


def read_events(
    root: Path,
    *,
    start: date | None = None,
    end: date | None = None,
    columns: Iterable[str] | None = None,
    apply_erasures: bool = True,
) -> pd.DataFrame:
    """The events of the log, each once, with erasures applied — the one reader every
    pipeline and report uses.

    De-duplication keeps the first ingested copy of each ``event_id``. With
    ``apply_erasures`` every event of an erased resident up to their erasure request
    (erase events included) is dropped, so erased residents vanish from training and
    reports even before compaction has rewritten the files. ``start``/``end`` filter on
    event date (UTC, inclusive); erasures are looked up across the whole log.
    """
    wanted = list(columns) if columns is not None else list(COLUMNS)
    needed = list(dict.fromkeys([*wanted, "event_id", "ingested_at", "resident_id", "ts",
                                 "type", *(DECLARED_COLUMNS if "context" in wanted else ())]))
    table = read_table(root, start=start, end=end, columns=needed)
    frame = table.to_pandas()
    if len(frame):
        frame = frame.sort_values("ingested_at", kind="stable")
        frame = frame.drop_duplicates("event_id", keep="first")
    if apply_erasures:
        whole = read_table(root, columns=["resident_id", "type", "ts"]) if (start or end) \
            else table
        erased = erased_residents(whole)
        if erased:
            cutoff = frame["resident_id"].map(erased)
            keep = cutoff.isna() | (frame["ts"] > cutoff)
            frame = frame[keep.to_numpy()]
    if "context" in wanted:
        frame = frame.assign(context=merge_declared(frame).astype(frame["context"].dtype))
    return frame.sort_values("ts", kind="stable")[wanted].reset_index(drop=True)


# --- columnar scan --------------------------------------------------------------------------

#: Rows per chunk of :func:`scan_events` (whole event dates adding up to about this many):
#: a chunk's keys and one of its columns, about 100 bytes a row, are held at a time.
SCAN_CHUNK_EVENTS = 1_000_000
_NEVER = np.iinfo(np.int64).max


def date_chunks(event_log: EventLog,
                chunk_events: int) -> list[tuple[date, date, list[Path], int]]:
    """Consecutive event-date ranges of about ``chunk_events`` raw rows each: (first date,
    last date, files, raw rows), counted from the Parquet footers (no data read)."""
    chunks: list[tuple[date, date, list[Path], int]] = []
    first: date | None = None
    files: list[Path] = []
    rows = 0
    days = event_log.partitions()
    for day in days:
        first = first or day
        found = sorted(event_log.partition_dir(day).glob("part-*.parquet"))
        files.extend(found)
        rows += sum(pq.read_metadata(f).num_rows for f in found)
        if rows >= chunk_events:
            chunks.append((first, day, files, rows))
            first, files, rows = None, [], 0
    if first is not None:
        chunks.append((first, days[-1], files, rows))
    return chunks


def erasure_register(root: Path) -> tuple[pa.Array, np.ndarray]:
    """Every erased resident and the time of their latest erasure request (µs since the
    epoch), across the whole log: the rule :func:`read_events` applies, read with a filter
    so only ``erase`` rows are materialised."""
    files = EventLog(root).files()
    if not files:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    erasures = dataset.to_table(columns=["resident_id", "ts"],
                                filter=(pc.field("type") == "erase") & pc.field("ts").is_valid())
    latest = erasures.group_by("resident_id").aggregate([("ts", "max")])
    return (latest["resident_id"].combine_chunks(),
            _int64(latest["ts_max"].cast(pa.int64()), fill=-_NEVER))


@dataclass
class EventChunk:
    """A run of the log's raw rows and which of them are events.

    ``rows`` are positions in the raw rows: each event once (the first ingested copy of an
    ``event_id``), erased residents' events up to their erasure dropped, in time order
    (ties: ingestion order, then file order) — exactly the rows and order of
    :func:`read_events`. Columns are read one at a time, when asked, as Arrow arrays of the
    raw rows, so a reader keeps only what it needs and never builds Python strings.
    """

    source: ds.Dataset | pa.Table
    rows: np.ndarray  # int64 positions in the raw rows
    residents: pa.Array  # distinct resident ids of the raw rows
    resident: np.ndarray  # int32 per raw row: index into ``residents``
    ts: np.ndarray  # int64 per raw row: ns since the epoch (UTC), int64 min when missing

    def column(self, name: str) -> pa.Array:
        """One column of the raw rows (index it with :attr:`rows`)."""
        if isinstance(self.source, pa.Table):
            return self.source[name].combine_chunks()
        return self.source.to_table(columns=[name])[name].combine_chunks()

    def full_context(self, rows: np.ndarray) -> pa.Array:
        """``context`` of the raw ``rows`` as their events carried it: a profile's declared
        attributes are typed columns in the files, so they are put back into the JSON
        (:func:`merge_declared`) for readers that parse the whole context."""
        raw = self._raw(["context"]).take(pa.array(rows, pa.int64()))
        return _with_context(raw)["context"].combine_chunks()

    def _raw(self, wanted: list[str]) -> pa.Table:
        """Raw rows of ``wanted``, plus the declared attribute columns when ``context`` is
        among them (to put back into it)."""
        names = (self.source.column_names if isinstance(self.source, pa.Table)
                 else self.source.schema.names)
        extra = [n for n in DECLARED_COLUMNS if n in names and n not in wanted] \
            if "context" in wanted else []
        columns = [*wanted, *extra]
        return (self.source.select(columns) if isinstance(self.source, pa.Table)
                else self.source.to_table(columns=columns))

    def table(self, columns: Iterable[str]) -> pa.Table:
        """The events as an Arrow table (what :func:`read_events` returns, in Arrow)."""
        wanted = list(columns)
        return _with_context(self._raw(wanted).take(pa.array(self.rows))).select(wanted)

    @classmethod
    def read(cls, dataset: ds.Dataset,
             erased: tuple[pa.Array, np.ndarray] | None) -> EventChunk:
        """De-duplicate, apply ``erased`` (see :func:`erasure_register`) and order."""
        keys = dataset.to_table(columns=["event_id", "ingested_at", "ts", "resident_id"])
        residents, resident = _dictionary(keys["resident_id"])
        ingested = _int64(keys["ingested_at"].cast(pa.int64()), fill=_NEVER)
        ts = _int64(keys["ts"].cast(pa.int64()), fill=_NEVER)
        keep = _first_copies(keys["event_id"], ingested)
        del keys
        if erased is not None and len(erased[0]):
            found = _int64(pc.index_in(residents, value_set=erased[0]), fill=-1)[resident]
            hit = found >= 0
            # an erased resident's events at or before the request go (a missing time is
            # never after it)
            keep[hit] &= (ts[hit] > erased[1][found[hit]]) & (ts[hit] != _NEVER)
        rows = np.flatnonzero(keep)
        rows = rows[np.lexsort((ingested[rows], ts[rows]))]
        return cls(dataset, rows, residents, resident, _ns(ts, 1000))

    @classmethod
    def of(cls, table: pa.Table) -> EventChunk:
        """Events already read (each once), put in time order (stable)."""
        residents, resident = _dictionary(table["resident_id"])
        times = table["ts"]
        if not pa.types.is_timestamp(times.type):
            times = times.cast(pa.timestamp("ns", tz="UTC"))
        ts = _int64(times.cast(pa.int64()), fill=_NEVER)
        unit = times.type.unit
        per_ns = {"s": 10**9, "ms": 10**6, "us": 1000, "ns": 1}[unit]
        return cls(table, np.argsort(ts, kind="stable"), residents, resident, _ns(ts, per_ns))


def scan_events(root: Path, *, chunk_events: int = SCAN_CHUNK_EVENTS,
                apply_erasures: bool = True,
                chunks: list[tuple[date, date, list[Path], int]] | None = None,
                ) -> Iterator[EventChunk]:
    """The log in chunks of whole event dates, oldest first, each an :class:`EventChunk`
    (``chunks``: a plan from :func:`date_chunks`, made here when None).

    Chunking by date is exact: the copies of an event share its time, hence its date
    partition, and erasures are looked up across the whole log once, before the first
    chunk. Concatenating the chunks' events gives :func:`read_events`'s result.
    """
    erased = erasure_register(root) if apply_erasures else None
    plan = date_chunks(EventLog(root), chunk_events) if chunks is None else chunks
    for _, _, files, _ in plan:
        if files:
            yield EventChunk.read(
                ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet"), erased)


def _int64(values: pa.Array | pa.ChunkedArray, fill: int) -> np.ndarray:
    """An integer Arrow array as int64 numpy, nulls replaced by ``fill``."""
    values = pc.fill_null(values, fill)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.to_numpy().astype(np.int64, copy=False)


def _ns(ts: np.ndarray, per_ns: int) -> np.ndarray:
    """Times in ``1/per_ns`` ns units as ns, missing ones (:data:`_NEVER`) as int64 min."""
    out = ts * per_ns
    out[ts == _NEVER] = np.iinfo(np.int64).min
    return out


def _dictionary(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(distinct values in order of first appearance, int32 index per row); a missing
    value is a value of its own, as pandas' de-duplication treats it."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return encoded.dictionary, encoded.indices.to_numpy().astype(np.int32, copy=False)


def _first_copies(event_ids: pa.ChunkedArray, ingested: np.ndarray) -> np.ndarray:
    """Per raw row: is it the first ingested copy of its ``event_id`` (ties: file order)?"""
    distinct, code = _dictionary(event_ids)
    keep = np.ones(len(code), dtype=bool)
    if len(distinct) == len(code):
        return keep
    copies = np.flatnonzero(np.bincount(code, minlength=len(distinct))[code] > 1)
    copies = copies[np.argsort(ingested[copies], kind="stable")]
    _, first = np.unique(code[copies], return_index=True)
    keep[copies] = False
    keep[copies[first]] = True
    return keep
