"""The event log: durable Parquet by event date; one reader that de-duplicates and erases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow.parquet as pq

from bouquet.core.eventlog import COLUMNS, EventLog, read_events, read_table

T0 = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)


def record(i: int, resident: str, hours: float = 0, kind: str = "use") -> dict:
    return {"event_id": f"e{i}", "resident_id": resident, "type": kind,
            "service_id": None if kind in ("erase", "consent") else "bike-share",
            "ts": T0 + timedelta(hours=hours), "channel": "app", "schema_version": 1,
            "value": 1.0 if kind == "consent" else None}


def test_append_partitions_by_event_date_and_leaves_no_temp_files(tmp_path) -> None:
    log = EventLog(tmp_path)
    written = log.append([record(1, "a", 0), record(2, "b", 3)])
    assert [p.parent.name for p in written] == ["date=2026-01-31", "date=2026-02-01"]
    assert log.partitions() == [date(2026, 1, 31), date(2026, 2, 1)]
    assert not list(tmp_path.rglob(".tmp-*"))
    table = pq.read_table(written[0])
    assert table.schema.names == list(COLUMNS)
    assert table["ingested_at"].null_count == 0


def test_reader_removes_duplicates_written_by_a_redelivery(tmp_path) -> None:
    log = EventLog(tmp_path)
    batch = [record(i, f"r{i % 3}", i) for i in range(10)]
    log.append(batch)
    log.append(batch[4:8])  # a crash between write and offset commit replays these
    assert read_table(tmp_path).num_rows == 14
    events = read_events(tmp_path)
    assert sorted(events["event_id"]) == sorted(f"e{i}" for i in range(10))


def test_erasure_hides_a_resident_everywhere_before_compaction(tmp_path) -> None:
    log = EventLog(tmp_path)
    log.append([record(1, "keep", 0), record(2, "gone", 1), record(3, "gone", 30)])
    log.append([record(4, "gone", 40, kind="erase")])
    events = read_events(tmp_path)
    assert set(events["resident_id"]) == {"keep"}
    # a date-filtered read still honours an erasure recorded on another date
    assert set(read_events(tmp_path, start=date(2026, 1, 31), end=date(2026, 1, 31))
               ["resident_id"]) == {"keep"}
    assert "gone" in set(read_events(tmp_path, apply_erasures=False)["resident_id"])


def test_events_after_an_erasure_are_new_data(tmp_path) -> None:
    log = EventLog(tmp_path)
    log.append([record(1, "x", 0), record(2, "x", 1, kind="erase"), record(3, "x", 2)])
    assert list(read_events(tmp_path)["event_id"]) == ["e3"]


def test_reader_ignores_half_written_files(tmp_path) -> None:
    log = EventLog(tmp_path)
    log.append([record(1, "a")])
    (tmp_path / "date=2026-01-31" / ".tmp-part-crashed.parquet").write_bytes(b"PAR1 trunc")
    assert len(read_events(tmp_path)) == 1


def test_empty_log_reads_as_empty_frame_with_columns(tmp_path) -> None:
    frame = read_events(tmp_path / "nothing", columns=["resident_id", "ts"])
    assert list(frame.columns) == ["resident_id", "ts"] and frame.empty


def test_reader_returns_only_the_columns_asked_for_even_without_ts(tmp_path) -> None:
    EventLog(tmp_path).append([record(2, "b", 5), record(1, "a", 0)])
    frame = read_events(tmp_path, columns=["event_id"])
    assert list(frame.columns) == ["event_id"]
    assert list(frame["event_id"]) == ["e1", "e2"]  # still in time order


def test_ingested_at_keeps_the_order_of_receipt(tmp_path) -> None:
    """Rows of one append get strictly increasing ``ingested_at`` in row order — also across
    the date files one batch is split into — and a later append later ones still."""
    from datetime import UTC, datetime, timedelta

    import pyarrow.parquet as pq

    from bouquet.core.eventlog import EventLog

    log = EventLog(tmp_path)
    day = datetime(2026, 3, 2, tzinfo=UTC)
    rows = [{"event_id": f"e{i}", "resident_id": "r1", "type": "consent", "value": i % 2,
             "ts": day - timedelta(days=i % 3), "channel": "app", "schema_version": 1}
            for i in range(9)]
    log.append(rows[:6])
    log.append(rows[6:])
    table = pq.read_table(tmp_path).to_pylist()
    received = {r["event_id"]: r["ingested_at"] for r in table}
    ordered = [received[f"e{i}"] for i in range(9)]
    assert ordered == sorted(ordered) and len(set(ordered)) == 9
