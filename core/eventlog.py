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

import logging
import os
import time
import uuid
from collections.abc import Iterable, Sequence
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
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
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
        days = []
        for child in self.root.iterdir():
            if child.is_dir() and child.name.startswith(PARTITION_PREFIX):
                days.append(date.fromisoformat(child.name[len(PARTITION_PREFIX):]))
        return sorted(days)

    def files(self, start: date | None = None, end: date | None = None) -> list[Path]:
        """Complete Parquet files for event dates in [start, end] (both inclusive)."""
        found: list[Path] = []
        for day in self.partitions():
            if (start and day < start) or (end and day > end):
                continue
            found.extend(sorted(self.partition_dir(day).glob("part-*.parquet")))
        return found

    def append(self, records: Sequence[dict[str, Any]] | pa.Table) -> list[Path]:
        """Durably write events (dicts in :data:`COLUMNS` layout, or an Arrow table).

        Returns the files written. When this returns, the events survive a crash of this
        process and of the machine (data and directory entries are fsynced).
        """
        table = records if isinstance(records, pa.Table) else _to_table(records)
        if table.num_rows == 0:
            return []
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
                                 "type"]))
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
    return frame.sort_values("ts", kind="stable")[wanted].reset_index(drop=True)
