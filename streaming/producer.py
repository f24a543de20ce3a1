"""The producer library: how every part of Bouquet puts interaction events on Kafka.

Used by the simulator, the real-log replay, the HTTP intake, the outreach planner and
the consumer's dead letters. Events are keyed by
``resident_id`` so one resident's events stay in order on one partition; ``acks=all``
and the idempotent producer mean an event the broker acknowledged is on every in-sync
replica and a producer retry never writes it twice. Event ids are client-generated and
never rewritten here: they are the consumer's de-duplication key.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from bouquet.core.events import InteractionEvent
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)


class ProduceFailed(RuntimeError):
    """The broker did not acknowledge an event in time; the caller must not report success."""


def new_event_id(prefix: str = "ev") -> str:
    """A fresh unique event id for producers that have none of their own."""
    return f"{prefix}-{uuid.uuid4().hex}"


def encode_event(event: InteractionEvent | dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) bytes of an event as it travels on the topic."""
    if isinstance(event, InteractionEvent):
        payload = event.model_dump(mode="json", exclude_none=True)
    else:
        payload = event
    key = str(payload["resident_id"]).encode("utf-8")
    return key, json.dumps(payload, separators=(",", ":")).encode("utf-8")


class EventProducer:
    """A keyed, ``acks=all``, idempotent producer for the interactions topic.

    ``throughput`` (large batches, some linger) suits bulk replays; the default suits
    the HTTP intake, where each request waits for its acknowledgement.
    """

    def __init__(self, settings: Settings, *, throughput: bool = False,
                 max_block_ms: int = 10_000, **overrides: Any) -> None:
        self.topic = settings.topic_events
        config: dict[str, Any] = {
            **settings.kafka_client_options(),
            "acks": "all",
            "enable_idempotence": True,
            "max_block_ms": max_block_ms,
            "request_timeout_ms": 10_000,
            "delivery_timeout_ms": 30_000,
            "linger_ms": 50 if throughput else 2,
            "batch_size": 1 << 20 if throughput else 64 << 10,
        }
        config.update(overrides)
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise ProduceFailed(f"cannot reach the broker at {settings.kafka_bootstrap_servers}:"
                                f" {exc}") from exc

    def send(self, event: InteractionEvent | dict[str, Any],
             timestamp_ms: int | None = None) -> Any:
        """Queue one event; returns kafka-python's future (``.get()`` waits for the ack).
        ``timestamp_ms``: the record's time stamp (default: now), which is when the event
        counts as received (consent decisions are ordered by it)."""
        key, value = encode_event(event)
        return self._producer.send(self.topic, key=key, value=value, timestamp_ms=timestamp_ms)

    def send_raw(self, value: bytes, key: bytes | None = None, topic: str | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> Any:
        """Queue bytes as they are: dead letters (with their reason in ``headers``), and
        tests and tools that must send malformed input."""
        return self._producer.send(topic or self.topic, key=key, value=value, headers=headers)

    def send_and_wait(self, events: Iterable[InteractionEvent | dict[str, Any]],
                      timeout_s: float = 10.0, timestamp_ms: int | None = None) -> int:
        """Send events and return only once the broker acknowledged every one of them.

        Raises :class:`ProduceFailed` otherwise, so the HTTP intake can answer 503 and
        never acknowledge an event that was not written.
        """
        return self._acknowledged(lambda: [self.send(event, timestamp_ms) for event in events],
                                  timeout_s)

    def send_raw_and_wait(self, messages: Iterable[tuple[bytes, bytes]], topic: str,
                          timeout_s: float = 30.0) -> int:
        """Send ``(key, value)`` byte pairs to ``topic`` (the outreach messages) and return
        only once the broker acknowledged every one; raises :class:`ProduceFailed`."""
        return self._acknowledged(lambda: [self._producer.send(topic, key=key, value=value)
                                           for key, value in messages], timeout_s)

    def _acknowledged(self, send_all: Callable[[], list[Any]], timeout_s: float) -> int:
        """Run ``send_all`` (which returns the send futures), flush, and wait for every
        acknowledgement; a broker error of any of them raises :class:`ProduceFailed`."""
        try:
            futures = send_all()
            self._producer.flush(timeout=timeout_s)
            for future in futures:
                future.get(timeout=timeout_s)
        except KafkaError as exc:
            raise ProduceFailed(f"broker did not acknowledge: {exc}") from exc
        return len(futures)

    def flush(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise ProduceFailed(f"broker did not acknowledge: {exc}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Close, waiting up to ``timeout_s`` for buffered records; records still not
        acknowledged then are abandoned (their futures fail, nothing was acknowledged to
        anyone for them).

        kafka-python's ``close`` flushes first and, when the flush times out (a broker
        down, the intake dropping its producer with ``timeout_s`` 0), raises before it
        stops anything: the producer would stay half-open, its I/O thread retrying until
        the garbage collector's ``close`` times out in turn. So a timed-out close stops the
        I/O thread without sending (the library's ``force_close``, which it does not
        expose on the producer) and closes again, now with nothing to wait for.
        """
        try:
            self._producer.close(timeout=timeout_s)
        except KafkaTimeoutError:
            sender = self._producer._sender
            sender.force_close()
            sender.join(max(timeout_s, 1.0))
            self._producer.close(timeout=0)
            log.warning("producer closed with records not acknowledged within %.1f s: "
                        "abandoned", timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
