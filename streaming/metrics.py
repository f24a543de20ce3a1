"""Prometheus metrics of the ingestion consumer (one set per process).

Exposed with ``bouquet ingest --metrics-port PORT`` at ``/metrics``. Names are stable:
dashboards and alerts read them (see docs/ingestion.md).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter(
    "bouquet_ingest_events_total",
    "Records by outcome: received (from Kafka), logged (rows appended to the event log), "
    "applied (new Redis effects), duplicate (already seen event_id), dead_letter, "
    "erased_late (data of an erased resident, dropped unwritten)",
    ["outcome"],
)
DEAD_LETTERS = Counter("bouquet_ingest_dead_letters_total", "Dead letters by reason", ["reason"])
BATCH_SECONDS = Histogram(
    "bouquet_ingest_batch_seconds", "Time to make one batch durable (log + Redis + DLQ acks)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_EVENTS = Histogram("bouquet_ingest_batch_records", "Records per batch",
                         buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000))
VISIBLE_DELAY = Histogram(
    "bouquet_ingest_visible_delay_seconds",
    "Produce timestamp → event visible in Redis (per event)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
LAG = Gauge("bouquet_ingest_lag_records", "Records behind the partitions' high-water marks "
            "(sum over the partitions this process owns)")
COMMITS = Counter("bouquet_ingest_commits_total", "Offset commits by result", ["result"])
RETRIES = Counter("bouquet_ingest_retries_total", "Retried operations by target", ["target"])
REBALANCES = Counter("bouquet_ingest_rebalances_total", "Partition revocations seen")


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Start the ``/metrics`` HTTP endpoint in a daemon thread."""
    start_http_server(port, addr=addr)
