"""Erasure on the dead-letter topic: tombstones for an erased resident's dead letters.

A dead letter keeps the refused message's original bytes — the resident's id among them —
for the topic's retention. Kafka cannot delete records from a time-retained topic, but it
can from a *compacted* one: the consumer keys each dead letter by the resident's keyed
reference and its source position (:meth:`bouquet.streaming.batch.DeadLetter.dead_letter_key`,
never the id), Bouquet creates the topic with ``cleanup.policy=compact,delete``, and
:func:`drop_erased_dead_letters` (run by ``bouquet compact``) produces a tombstone for every
key whose reference is on the erasure register. The broker's log cleaner then removes the
letters (and, after ``delete.retention.ms``, the tombstones); until it runs, consumers of
the topic skip keys whose latest record is a tombstone. Retention still applies on top
(``BOUQUET_TOPIC_DLQ_RETENTION_MS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bouquet.core.settings import Settings
from bouquet.privacy.erasure import ErasureRegister

log = logging.getLogger(__name__)


@dataclass
class DeadLetterScrub:
    """What one pass over the dead-letter topic found and did."""

    letters: int = 0  # live dead letters read
    tombstoned: int = 0  # of erased residents: tombstones produced (or, dry run, due)


def drop_erased_dead_letters(settings: Settings, register: ErasureRegister, *,
                             dry_run: bool = False, timeout_s: float = 30.0
                             ) -> DeadLetterScrub:
    """Read the dead-letter topic from its start to its end and produce a tombstone for
    every letter (latest record of its key not already a tombstone) of a resident on the
    register. Idempotent."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    options = settings.kafka_client_options()
    consumer = KafkaConsumer(**options, enable_auto_commit=False,
                             consumer_timeout_ms=int(timeout_s * 1000))
    try:
        partitions = [TopicPartition(settings.topic_dlq, p) for p in
                      sorted(consumer.partitions_for_topic(settings.topic_dlq) or [])]
        if not partitions:
            return DeadLetterScrub()
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        latest: dict[bytes, bool] = {}  # key → its latest record holds a letter
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            polled = consumer.poll(timeout_ms=int(timeout_s * 1000))
            if not polled:
                raise TimeoutError(f"the dead-letter topic did not answer in {timeout_s} s")
            for tp, records in polled.items():
                for record in records:
                    if record.key is not None:
                        latest[record.key] = record.value is not None
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()
    register.reload()
    doomed = [key for key, live in latest.items() if live and
              register.is_erased_ref(key.split(b":", 1)[0].decode("ascii", "replace"))]
    report = DeadLetterScrub(letters=sum(latest.values()), tombstoned=len(doomed))
    if doomed and not dry_run:
        producer = KafkaProducer(**options, acks="all", enable_idempotence=True)
        try:
            futures = [producer.send(settings.topic_dlq, key=key, value=None) for key in doomed]
            producer.flush(timeout=timeout_s)
            for future in futures:
                future.get(timeout=timeout_s)
        finally:
            producer.close(timeout=timeout_s)
        log.info("dead-letter topic: %d letter(s) of erased residents tombstoned", len(doomed))
    return report
