"""The ingestion consumer: Kafka → validated → event log (durable) → Redis → committed.

One :class:`IngestConsumer` is one member of the consumer group ``settings.consumer_group``
on ``settings.topic_events``; run as many processes as there are partitions to scale out.
Each batch (up to ``ingest_batch_max_events`` records or ``ingest_batch_max_ms``) goes
through, in this order:

1. validation (:mod:`bouquet.streaming.batch`); bad records are sent to the dead-letter
   topic with their original bytes and a reason;
2. :meth:`bouquet.core.eventlog.EventLog.append` — durable when it returns — and, side by
   side with it, 3. the Redis batch script (:mod:`bouquet.streaming.state`), which applies
   each event's effects once (per-event marker set atomically with the effects);
   With erasure hooks (:class:`ErasureHooks`, wired by ``bouquet ingest``), before 2 and 3
   events time-stamped at or before an erasure of their resident that came before them
   (late data of an erased resident) are dropped — never logged, never applied — and
   after them the batch's ``erase`` events are recorded in the erasure register and the
   residents' published lists deleted;
4. dead-letter acknowledgements awaited, dead-letter counters updated;
5. offsets committed.

A crash anywhere before 5 means the batch is delivered again: the log then may hold a second
physical copy (readers de-duplicate on ``event_id``) and Redis skips every event whose
marker is set, so the outcome equals a single delivery. Nothing is committed that is not
durable. Broker, Redis and disk failures are retried with exponential backoff, within a
bound (``IngestOptions.retry_*``), after which the process exits non-zero *without*
committing, to be restarted by its supervisor.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import redis
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata
from tenacity import (
    RetryCallState,
    Retrying,
    retry_base,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from bouquet.core.catalog import Catalog, load_catalog
from bouquet.core.eventlog import EventLog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import RecommendationIds
from bouquet.core.redisclient import SyncClient, redis_client
from bouquet.core.settings import Settings
from bouquet.streaming import metrics
from bouquet.streaming.batch import Batch, BatchBuilder, DeadLetter
from bouquet.streaming.producer import EventProducer, ProduceFailed
from bouquet.streaming.state import StateConfig, StateWriter, newest_event_times

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Commit errors that mean "the group moved on": retrying the same commit cannot succeed;
#: the records will be delivered again (to us or to another member) and de-duplicated.
_REBALANCE_ERRORS = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError,
                     UnknownMemberIdError)
#: Failures of Redis and of the disk that are worth retrying (a restart, a full moment).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
              redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError, OSError)


class ErasureHooks(Protocol):
    """What the consumer calls for erasures reaching stores it does not own (the register,
    the published keyspace: :class:`bouquet.privacy.erasure.ErasureCascade`). A protocol,
    so ``streaming`` does not depend on ``pipelines``; both calls must be idempotent (a
    batch that fails is written again)."""

    def after_erase(self, erased: Iterable[tuple[str, float]]) -> int:
        """Record erasures ``(resident id, epoch s)`` durably and cascade them."""
        ...

    def erased_among(self, resident_ids: Iterable[str]) -> Mapping[str, float]:
        """Erasure time (epoch s) of those of ``resident_ids`` erased on record (may not
        iterate ``resident_ids`` at all when nobody was)."""
        ...


class IngestError(RuntimeError):
    """A failure that outlasted the retries; the current batch was not committed."""


class _Unacknowledged(Exception):
    """Dead letters the broker has not acknowledged (yet)."""


@dataclass
class IngestOptions:
    """How one consumer process runs. Defaults come from :class:`Settings`; tests and the
    benchmark override them."""

    batch_max_events: int = 5000
    batch_max_ms: int = 1000
    #: A batch is written early once it is this old and less than a batch is waiting
    #: behind it: low latency when traffic is light, large batches (few files) when there
    #: is a backlog.
    batch_min_ms: int = 200
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300_000
    #: fetch sizes: large fetches keep kafka-python's decoder busy (see docs/ingestion.md)
    fetch_max_bytes: int = 64 << 20
    max_partition_fetch_bytes: int = 16 << 20
    fetch_max_wait_ms: int = 200
    #: batches handed to the writer thread and not yet committed (see ``_flush``)
    max_batches_in_flight: int = 2
    #: stop when caught up and nothing arrived for this many seconds (None: run forever)
    idle_seconds: float | None = None
    #: stop after this many records (valid or not); offsets are committed exactly there
    max_events: int | None = None
    retry_attempts: int = 8
    retry_base_s: float = 0.25
    retry_max_s: float = 8.0
    log_every_s: float = 10.0
    #: keep every produce→Redis delay (ms) in :attr:`IngestStats.visible_delays_ms`
    record_delays: bool = False
    install_signal_handlers: bool = True
    #: during the run, keep the objects that exist at start-up (modules, catalog, clients:
    #: ~120k) out of the cyclic garbage collector's sight and collect less often. The
    #: consumer allocates ~10 short-lived containers per record; the collections that
    #: walked all those objects took 10-15 % of the consumer thread (restored at the end)
    tune_gc: bool = True
    client_id: str = field(default_factory=lambda: f"bouquet-ingest-{uuid.uuid4().hex[:6]}")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> IngestOptions:
        values: dict[str, Any] = {
            "batch_max_events": settings.ingest_batch_max_events,
            "batch_max_ms": settings.ingest_batch_max_ms,
            "session_timeout_ms": settings.ingest_session_timeout_ms,
            "heartbeat_interval_ms": settings.ingest_heartbeat_interval_ms,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class IngestStats:
    """What one run did (also returned by :meth:`IngestConsumer.run`)."""

    received: int = 0
    logged: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    retries: int = 0
    #: seconds the writer thread spent per stage (event log, Redis, dead letters), and
    #: seconds the consumer thread waited for it: where a run's time went
    log_write_s: float = 0.0
    redis_s: float = 0.0
    dlq_s: float = 0.0
    #: events of erased residents time-stamped before their erasure, dropped unwritten
    erased_late: int = 0
    writer_wait_s: float = 0.0
    first_record_at: float | None = None  # wall clock (time.time())
    last_commit_at: float | None = None
    visible_delays_ms: list[int] = field(default_factory=list)
    #: (wall-clock time a batch was durable and its commit attempted, records in it)
    batch_log: list[tuple[float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["dead_letter_total"] = sum(self.dead_letters.values())
        return out


def state_config(settings: Settings) -> StateConfig:
    return StateConfig(recent_cap=settings.ingest_recent_cap,
                       dedup_ttl_s=settings.ingest_dedup_ttl_s,
                       counter_ttl_s=settings.ingest_counter_ttl_days * 86400)


class _Listener(ConsumerRebalanceListener):
    """Hand partitions over cleanly. kafka-python 3 runs listeners on its IO thread, where
    blocking calls (commit) are refused; so nothing is written or committed here: the
    unwritten batch is dropped and its records are read again (by us or by the new
    owner) from the last commit."""

    def __init__(self, owner: IngestConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.owner._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.owner._on_assigned(assigned)


class IngestConsumer:
    """One member of the ingestion consumer group (see the module docstring)."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None,
                 options: IngestOptions | None = None,
                 erasure: ErasureHooks | None = None) -> None:
        self.settings = settings
        self.erasure = erasure
        self.options = options or IngestOptions.from_settings(settings)
        self.catalog = catalog or load_catalog(settings.catalog_path)
        self.keys = Keys(settings.redis_key_prefix)
        self.builder = BatchBuilder(self.catalog, self.keys,
                                    max_event_bytes=settings.max_event_bytes,
                                    max_future_skew_s=settings.max_future_skew_s,
                                    max_past_skew=settings.past_skew_limits(),
                                    max_dates=settings.ingest_batch_max_dates,
                                    recommendation_ids=RecommendationIds.for_settings(settings))
        self.event_log = EventLog(settings.event_log_path)
        self.stats = IngestStats()
        self._stop = threading.Event()
        self._batch = Batch()
        self._consumer: KafkaConsumer | None = None
        self._producer: EventProducer | None = None
        self._redis: SyncClient | None = None
        self._state: StateWriter | None = None
        #: (topic, partition) → next offset we will see (tracked from polled records)
        self._positions: dict[tuple[str, int], int] = {}
        #: (topic, partition) → offset to seek back to if the partition is re-assigned
        self._rewind: dict[tuple[str, int], int] = {}
        #: batches handed to the writer thread, oldest first: (batch, future, generation)
        self._inflight: deque[tuple[Batch, Future[None], int]] = deque()
        #: set by the writer thread when a write failed: later batches are not written
        #: (their effects would land before those of the failed one, out of order)
        self._write_failed = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self._log_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-log")
        #: bumped on every revocation, so a write that straddles a rebalance is not committed
        self._generation = 0
        #: set once the group has assigned partitions to this member (tests, benchmark)
        self.assigned = threading.Event()
        self._assigned_at = 0.0  # monotonic time of the latest assignment
        self._revoked_at = 0.0  # monotonic time of the latest revocation

    # --- lifecycle ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish: the current batch is written and committed first."""
        self._stop.set()

    def _connect(self) -> None:
        def connect() -> StateWriter:
            if self._redis is None:  # a cluster client asks for the slot map at once
                self._redis = redis_client(self.settings.redis_url, socket_timeout=30,
                                           socket_connect_timeout=5, health_check_interval=30)
            return StateWriter(self._redis, self.keys, state_config(self.settings))

        self._state = self._retry("redis", connect)
        # a crash between a cluster's two write steps left aggregates in the outboxes
        self._retry("redis", self._state.drain)
        try:
            self._consumer = self._new_consumer()
        except KafkaError as exc:
            raise IngestError(f"cannot reach the broker at "
                              f"{self.settings.kafka_bootstrap_servers}: {exc}") from exc
        self._consumer.subscribe([self.settings.topic_events], listener=_Listener(self))

    def _new_consumer(self) -> KafkaConsumer:
        o = self.options
        return KafkaConsumer(
            **self.settings.kafka_client_options(),
            group_id=self.settings.consumer_group,
            client_id=o.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=o.session_timeout_ms,
            heartbeat_interval_ms=o.heartbeat_interval_ms,
            max_poll_interval_ms=o.max_poll_interval_ms,
            max_poll_records=o.batch_max_events,
            fetch_max_bytes=o.fetch_max_bytes,
            max_partition_fetch_bytes=o.max_partition_fetch_bytes,
            fetch_max_wait_ms=o.fetch_max_wait_ms,
            request_timeout_ms=max(30_000, o.session_timeout_ms + 5000),
        )

    def _dlq_producer(self) -> EventProducer:
        if self._producer is None:
            try:
                self._producer = EventProducer(self.settings, linger_ms=5)
            except ProduceFailed as exc:
                raise IngestError(f"no producer for the dead letters: {exc}") from exc
        return self._producer

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:  # closing must not hide the real outcome
                log.warning("error closing the consumer", exc_info=True)
        if self._producer is not None:
            try:
                self._producer.close(10)
            except Exception:
                log.warning("error closing the dead-letter producer", exc_info=True)
        if self._redis is not None:
            self._redis.close()

    def run(self) -> IngestStats:
        """Consume until stopped (signal, :meth:`stop`, idle, max events); return stats."""
        previous = self._install_signals()
        gc_thresholds: tuple[int, int, int] | None = None
        o = self.options
        started = last_record = last_log = time.monotonic()
        last_logged_count = last_received = 0
        clean_exit = False
        try:
            self._connect()
            if o.tune_gc:
                gc_thresholds = _tune_gc()
            while not self._stop.is_set():
                self._poll_once()
                now = time.monotonic()
                if self.stats.received != last_received:
                    last_record, last_received = now, self.stats.received
                if self._should_flush(now):
                    self._flush()
                else:
                    while self._inflight and self._inflight[0][1].done():
                        self._finish_oldest()
                if o.log_every_s and now - last_log >= o.log_every_s:
                    rate = (self.stats.received - last_logged_count) / (now - last_log)
                    log.info("ingest %s: %.0f records/s, %d received, %d applied, %d duplicate,"
                             " %d dead letters, lag %s", o.client_id, rate, self.stats.received,
                             self.stats.applied, self.stats.duplicates,
                             sum(self.stats.dead_letters.values()), self._lag())
                    last_log, last_logged_count = now, self.stats.received
                if o.max_events is not None and self.stats.received >= o.max_events \
                        and not self._batch.records:
                    break
                quiet_since = max(last_record, self._assigned_at)  # a new assignment is news
                if o.idle_seconds is not None and not self._batch.records \
                        and now - quiet_since >= o.idle_seconds and self._idle(now, started):
                    log.info("ingest %s: caught up and idle for %.1f s, stopping",
                             o.client_id, o.idle_seconds)
                    break
            if self._batch.records:
                self._flush()
            self._finish_inflight()
            clean_exit = True
        finally:
            if not clean_exit:
                # a failure: let the writes in flight end, but commit nothing more
                for _, future, _ in self._inflight:
                    future.exception()
            self._writer.shutdown(wait=True)
            self._log_pool.shutdown(wait=True)
            self._close()
            self._restore_signals(previous)
            if gc_thresholds is not None:
                gc.set_threshold(*gc_thresholds)
                gc.unfreeze()
        return self.stats

    def _install_signals(self) -> dict[int, Any]:
        if not self.options.install_signal_handlers or \
                threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: self._stop.set())
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # --- the loop -----------------------------------------------------------------------
    def _poll_once(self) -> None:
        assert self._consumer is not None
        o = self.options
        room = o.batch_max_events - self._batch.records
        if o.max_events is not None:
            room = min(room, o.max_events - self.stats.received)
        if room <= 0:
            return
        polled = self._poll_with_retries(room)
        if not polled:
            return
        now = datetime.now(UTC)
        batch = self._batch
        if not batch.records:
            batch.started = time.monotonic()
            if self.stats.first_record_at is None:
                self.stats.first_record_at = time.time()
        count = 0
        for records in polled.values():
            count += len(records)
            taken = self.builder.add_records(batch, records, now)
            while taken < len(records):  # the batch holds its most event dates: write it
                self._positions.update(batch.offsets)
                self._flush()
                batch = self._batch
                batch.started = time.monotonic()
                records = records[taken:]
                taken = self.builder.add_records(batch, records, now)
        self.stats.received += count
        metrics.EVENTS.labels("received").inc(count)
        self._positions.update(batch.offsets)

    def _poll_with_retries(self, room: int) -> dict[Any, list[Any]]:
        """``poll``, with backoff on broker errors that kafka-python raises rather than
        retries itself; past the bound, :class:`IngestError` (nothing uncommitted is lost:
        the next run starts from the last commit)."""
        assert self._consumer is not None
        consumer = self._consumer
        retriable = retry_if_exception(
            lambda exc: isinstance(exc, KafkaError) and getattr(exc, "retriable", False))
        try:
            return self._retrying("poll", retriable)(
                lambda: consumer.poll(timeout_ms=100, max_records=room))
        except KafkaError as exc:
            raise IngestError(f"polling the broker failed: {exc}") from exc

    def _should_flush(self, now: float) -> bool:
        batch = self._batch
        if not batch.records:
            return False
        o = self.options
        age_ms = (now - batch.started) * 1000
        if batch.records >= o.batch_max_events or age_ms >= o.batch_max_ms:
            return True
        if o.max_events is not None and self.stats.received >= o.max_events:
            return True
        if age_ms < o.batch_min_ms:
            return False
        lag = self._lag()  # less than a batch waiting: we are (nearly) caught up
        return lag is not None and lag < o.batch_max_events

    def _lag(self) -> int | None:
        """Records behind the high-water marks of our partitions (None: not known yet, or
        in a rebalance, when none is ours).

        Positions come from the records we polled; ``consumer.position`` (which may ask the
        broker) only for a partition we have not received anything from yet.
        """
        consumer = self._consumer
        if consumer is None or self._awaiting_assignment:
            return None
        assignment = consumer.assignment()
        if not assignment:
            return None
        total = 0
        for tp in assignment:
            high = consumer.highwater(tp)
            if high is None:
                return None
            position = self._positions.get((tp.topic, tp.partition))
            if position is None:
                try:
                    position = consumer.position(tp, timeout_ms=500)
                except KafkaError:
                    return None
                if position is None:
                    return None
                self._positions[(tp.topic, tp.partition)] = position
            total += max(0, high - position)
        metrics.LAG.set(total)
        return total

    @property
    def _awaiting_assignment(self) -> bool:
        """Between a revocation and the next assignment: kafka-python still lists the
        revoked partitions then, though they are no longer ours."""
        return self._revoked_at > self._assigned_at

    def _idle(self, now: float, started: float) -> bool:
        """Caught up: no lag on our partitions, or no partitions for long enough.

        A member that owns none — the group gave it none (more members than partitions),
        or took its partitions back and has not handed it the new share yet — is idle once
        the group has had time to assign them, counted from the start or the latest
        revocation; leaving sooner in a rebalance would strand the share it is about to get.
        """
        if self._lag() == 0:
            return True
        assert self._consumer is not None
        owns_none = self._awaiting_assignment or not self._consumer.assignment()
        waited_s = now - max(started, self._revoked_at)
        return owns_none and waited_s > 30 + (self.options.idle_seconds or 0)

    def _on_revoked(self, revoked: Any) -> None:
        """Drop the batch that is not written yet (runs inside ``poll``, on kafka-python's
        IO thread, while the loop waits). Its records are uncommitted, so whoever owns
        each partition next reads them again; for partitions that come back to us,
        :meth:`_on_assigned` rewinds to them, because kafka-python keeps the position of
        a partition that stays assigned."""
        self._positions.clear()
        if not revoked:
            return
        self.stats.rebalances += 1
        self._generation += 1
        self._revoked_at = time.monotonic()
        metrics.REBALANCES.inc()
        batch = self._batch
        if batch.records:
            self._rewind = dict(batch.first_offsets)
            self._batch = Batch()
        log.info("%s: %d partitions revoked; %d unwritten records dropped, to be read again "
                 "from the last commit", self.options.client_id, len(revoked), batch.records)

    def _on_assigned(self, assigned: Any) -> None:
        assert self._consumer is not None
        self._positions.clear()
        for tp in assigned:
            offset = self._rewind.get((tp.topic, tp.partition))
            if offset is not None:
                self._consumer.seek(tp, offset)
        self._rewind = {}
        self._assigned_at = time.monotonic()
        if assigned:
            self.assigned.set()
        log.info("%s assigned %s", self.options.client_id,
                 sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    # --- writing a batch ----------------------------------------------------------------
    def _flush(self) -> None:
        """Hand the current batch to the writer thread (once fewer than
        ``max_batches_in_flight`` are waiting there).

        Batches are written in order by one writer thread (log fsync, Redis script, DLQ
        acks — mostly waiting on I/O, which releases the GIL) while the next one is polled
        and validated; offsets are committed by this thread, in order, once each write has
        returned. With two batches in flight, Redis starts on the next batch while this
        thread commits the previous one, instead of idling in between.
        """
        batch, self._batch = self._batch, Batch()
        while len(self._inflight) >= max(1, self.options.max_batches_in_flight):
            self._finish_oldest()
        self._inflight.append((batch, self._writer.submit(self._timed_write, batch),
                               self._generation))

    def _timed_write(self, batch: Batch) -> None:
        if self._write_failed:
            raise IngestError("an earlier batch could not be written; this one is not "
                              "written either (it would be applied out of order)")
        began = time.monotonic()
        try:
            self._write(batch)
        except BaseException:
            self._write_failed = True
            raise
        metrics.BATCH_SECONDS.observe(time.monotonic() - began)
        metrics.BATCH_EVENTS.observe(batch.records)

    def _finish_inflight(self) -> None:
        """Wait for every batch being written, committing each (see :meth:`_finish_oldest`)."""
        while self._inflight:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        """Wait for the oldest batch being written; commit it unless the group rebalanced
        since it was handed over."""
        batch, future, generation = self._inflight.popleft()
        began = time.monotonic()
        future.result()  # an IngestError propagates: nothing of this batch is committed
        self.stats.writer_wait_s += time.monotonic() - began
        self.stats.batches += 1
        if generation == self._generation:
            self._commit(batch)
        else:
            # the partitions may belong to another member now: a late commit could move
            # their offsets back. The batch is durable; the next commit covers it, or the
            # new owner reads it again and de-duplicates.
            log.info("batch of %d records written during a rebalance: not committed",
                     batch.records)
        self.stats.batch_log.append((time.time(), batch.records))

    def _write(self, batch: Batch) -> None:
        """Make the batch durable: DLQ sends, event log, Redis, DLQ acks and counters."""
        assert self._state is not None
        futures = self._send_dead_letters(batch.dead_letters)
        if batch.has_erasures:
            # an erasure's cutoff is the later of its time and the newest event time seen
            # for the resident (before this batch's script erases what tells it)
            assert self._redis is not None
            seen = self._retry("redis", lambda: newest_event_times(
                self._redis, self.keys, batch.erased_residents()))
            batch.extend_erasures(seen)
        if batch.events and self.erasure is not None:
            self._drop_erased_data(batch)
        if batch.events:
            # The log append and the Redis script run side by side (both mostly wait on
            # I/O). Their order does not matter for exactly-once: only the commit has to
            # come after both, and a replay re-appends to the log while Redis skips what
            # its markers say was applied.
            logged = self._log_pool.submit(self._append_log, batch)
            began = time.monotonic()
            applied, dups, erased = self._retry("redis", lambda: self._state.apply(batch.slots))
            self.stats.redis_s += time.monotonic() - began
            logged.result()
            self._record_erasures(batch)
            dups += batch.in_batch_duplicates
            self.stats.applied += applied
            self.stats.duplicates += dups
            metrics.EVENTS.labels("applied").inc(applied)
            metrics.EVENTS.labels("duplicate").inc(dups)
            if erased:
                log.info("erased %d resident(s) from the real-time state", len(erased))
            visible_ms = time.time() * 1000
            delays = [visible_ms - t for t in batch.produced_ms]
            if delays:
                metrics.VISIBLE_DELAY.observe(max(delays) / 1000)
                if self.options.record_delays:
                    self.stats.visible_delays_ms.extend(int(d) for d in delays)
        elif batch.in_batch_duplicates:
            self.stats.duplicates += batch.in_batch_duplicates
        if batch.dead_letters:
            began = time.monotonic()
            self._await_dead_letters(batch.dead_letters, futures)
            letters = [(d.topic, d.partition, d.offset, d.reason) for d in batch.dead_letters]
            self._retry("redis", lambda: self._state.count_dead_letters(letters))
            for letter in batch.dead_letters:
                self.stats.dead_letters[letter.reason] = \
                    self.stats.dead_letters.get(letter.reason, 0) + 1
                metrics.DEAD_LETTERS.labels(letter.reason).inc()
            metrics.EVENTS.labels("dead_letter").inc(len(batch.dead_letters))
            self.stats.dlq_s += time.monotonic() - began

    def _drop_erased_data(self, batch: Batch) -> None:
        """Drop late events of erased residents before anything of the batch is written
        (:meth:`Batch.drop_late`): an event is dropped iff an erasure of its resident,
        time-stamped at or after it, came before it — on record, or earlier in the batch —
        the same outcome whatever the batch boundaries."""
        hooks = self.erasure
        assert hooks is not None
        on_record = self._retry("erasure register",
                                lambda: hooks.erased_among(batch.resident_ids()))
        dropped = batch.drop_late(on_record)
        if dropped:
            self.stats.erased_late += dropped
            metrics.EVENTS.labels("erased_late").inc(dropped)
            log.info("dropped %d late event(s) of erased residents", dropped)

    def _record_erasures(self, batch: Batch) -> None:
        """After the batch is written: its erasures go on record (register, published
        lists). Idempotent; a crash before this point replays the batch, and this call."""
        erasures = batch.erasures()
        if erasures and self.erasure is not None:
            hooks = self.erasure
            self._retry("erasure register", lambda: hooks.after_erase(erasures))

    def _append_log(self, batch: Batch) -> None:
        began = time.monotonic()
        table = batch.table()
        self._retry("eventlog", lambda: self.event_log.append(table))
        self.stats.logged += batch.events
        metrics.EVENTS.labels("logged").inc(batch.events)
        self.stats.log_write_s += time.monotonic() - began

    def _send_dead_letters(self, letters: list[DeadLetter]) -> list[Any]:
        if not letters:
            return []
        producer = self._dlq_producer()
        secret = self.settings.pseudonym_secret
        return [producer.send_raw(d.value or b"", key=d.dead_letter_key(secret),
                                  topic=self.settings.topic_dlq, headers=dead_letter_headers(d))
                for d in letters]

    def _await_dead_letters(self, letters: list[DeadLetter], futures: list[Any]) -> None:
        """Wait for the broker's acks; re-send what failed, within the retry bound."""
        pending = list(zip(letters, futures, strict=True))
        failed: list[DeadLetter] = []

        def acknowledged() -> None:
            nonlocal pending, failed
            if failed:  # a retry: send again what was not acknowledged
                pending = list(zip(failed, self._send_dead_letters(failed), strict=True))
            failed = []
            for letter, future in pending:
                try:
                    future.get(timeout=30)
                except KafkaError as exc:
                    log.warning("dead letter %s[%d]@%d not acknowledged: %s", letter.topic,
                                letter.partition, letter.offset, exc)
                    failed.append(letter)
            if failed:
                raise _Unacknowledged(len(failed))

        try:
            self._retrying("dlq", retry_if_exception_type(_Unacknowledged))(acknowledged)
        except _Unacknowledged:
            raise IngestError(f"{len(failed)} dead letters not acknowledged by the broker "
                              f"after {self.options.retry_attempts} retries; nothing "
                              "committed") from None

    def _retrying(self, target: str, retry: retry_base) -> Retrying:
        """The retry policy of every loop here (tenacity): exponential backoff from
        ``retry_base_s`` doubling up to ``retry_max_s``, at most ``retry_attempts``
        retries; each retry is logged and counted (``bouquet_ingest_retries_total``). The
        last failure is re-raised as it was."""
        o = self.options

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s failed (%s); retry %d/%d in %.2f s", target, exc,
                        state.attempt_number, o.retry_attempts, delay)
            metrics.RETRIES.labels(target).inc()
            self.stats.retries += 1

        return Retrying(stop=stop_after_attempt(o.retry_attempts + 1),
                        wait=wait_exponential(multiplier=o.retry_base_s, max=o.retry_max_s),
                        retry=retry, before_sleep=before_sleep, reraise=True)

    def _retry(self, target: str, action: Callable[[], T]) -> T:
        """Run ``action``, retrying transient Redis/disk failures (:meth:`_retrying`).

        Retrying the Redis scripts is safe even when the failed call did run: their
        markers make the second run a no-op for what the first applied.
        """
        try:
            return self._retrying(target, retry_if_exception_type(_TRANSIENT))(action)
        except _TRANSIENT as exc:
            raise IngestError(f"{target} still failing after {self.options.retry_attempts} "
                              f"retries: {exc}") from exc

    def _commit(self, batch: Batch) -> None:
        """Commit the batch's offsets. A rebalance-related failure is not retried: the
        group has moved on and the records come back (de-duplicated). Other failures are
        retried; if they persist the next batch's commit covers these offsets."""
        assert self._consumer is not None
        consumer = self._consumer
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                   for (t, p), o in batch.offsets.items()}

        def commit() -> None:
            try:
                consumer.commit(offsets)
            except _REBALANCE_ERRORS:
                raise
            except KafkaError:
                self.stats.commit_failures += 1
                metrics.COMMITS.labels("error").inc()
                raise

        not_rebalance = retry_if_exception(lambda exc: isinstance(exc, KafkaError)
                                           and not isinstance(exc, _REBALANCE_ERRORS))
        try:
            self._retrying("commit", not_rebalance)(commit)
        except _REBALANCE_ERRORS as exc:
            self.stats.commit_failures += 1
            metrics.COMMITS.labels("rebalance").inc()
            log.info("commit skipped, the group is rebalancing (%s): %d records will be "
                     "delivered again and de-duplicated", type(exc).__name__, batch.records)
        except KafkaError as exc:
            log.error("commit failed %d times (%s); continuing, the next commit covers these "
                      "offsets", self.options.retry_attempts + 1, exc)
        else:
            self.stats.commits += 1
            self.stats.last_commit_at = time.time()
            metrics.COMMITS.labels("ok").inc()


def _tune_gc() -> tuple[int, int, int]:
    """Freeze the objects alive now and raise the collection thresholds; returns the
    previous thresholds. Garbage is still collected (most of it by reference counting at
    once; cycles at the next, rarer, collection)."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    return previous


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Headers of a dead-letter message (the value is the original bytes, untouched)."""
    return [
        ("reason", letter.reason.encode()),
        ("detail", letter.detail.encode("utf-8", "replace")[:1000]),
        ("source_topic", letter.topic.encode()),
        ("source_partition", str(letter.partition).encode()),
        ("source_offset", str(letter.offset).encode()),
        ("source_timestamp", str(letter.timestamp if letter.timestamp is not None else "")
         .encode()),
    ]
