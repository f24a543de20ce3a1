"""Compaction of the event log: erasures and retention applied to the files themselves.

``read_events`` hides an erased resident's events at once (it applies the ``erase`` events it
finds), but the bytes stay in the Parquet files until they are rewritten. Compaction does
that rewrite, one event-date partition at a time:

1. **Learn erasures.** Every ``erase`` event in the log is recorded in the erasure register
   (:class:`~bouquet.privacy.erasure.ErasureRegister`, keyed references only), and the
   erased residents' precomputed lists are deleted from every published keyspace (the
   consumer erases the real-time state when it ingests the event; the published lists are
   what it does not reach). From then on the register, not the ``erase`` event, remembers
   the erasure — the event itself carries the raw id and is dropped.
2. **Drop** from each partition: events of erased residents time-stamped at or before
   their erasure (including *late* events that arrived after an earlier compaction),
   every ``erase`` event, and events older than their type's retention period
   (``BOUQUET_RETENTION_DAYS``, per type; types without a period are kept); physical
   duplicates (a redelivered batch) are merged, keeping the first ingested copy as
   ``read_events`` does.
3. **Rewrite** a partition only when something is dropped or it has at least
   ``min_files`` files (the consumer writes one per batch): the kept rows are written as one
   new file with :meth:`EventLog.append` (temp name, fsync, rename, directory fsync), *then*
   the old files are unlinked and the directory fsynced. At every instant the files give
   the same ``read_events`` answer: between the two steps a reader sees old and new copies
   of each kept event and de-duplicates them (same ``event_id``, same ``ingested_at``);
   a crash between them leaves a partition that the next compaction finishes.
   Stale temporary files (``.tmp-*`` older than an hour, left by a writer that crashed)
   may hold erased events and are removed.

The ``now`` argument is the clock retention is measured against (tests use a fake one).
Readers that listed a partition's files just before they were unlinked can fail to open one;
run compaction when no training or report is reading (nightly), as ``bouquet compact`` does
by hand.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bouquet.core.eventlog import COLUMNS, SCHEMA, EventLog, fsync_dir
from bouquet.core.keys import Keys
from bouquet.core.redisclient import primaries
from bouquet.core.settings import Settings
from bouquet.privacy.erasure import ErasureRegister, delete_published

log = logging.getLogger(__name__)

#: A temporary file older than this is a crashed writer's leftover, not a write in progress.
STALE_TMP_S = 3600


@dataclass
class CompactionReport:
    """What one compaction did (or, with ``dry_run``, would do)."""

    now: str
    dry_run: bool
    partitions_seen: int = 0
    partitions_rewritten: int = 0
    partitions_removed: int = 0
    files_read: int = 0
    files_written: int = 0
    files_removed: int = 0
    rows_before: int = 0
    rows_after: int = 0
    dropped_erased: int = 0
    dropped_erase_events: int = 0
    dropped_retention: dict[str, int] = field(default_factory=dict)
    dropped_duplicates: int = 0
    erasures_recorded: int = 0
    published_lists_deleted: int = 0
    stale_tmp_removed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scan(files: list[Path], columns: list[str], filter_: Any = None) -> pa.Table:
    if not files:
        return SCHEMA.empty_table().select(columns)
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    return dataset.to_table(columns=columns, filter=filter_)


def _epoch_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    micros = pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return micros.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6


def drop_mask(table: pa.Table, erased: dict[str, float], retention_days: dict[str, int],
              now: datetime) -> tuple[np.ndarray, dict[str, Any]]:
    """Per row: True to drop. Also returns counts by cause (an erased row is counted as
    erased even when it is also expired)."""
    n = table.num_rows
    kinds = table["type"].to_numpy(zero_copy_only=False).astype(str) if n else np.array([])
    ts = _epoch_seconds(table["ts"]) if n else np.array([])
    is_erase = kinds == "erase"
    if erased and n:
        rids = table["resident_id"].to_numpy(zero_copy_only=False)
        cut = np.array([erased.get(r, np.nan) for r in rids], dtype=np.float64)
        is_erased = ~np.isnan(cut) & (ts <= cut) & ~is_erase
    else:
        is_erased = np.zeros(n, dtype=bool)
    expired = np.zeros(n, dtype=bool)
    by_type: dict[str, int] = {}
    for kind, days in retention_days.items():
        limit = (now - timedelta(days=int(days))).timestamp()
        hit = (kinds == kind) & (ts < limit) & ~is_erased & ~is_erase
        if hit.any():
            by_type[kind] = int(hit.sum())
            expired |= hit
    counts = {"erase_events": int(is_erase.sum()), "erased": int(is_erased.sum()),
              "retention": by_type}
    return is_erase | is_erased | expired, counts


def _first_copies(table: pa.Table) -> pa.Table:
    """One row per ``event_id``: the first ingested copy (what ``read_events`` keeps)."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    order = pc.sort_indices(indexed, sort_keys=[("ingested_at", "ascending"),
                                                ("__row", "ascending")])
    indexed = indexed.take(order)
    indexed = indexed.set_column(indexed.schema.get_field_index("__row"), "__row",
                                 pa.array(np.arange(indexed.num_rows)))
    firsts = indexed.group_by("event_id").aggregate([("__row", "min")])["__row_min"]
    keep = pc.sort_indices(firsts)
    return indexed.take(pc.take(firsts, keep)).drop_columns(["__row"])


def compact(settings: Settings, *, now: datetime | None = None,
            register: ErasureRegister | None = None, redis_client: Any = None,
            min_files: int = 8, dry_run: bool = False) -> CompactionReport:
    """Apply erasures and retention to the event log's files (see the module docstring)."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    report = CompactionReport(now=now.isoformat(), dry_run=dry_run)
    root = Path(settings.event_log_path)
    event_log = EventLog(root, writer_id="compact")
    register = register or ErasureRegister.for_settings(settings)
    all_files = event_log.files()
    if not all_files:
        report.notes.append(f"no event log at {root}")
        report.seconds = time.perf_counter() - started
        return report

    # 1. erase events → the register (and the published keyspace)
    erasures = _scan(all_files, ["resident_id", "ts"], pc.field("type") == "erase")
    latest: dict[str, float] = {}
    for rid, ts in zip(erasures["resident_id"].to_pylist(),
                       _epoch_seconds(erasures["ts"]).tolist(), strict=True):
        latest[rid] = max(ts, latest.get(rid, float("-inf")))
    if latest and not dry_run:
        new = register.record_many(latest.items(), "event-log")
        report.erasures_recorded = len(new)
        if new and redis_client is not None:
            try:
                report.published_lists_deleted = delete_published(
                    redis_client, Keys(settings.redis_key_prefix), new)
            except Exception as exc:  # Redis down: the lists go when their version expires
                report.notes.append(f"published lists not deleted (redis: {exc})")
    register.reload()

    # 2. which residents of the log are erased (one HMAC per distinct resident)
    residents = pc.unique(_scan(all_files, ["resident_id"])["resident_id"]).to_pylist()
    erased = register.erased_among(r for r in residents if r is not None)
    if dry_run:
        erased.update({r: max(t, erased.get(r, t)) for r, t in latest.items()})

    # 3. partition by partition
    for day, files in event_log.files_by_day().items():
        report.partitions_seen += 1
        directory = event_log.partition_dir(day)
        report.stale_tmp_removed += _remove_stale_tmp(directory, dry_run)
        if not files:
            continue
        light = _scan(files, ["resident_id", "type", "ts"])
        drop, _ = drop_mask(light, erased, settings.retention_days, now)
        if not drop.any() and len(files) < min_files:
            report.rows_before += light.num_rows
            report.rows_after += light.num_rows
            continue
        _rewrite(event_log, day, files, erased, settings.retention_days, now, report, dry_run)
    report.seconds = time.perf_counter() - started
    log.info("compaction: %d partitions rewritten, %d rows dropped for erasure, %d for "
             "retention, %d duplicates merged (%.1f s)", report.partitions_rewritten,
             report.dropped_erased + report.dropped_erase_events,
             sum(report.dropped_retention.values()), report.dropped_duplicates, report.seconds)
    return report


def _rewrite(event_log: EventLog, day: date, files: list[Path], erased: dict[str, float],
             retention: dict[str, int], now: datetime, report: CompactionReport,
             dry_run: bool) -> None:
    table = _scan(files, list(COLUMNS))
    report.files_read += len(files)
    report.rows_before += table.num_rows
    unique = _first_copies(table)
    report.dropped_duplicates += table.num_rows - unique.num_rows
    drop, counts = drop_mask(unique, erased, retention, now)
    report.dropped_erased += counts["erased"]
    report.dropped_erase_events += counts["erase_events"]
    for kind, n in counts["retention"].items():
        report.dropped_retention[kind] = report.dropped_retention.get(kind, 0) + n
    kept = unique.filter(pa.array(~drop))
    report.rows_after += kept.num_rows
    if dry_run:
        return
    written = event_log.append(kept) if kept.num_rows else []
    report.files_written += len(written)
    directory = event_log.partition_dir(day)
    for path in files:
        path.unlink()
    report.files_removed += len(files)
    fsync_dir(directory)
    report.partitions_rewritten += 1
    if not any(directory.iterdir()):
        directory.rmdir()
        fsync_dir(event_log.root)
        report.partitions_removed += 1


def _remove_stale_tmp(directory: Path, dry_run: bool) -> int:
    removed = 0
    limit = time.time() - STALE_TMP_S
    for path in directory.glob(".tmp-*"):
        try:
            if path.stat().st_mtime < limit:
                if not dry_run:
                    path.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    return removed


def rewrite_redis_aof(client: Any, wait_s: float = 60.0) -> str:
    """Ask Redis to rewrite its append-only file, so deleted keys (an erased resident's)
    leave the AOF history too; waits up to ``wait_s`` for the rewrite to finish. On a Redis
    Cluster every primary keeps its own AOF, so each is asked.

    Returns what happened: ``rewritten``, ``no AOF`` (persistence off), ``timeout`` or
    ``refused: …`` (managed Redis services may disable the command); on a cluster whose
    primaries answer differently, ``<node>: <answer>`` for each, ``; ``-separated."""
    try:
        nodes = primaries(client)
    except Exception as exc:  # redis.ConnectionError: the slot map cannot be read
        return f"refused: {exc}"
    answers = [_rewrite_one_aof(node, wait_s) for node in nodes]
    if len(set(answers)) == 1:
        return answers[0]
    return "; ".join(f"{_node_name(node)}: {answer}"
                     for node, answer in zip(nodes, answers, strict=True))


def _node_name(node: Any) -> str:
    options = node.connection_pool.connection_kwargs
    return f"{options.get('host')}:{options.get('port')}"


def _rewrite_one_aof(client: Any, wait_s: float) -> str:
    """:func:`rewrite_redis_aof` on one server."""
    try:
        info = client.info("persistence")
        if not int(info.get("aof_enabled", 0)):
            return "no AOF"
        deadline = time.monotonic() + wait_s
        while int(client.info("persistence").get("aof_rewrite_in_progress", 0)):
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(0.05)
        before = int(client.info("persistence").get("aof_rewrites", 0)) \
            if "aof_rewrites" in info else None
        client.bgrewriteaof()
        while True:
            now_info = client.info("persistence")
            running = int(now_info.get("aof_rewrite_in_progress", 0)) or \
                int(now_info.get("aof_rewrite_scheduled", 0))
            done = before is None or int(now_info.get("aof_rewrites", before)) > before
            if not running and done:
                status = now_info.get("aof_last_bgrewrite_status", "ok")
                return "rewritten" if status in ("ok", b"ok") else f"failed: {status}"
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(0.05)
    except Exception as exc:  # redis.ResponseError, ConnectionError
        return f"refused: {exc}"
