"""When a consumer run with an idle limit may stop: caught up, or left without partitions
long enough (pure logic, a stand-in for kafka-python's consumer; the pipeline tests run the
real group)."""

from __future__ import annotations

from pathlib import Path

from kafka import TopicPartition

from bouquet.core.settings import Settings
from bouquet.streaming.consumer import IngestConsumer, IngestOptions

IDLE_S = 8.0
PATIENCE_S = 30 + IDLE_S
PARTITION = TopicPartition("events", 0)


class Member:
    """kafka-python's consumer as the idle rule sees it: its partitions, every one read to
    its high-water mark. Between a revocation and the next assignment kafka-python still
    lists the revoked partitions, as this stand-in does."""

    def __init__(self, partitions: set[TopicPartition]) -> None:
        self.partitions = partitions

    def assignment(self) -> set[TopicPartition]:
        return self.partitions

    def highwater(self, tp: TopicPartition) -> int:
        return 100

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return 100


def ingest(tmp_path: Path, partitions: set[TopicPartition]) -> IngestConsumer:
    settings = Settings(env="test", state_dir=tmp_path / "state")
    consumer = IngestConsumer(settings, options=IngestOptions.from_settings(
        settings, idle_seconds=IDLE_S))
    consumer._consumer = Member(partitions)  # type: ignore[assignment]
    return consumer


def test_a_member_that_read_all_of_its_partitions_is_idle(tmp_path: Path) -> None:
    consumer = ingest(tmp_path, {PARTITION})
    consumer._on_assigned([PARTITION])
    assert consumer._idle(now=consumer._assigned_at + 1, started=0.0)


def test_a_member_without_partitions_is_idle_once_the_group_had_time(tmp_path: Path) -> None:
    consumer = ingest(tmp_path, set())
    assert not consumer._idle(now=1000.0 + PATIENCE_S - 1, started=1000.0)
    assert consumer._idle(now=1000.0 + PATIENCE_S + 1, started=1000.0)


def test_a_member_waiting_for_its_share_in_a_rebalance_is_not_idle(tmp_path: Path) -> None:
    consumer = ingest(tmp_path, {PARTITION})
    consumer._on_assigned([PARTITION])
    consumer._on_revoked([PARTITION])
    revoked_at = consumer._revoked_at
    # all read, long after the start, but its partitions were just taken back: the new
    # share is on its way, and leaving now would strand it
    assert not consumer._idle(now=revoked_at + 1, started=revoked_at - 600)
    assert consumer._idle(now=revoked_at + PATIENCE_S + 1, started=revoked_at - 600)
    consumer._on_assigned([PARTITION])
    assert consumer._idle(now=consumer._assigned_at + 1, started=revoked_at - 600)
