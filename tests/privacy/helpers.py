"""Where could a resident id still be? Helpers that look everywhere: every Redis key and
value, and every file under a directory — raw bytes, and decoded where a format compresses
(Parquet columns, ``.npz`` arrays), so a compressed copy cannot hide from the search."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bouquet.core.redisdump import read_keys, scan_keys


def redis_occurrences(client: Any, needle: str) -> list[str]:
    """Every key whose name or value contains ``needle`` (the whole database, any type)."""
    target = needle.encode()
    found = []
    for key, kind, raw in read_keys(client, scan_keys(client)):
        if needle in key:
            found.append(f"key {key!r}")
        elif any(target in value for value in _flat_bytes(raw)):
            found.append(f"value of {key!r} ({kind})")
    return found


def _flat_bytes(raw: Any) -> list[bytes]:
    """The byte strings of a Redis reply (a value, a list, a set, a hash, stream entries)."""
    if isinstance(raw, bytes):
        return [raw]
    if isinstance(raw, dict):
        return [b for pair in raw.items() for b in _flat_bytes(list(pair))]
    if isinstance(raw, list | tuple | set):
        return [b for item in raw for b in _flat_bytes(item)]
    return []


def _decoded_parquet(path: Path, target: str) -> bool:
    table = pq.read_table(path)
    for column in table.columns:
        for value in column.to_pylist():
            if value is not None and target in str(value):
                return True
    return False


def _decoded_npz(data: bytes, target: str) -> bool:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        for name in npz.files:
            array = npz[name]
            if array.dtype.kind in "US" and any(target in str(v) for v in array.ravel()):
                return True
    return False


def file_occurrences(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` holding ``needle``: in its bytes, or once decoded (Parquet
    columns, ``.npz`` arrays, any zip member)."""
    target = needle.encode()
    found = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # removed while listing (e.g. an old AOF part)
            continue
        if target in data:
            found.append(f"{path} (bytes)")
        elif path.suffix == ".parquet" and _decoded_parquet(path, needle):
            found.append(f"{path} (parquet column)")
        elif path.suffix == ".npz" and _decoded_npz(data, needle):
            found.append(f"{path} (npz array)")
        elif zipfile.is_zipfile(io.BytesIO(data)) and path.suffix != ".npz":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    if any(target in archive.read(n) for n in archive.namelist()):
                        found.append(f"{path} (zip member)")
            except zipfile.BadZipFile:  # binary data that merely contains a zip signature
                continue
    return found


def ingest_until_idle(settings: Any, idle_s: float = 1.5, erasure: Any = None) -> Any:
    """Run the real consumer in this process until the topic is drained and idle."""
    from bouquet.core.catalog import load_catalog
    from bouquet.localstack import ensure_topics
    from bouquet.streaming.consumer import IngestConsumer, IngestOptions

    ensure_topics(settings)
    options = IngestOptions.from_settings(settings, idle_seconds=idle_s, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, log_every_s=0,
                                          batch_min_ms=20, install_signal_handlers=False)
    return IngestConsumer(settings, load_catalog(settings.catalog_path), options,
                          erasure=erasure).run()


def produce_events(settings: Any, events: list[dict]) -> None:
    """Produce events (dicts) in order, waiting for every acknowledgement."""
    from bouquet.localstack import ensure_topics
    from bouquet.streaming.producer import EventProducer

    ensure_topics(settings)
    with EventProducer(settings) as producer:
        producer.send_and_wait(events, timeout_s=30)
