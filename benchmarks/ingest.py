"""``bouquet bench ingest``: sustained ingestion throughput against a bare consume loop.

What is measured, all in one run over the same pre-filled topic:

* ``bare_events_per_s`` — a kafka-python consume loop that only polls (same fetch
  settings as the consumer): the client's own ceiling on this machine;
* ``events_per_s`` — the full pipeline in one process: broker → validated → event log
  durable (fsync) → Redis updated → offsets committed, first record to last commit;
* ``ratio_to_bare`` — their ratio (best of ``repeats`` alternating runs each);
* ``events_per_s_2proc`` / ``bare_events_per_s_2proc`` — the same with two processes
  (one consumer group; two bare loops on one partition each), measured over the window
  in which both processes were busy;
* ``lag_p95_ms`` — produce → visible in Redis, per event, with a producer process sending
  at a steady rate (``lag_rate`` events/s) while one consumer runs with default batching;
* where the best one-process run's time went: wall time per event of the writer stages
  (``*_us_per_event``) and CPU per event of the consumer process and of the Redis server
  (``consumer_cpu_us_per_event``, ``redis_cpu_us_per_event``), which share the cores.

The benchmark starts its own broker and Redis on free ports with a temporary state
directory, unless ``--use-configured`` points it at the configured services (it then
uses fresh topic names, group ids and key prefixes, and deletes its Redis keys after).
``--redis-cluster`` starts a three-primary Redis Cluster instead of one Redis (the code
behind ``bouquet stack up --redis-cluster``) and reports the same figures under the name
``ingest-redis-cluster``; ``bench all`` runs both, so they sit side by side.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import typer

from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.core.catalog import load_catalog
from bouquet.core.redisclient import cpu_seconds, redis_client
from bouquet.core.settings import Settings
from bouquet.localcluster import free_redis_url
from bouquet.localstack import LocalStack, ensure_topics, free_port

log = logging.getLogger(__name__)

FETCH = {"fetch_max_bytes": 64 << 20, "max_partition_fetch_bytes": 16 << 20,
         "fetch_max_wait_ms": 200}


def _fresh(settings: Settings, tag: str, **more: Any) -> Settings:
    values = settings.model_dump()
    values.update(consumer_group=f"bench-{tag}-{uuid.uuid4().hex[:6]}",
                  redis_key_prefix=f"bench{uuid.uuid4().hex[:6]}:",
                  event_log_dir=settings.state_dir / "bench-eventlog" / uuid.uuid4().hex[:8])
    values.update(more)
    return Settings(**values)


def _produce(settings: Settings, events: int, seed: int) -> None:
    from bouquet.streaming.producer import EventProducer
    from bouquet.streaming.synthetic import StreamSpec, encode, stream

    catalog = load_catalog(settings.catalog_path)
    with EventProducer(settings, throughput=True) as producer:
        for event in stream(catalog, StreamSpec(events=events, residents=max(1000, events // 20),
                                                seed=seed)):
            key, value = encode(event)
            producer.send_raw(value, key=key)
        producer.flush()


def _paced_producer(settings: Settings, rate: float, seconds: float, seed: int) -> None:
    """Child process: send ``rate`` events/s for ``seconds`` (small linger, like intake)."""
    from bouquet.streaming.producer import EventProducer
    from bouquet.streaming.synthetic import StreamSpec, encode, stream

    catalog = load_catalog(settings.catalog_path)
    total = int(rate * seconds)
    events = stream(catalog, StreamSpec(events=total, residents=max(1000, total // 20),
                                        seed=seed, resend_rate=0.0))
    with EventProducer(settings, linger_ms=5) as producer:
        began = time.monotonic()
        for i, event in enumerate(events):
            due = began + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key, value = encode(event)
            producer.send_raw(value, key=key)
        producer.flush()


def _bare(settings: Settings, expected: int, partitions: list[int] | None,
          out: Any = None, go: Any = None) -> dict[str, float]:
    """Poll without processing until ``expected`` records; first record → last record."""
    from kafka import KafkaConsumer, TopicPartition

    common = dict(**settings.kafka_client_options(), enable_auto_commit=False,
                  auto_offset_reset="earliest", max_poll_records=10_000, **FETCH)
    if partitions is None:
        consumer = KafkaConsumer(group_id=settings.consumer_group, session_timeout_ms=6000,
                                 heartbeat_interval_ms=1000, **common)
        consumer.subscribe([settings.topic_events])
    else:
        consumer = KafkaConsumer(**common)
        consumer.assign([TopicPartition(settings.topic_events, p) for p in partitions])
    if go is not None:  # start together with the other bare loops
        go.wait(60)
    seen = 0
    first = last = None
    deadline = time.monotonic() + 300
    while seen < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            if first is None:
                first = time.time()
            seen += len(records)
            last = time.time()
    consumer.close(autocommit=False)
    result = {"records": seen, "first": first or 0.0, "last": last or 0.0}
    if out is not None:
        out.put(result)
    return result


def _pipeline_child(settings: Settings, idle: float, out: Any, go: Any = None) -> None:
    from bouquet.streaming.consumer import IngestConsumer, IngestOptions

    logging.basicConfig(level=logging.WARNING)
    options = IngestOptions.from_settings(settings, idle_seconds=idle, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, log_every_s=0, **FETCH)
    consumer = IngestConsumer(settings, options=options)
    if go is not None:  # join the group together with the other process
        go.wait(60)
    stats = consumer.run()
    out.put({"received": stats.received, "batch_log": stats.batch_log,
             "first": stats.first_record_at})


def _consumer(settings: Settings, expected: int, **options: Any) -> Any:
    from bouquet.streaming.consumer import IngestConsumer, IngestOptions

    opts = IngestOptions.from_settings(settings, max_events=expected, session_timeout_ms=6000,
                                       heartbeat_interval_ms=1000, log_every_s=0,
                                       install_signal_handlers=False, **FETCH, **options)
    return IngestConsumer(settings, options=opts)


def _pipeline(settings: Settings, expected: int, **options: Any) -> Any:
    return _consumer(settings, expected, **options).run()


def _window_rate(runs: list[dict[str, Any]]) -> float | None:
    """Records/s over the window in which every process was writing batches: from the
    latest first batch (after the group settled) to the last batch of all."""
    starts = [r["batch_log"][0][0] for r in runs if r.get("batch_log")]
    if len(starts) < len(runs):
        return None
    begin = max(starts)
    batches = sorted(b for r in runs for b in r["batch_log"] if b[0] > begin)
    if len(batches) < 2:
        return None
    end = batches[-1][0]
    return sum(n for _, n in batches) / (end - begin) if end > begin else None


def run_benchmark(settings: Settings, *, events: int = 150_000, partitions: int = 2,
                  repeats: int = 2, lag_rate: float = 2000.0, lag_seconds: float = 10.0,
                  use_configured: bool = False, redis_cluster: bool = False) -> BenchResult:
    """Measure (see the module docstring) and return the contract result."""
    from kafka.record import util as kafka_record_util

    result = BenchResult("ingest-redis-cluster" if redis_cluster else "ingest", params={
        "kafka_crc32c": "c" if kafka_record_util.crc32c_c is not None else "python",
        "events": events, "partitions": partitions, "repeats": repeats, "lag_rate": lag_rate,
        "lag_seconds": lag_seconds, "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "batch_max_events": settings.ingest_batch_max_events,
        "batch_max_ms": settings.ingest_batch_max_ms, "use_configured": use_configured,
        "redis": "cluster of 3 primaries" if redis_cluster else "one server"})
    tmp = None
    stack = None
    if not use_configured:
        tmp = tempfile.TemporaryDirectory(prefix="bouquet-bench-ingest-")
        settings = Settings(env="test", state_dir=Path(tmp.name),
                            kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                            redis_url=free_redis_url(redis_cluster),
                            catalog_path=settings.catalog_path,
                            ingest_batch_max_events=settings.ingest_batch_max_events,
                            ingest_batch_max_ms=settings.ingest_batch_max_ms)
        stack = LocalStack(settings)
        stack.up()
    tag = uuid.uuid4().hex[:6]
    base = _fresh(settings, "base", topic_events=f"bench-{tag}.interactions",
                  topic_dlq=f"bench-{tag}.interactions.dlq", topic_partitions=partitions)
    prefixes: list[str] = []
    try:
        ensure_topics(base)
        began = time.monotonic()
        _produce(base, events, seed=11)
        log.info("produced %d events in %.1f s", events, time.monotonic() - began)

        bare_rates, pipe_rates, best, best_cpu = [], [], None, (0.0, 0.0)
        for _ in range(repeats):
            bare = _bare(_fresh(base, "bare"), events, None)
            bare_rates.append(bare["records"] / (bare["last"] - bare["first"]))
            run = _fresh(base, "pipe")
            prefixes.append(run.redis_key_prefix)
            process0, redis0 = time.process_time(), _redis_cpu(base)
            stats = _pipeline(run, events)
            cpu = (time.process_time() - process0, _redis_cpu(base) - redis0)
            pipe_rates.append(stats.received / (stats.last_commit_at - stats.first_record_at))
            if pipe_rates[-1] == max(pipe_rates):
                best, best_cpu = stats, cpu
            log.info("bare %.0f/s, pipeline %.0f/s", bare_rates[-1], pipe_rates[-1])
        result.add("events_per_s", max(pipe_rates), "events/s")
        result.add("bare_events_per_s", max(bare_rates), "events/s")
        result.add("ratio_to_bare", max(pipe_rates) / max(bare_rates), "ratio")
        # where the best pipeline run's time went (writer-side stages overlap each other
        # and the consumer thread; "writer_wait" is the consumer thread blocked on them)
        for name in ("log_write_s", "redis_s", "writer_wait_s"):
            result.add(f"{name[:-2]}_us_per_event", getattr(best, name) / events * 1e6, "µs")
        # CPU per event of that run: the consumer process (all threads, group join and
        # start-up included) and the Redis server (its own core; INFO cpu) — the two
        # processes that share this machine's cores
        result.add("consumer_cpu_us_per_event", best_cpu[0] / events * 1e6, "µs")
        result.add("redis_cpu_us_per_event", best_cpu[1] / events * 1e6, "µs")

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        # bare loops stop at their partition's end: give each the exact count to wait for
        counts = _partition_counts(base)
        go = ctx.Event()
        procs = [ctx.Process(target=_bare, args=(base, counts[p], [p], queue, go), daemon=True)
                 for p in range(min(2, partitions))]
        for proc in procs:
            proc.start()
        time.sleep(5)  # both interpreters up and connected
        go.set()
        started = time.time()
        bare2 = [queue.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join()
        span = max(r["last"] for r in bare2) - started  # from the go, first fetch included
        result.add("bare_events_per_s_2proc",
                   sum(r["records"] for r in bare2) / span if span > 0 else None, "events/s")

        run = _fresh(base, "pipe2")
        prefixes.append(run.redis_key_prefix)
        go = ctx.Event()
        procs = [ctx.Process(target=_pipeline_child, args=(run, 3.0, queue, go), daemon=True)
                 for _ in range(2)]
        for proc in procs:
            proc.start()
        time.sleep(5)  # both interpreters up (imports, catalog)
        go.set()
        pipe2 = [queue.get(timeout=900) for _ in procs]
        for proc in procs:
            proc.join()
        result.add("events_per_s_2proc", _window_rate(pipe2), "events/s")
        result.add("received_2proc", sum(r["received"] for r in pipe2), "records")

        lag_base = _fresh(base, "lag", topic_events=f"bench-{tag}-lag.interactions",
                          topic_dlq=f"bench-{tag}-lag.interactions.dlq")
        prefixes.append(lag_base.redis_key_prefix)
        ensure_topics(lag_base)
        total = int(lag_rate * lag_seconds)
        consumer = _consumer(lag_base, total, record_delays=True)
        runner = threading.Thread(target=consumer.run, daemon=True)
        runner.start()
        consumer.assigned.wait(60)  # the group join is not part of the delay measured
        producer = ctx.Process(target=_paced_producer, args=(lag_base, lag_rate, lag_seconds, 13),
                               daemon=True)
        producer.start()
        producer.join()
        runner.join(timeout=120)
        stats = consumer.stats
        delays = sorted(stats.visible_delays_ms)
        if delays:
            result.add("lag_p50_ms", delays[len(delays) // 2], "ms")
            result.add("lag_p95_ms", delays[int(len(delays) * 0.95)], "ms")
            result.add("lag_max_ms", delays[-1], "ms")
        result.params["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        result.notes.append(
            f"one pre-filled topic of {events} synthetic events ({partitions} partitions); "
            f"best of {repeats} alternating bare/pipeline runs; lag measured at "
            f"{lag_rate:.0f} events/s from a separate producer process")
    finally:
        _cleanup(base, prefixes)
        if stack is not None:
            stack.down()
        if tmp is not None:
            tmp.cleanup()
    return result


def _redis_cpu(settings: Settings) -> float:
    """CPU seconds the Redis server (every primary of a cluster) has used, from INFO."""
    client = redis_client(settings.redis_url)
    try:
        return cpu_seconds(client)
    finally:
        client.close()


def _partition_counts(settings: Settings) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.kafka_client_options())
    tps = [TopicPartition(settings.topic_events, p)
           for p in sorted(consumer.partitions_for_topic(settings.topic_events) or [])]
    ends = consumer.end_offsets(tps)
    consumer.close()
    return {tp.partition: ends[tp] for tp in tps}


def _cleanup(settings: Settings, prefixes: list[str]) -> None:
    """Delete the benchmark's Redis keys (matters only with ``--use-configured``)."""
    import redis

    try:
        client = redis_client(settings.redis_url)
        for prefix in prefixes:
            for chunk in _chunks(client.scan_iter(match=f"{prefix}*", count=5000), 5000):
                client.delete(*chunk)
        client.close()
    except redis.RedisError:
        log.warning("could not clean the benchmark's Redis keys", exc_info=True)


def _chunks(items: Any, size: int) -> Any:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark(settings)


def DEFAULT_REDIS_CLUSTER(settings: Settings) -> BenchResult:  # noqa: N802 - as DEFAULT
    return run_benchmark(settings, redis_cluster=True)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("ingest")
    def ingest_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        events: int = typer.Option(150_000, help="Events in the pre-filled topic."),
        partitions: int = typer.Option(2, help="Partitions of the benchmark topic."),
        repeats: int = typer.Option(2, help="Alternating bare/pipeline runs (best is kept)."),
        lag_rate: float = typer.Option(2000.0, help="Events/s of the paced lag phase."),
        lag_seconds: float = typer.Option(10.0, help="Duration of the lag phase."),
        use_configured: bool = typer.Option(False, "--use-configured",
                                            help="Use the configured broker and Redis."),
        redis_cluster: bool = typer.Option(False, "--redis-cluster", help="Start a "
                                           "three-primary Redis Cluster, not one Redis."),
    ) -> None:
        """Ingestion events/s end to end vs a bare kafka-python loop, 1 and 2 processes."""
        from bouquet.core.settings import get_settings

        result = run_benchmark(get_settings(), events=events, partitions=partitions,
                               repeats=repeats, lag_rate=lag_rate, lag_seconds=lag_seconds,
                               use_configured=use_configured, redis_cluster=redis_cluster)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
            typer.echo(f"wrote {json_path}")
