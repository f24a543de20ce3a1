"""Where simulated and replayed events go: the event log directly, or Kafka.

* :class:`EventLogSink` appends Arrow tables with :meth:`EventLog.append` (durable when
  it returns) — the path for large batch runs: no JSON, no per-event Python objects.
* :class:`KafkaSink` sends each event as contract JSON through
  :class:`~bouquet.streaming.producer.EventProducer` (keyed by resident, ``acks=all``,
  idempotent), optionally paced to ``rate`` events per second or to the events' own
  timestamps compressed ``speedup`` times; it checks every acknowledgement, so a run that
  returns normally lost nothing.
* :class:`MemorySink` keeps the tables (tests, calibration).

All sinks are callables taking a table, plus ``close()``; ``events`` counts what they took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.eventlog import EventLog
from bouquet.core.settings import Settings
from bouquet.simulation.columns import table_to_payloads

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
DAY_US = 86_400 * 1_000_000


class MemorySink:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.events = 0

    def __call__(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.events += table.num_rows

    def table(self) -> pa.Table:
        return pa.concat_tables(self.tables) if self.tables else pa.table({})

    def close(self) -> None:
        pass


class EventLogSink:
    """Appends to the event log at ``root``, in chunks of at most ``chunk_rows`` rows."""

    def __init__(self, root: Path, *, chunk_rows: int = 4_000_000,
                 progress: Progress | None = None) -> None:
        self.log = EventLog(Path(root), writer_id="sim")
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.events = 0
        self.files = 0

    def __call__(self, table: pa.Table) -> None:
        # One append per UTC day (the log's partition) of a time-sorted table: the event
        # log then filters small tables instead of scanning the whole one once per day.
        ts = table["ts"].cast(pa.int64()).to_numpy()
        if len(ts) > 1 and (np.diff(ts) < 0).any():
            table = table.take(pc.sort_indices(table["ts"]))
            ts = table["ts"].cast(pa.int64()).to_numpy()
        day = ts // DAY_US
        cuts = [0, *(np.flatnonzero(np.diff(day)) + 1).tolist(), len(ts)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            for offset in range(lo, hi, self.chunk_rows):
                chunk = table.slice(offset, min(self.chunk_rows, hi - offset))
                self.files += len(self.log.append(chunk))
                self.events += chunk.num_rows
                if self.progress is not None:
                    self.progress(chunk.num_rows)

    def close(self) -> None:
        pass


class KafkaSink:
    """Sends events to the interactions topic, paced and acknowledged.

    ``rate`` caps events per second; ``offsets`` (seconds after the first event, one per
    row, e.g. from :func:`bouquet.simulation.replay.pacing_offsets`) replays at the
    events' own rhythm instead. Acknowledgements are checked every ``check_every`` events
    and at :meth:`close`; a failure raises :class:`~bouquet.streaming.producer.ProduceFailed`.
    """

    def __init__(self, settings: Settings, *, rate: float | None = None,
                 progress: Progress | None = None, check_every: int = 20_000,
                 producer: Any | None = None) -> None:
        from bouquet.streaming.producer import EventProducer

        self.producer = producer or EventProducer(settings, throughput=True)
        self.rate = rate if rate and rate > 0 else None
        self.progress = progress
        self.check_every = check_every
        self.events = 0
        self._pending: list[Any] = []
        self._t0: float | None = None
        #: (event id, resident id) of the events sent since the last wait_applied
        self._unconfirmed: list[tuple[str, str]] = []

    def __call__(self, table: pa.Table, offsets: np.ndarray | None = None) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
        self._unconfirmed += zip(table["event_id"].to_pylist(),
                                 table["resident_id"].to_pylist(), strict=True)
        reported = 0
        for i, payload in enumerate(table_to_payloads(table)):
            due = (offsets[i] if offsets is not None
                   else (self.events / self.rate if self.rate else None))
            if due is not None:
                wait = self._t0 + due - time.monotonic()
                if wait > 0.002:
                    time.sleep(wait)
            self._pending.append(self.producer.send(payload))
            self.events += 1
            if len(self._pending) >= self.check_every:
                self._check()
            if self.progress is not None and (i + 1) % 1000 == 0:
                self.progress(i + 1 - reported)
                reported = i + 1
        if self.progress is not None:
            self.progress(table.num_rows - reported)

    def _check(self) -> None:
        from kafka.errors import KafkaError

        from bouquet.streaming.producer import ProduceFailed

        self.producer.flush()
        try:
            for future in self._pending:
                future.get(timeout=30)
        except KafkaError as exc:
            raise ProduceFailed(f"broker did not acknowledge an event: {exc}") from exc
        self._pending.clear()

    def wait_applied(self, settings: Settings, timeout_s: float = 120.0) -> bool:
        """Block until ingestion has applied every event sent since the last call; False,
        with a warning, after ``timeout_s``. The closed loop waits so the next week's
        answers are given on what residents did this week."""
        self._check()
        missing, self._unconfirmed = self._unconfirmed, []
        return wait_until_applied(settings, missing, timeout_s)

    def close(self) -> None:
        try:
            self._check()
        finally:
            self.producer.close()


def wait_until_applied(settings: Settings, events: list[tuple[str, str]],
                       timeout_s: float = 120.0) -> bool:
    """Block until ingestion has applied ``events`` (event id, resident id) — their
    de-duplication marker is in Redis, which the consumer writes with the event's effects,
    after the event is in the log; False, with a warning, after ``timeout_s``."""
    from bouquet.core.keys import Keys
    from bouquet.core.redisclient import redis_client
    from bouquet.streaming.state import applied_event_ids

    keys = Keys(settings.redis_key_prefix)
    missing = list(events)
    client = redis_client(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while missing:
            applied = applied_event_ids(client, keys, missing, settings.ingest_dedup_ttl_s)
            missing = [e for e in missing if e[0] not in applied]
            if not missing:
                break
            if time.monotonic() > deadline:
                log.warning("%d events not applied by ingestion after %.0f s", len(missing),
                            timeout_s)
                return False
            time.sleep(0.25)
    finally:
        client.close()
    return True
