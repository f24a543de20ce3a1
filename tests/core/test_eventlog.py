"""The event log: durable Parquet by event date; one reader that de-duplicates and erases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bouquet.core.eventlog import (
    COLUMNS,
    DECLARED_COLUMNS,
    SCHEMA,
    EventLog,
    read_events,
    read_table,
    scan_events,
)

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


def test_files_by_day_lists_each_partition_in_range_once(tmp_path) -> None:
    log = EventLog(tmp_path)
    first = log.append([record(1, "a", 0), record(2, "b", 3)])
    second = log.append([record(3, "a", 4)])
    log.partition_dir(date(2026, 2, 2)).mkdir()  # emptied, e.g. by compaction's retention
    (tmp_path / "date=2026-02-03").write_text("")  # a stray file named like a partition
    by_day = log.files_by_day()
    assert list(by_day) == [date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 2)]
    assert by_day[date(2026, 1, 31)] == [first[0]]
    assert by_day[date(2026, 2, 1)] == sorted([first[1], second[0]])
    assert by_day[date(2026, 2, 2)] == []
    assert list(log.files_by_day(date(2026, 2, 1), date(2026, 2, 1))) == [date(2026, 2, 1)]
    assert log.files() == [f for files in by_day.values() for f in files]


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


@pytest.mark.parametrize("chunk_events", [1, 700, 10**9])
def test_columnar_scan_returns_exactly_what_read_events_returns(tmp_path, messy_log,
                                                                 chunk_events) -> None:
    messy_log(tmp_path)
    expected = read_events(tmp_path)
    assert read_table(tmp_path).num_rows > len(expected) + 100  # copies and erasures to undo
    assert expected["channel"].str.startswith("copy-").any()  # an earlier copy won
    chunks = list(scan_events(tmp_path, chunk_events=chunk_events))
    assert len(chunks) > 1 or chunk_events > 10**6
    scanned = pd.concat([c.table(COLUMNS).to_pandas() for c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(scanned, expected)
    unerased = pd.concat([c.table(COLUMNS).to_pandas()
                          for c in scan_events(tmp_path, apply_erasures=False)],
                         ignore_index=True)
    pd.testing.assert_frame_equal(unerased, read_events(tmp_path, apply_erasures=False))


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


def profile(i: int, resident: str, context: dict) -> dict:
    return {"event_id": f"p{i}", "resident_id": resident, "type": "profile", "ts": T0,
            "channel": "app", "schema_version": 1,
            "context": json.dumps(context, separators=(",", ":"), sort_keys=True)}


def test_declared_attributes_are_typed_columns_and_the_rest_stays_json(tmp_path) -> None:
    log = EventLog(tmp_path)
    context = {"neighbourhood": "centre", "age_band": "26-40", "student": True,
               "screen": "home"}
    use = {**record(2, "a", 1), "context": json.dumps({"neighbourhood": "not-a-declaration"})}
    [path] = log.append([profile(1, "a", context), use])
    rows = pq.read_table(path).to_pylist()
    declared = next(r for r in rows if r["type"] == "profile")
    assert declared["neighbourhood"] == "centre" and declared["age_band"] == "26-40"
    assert declared["student"] is True and declared["household"] is None
    assert json.loads(declared["context"]) == {"screen": "home"}
    other = next(r for r in rows if r["type"] == "use")  # only profiles declare attributes
    assert other["neighbourhood"] is None and "neighbourhood" in other["context"]
    events = read_events(tmp_path).set_index("event_id")
    assert json.loads(events.loc["p1", "context"]) == context  # readers see the event whole


def test_a_log_written_before_typed_columns_stays_readable(tmp_path) -> None:
    old_schema = pa.schema([f for f in SCHEMA if f.name not in DECLARED_COLUMNS])
    old = profile(1, "a", {"neighbourhood": "centre", "household": "single"})
    old["ingested_at"] = T0
    directory = tmp_path / "date=2026-01-31"
    directory.mkdir()
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema),
                   directory / "part-00000000T000000000000-old-000001.parquet")
    EventLog(tmp_path).append([profile(2, "b", {"neighbourhood": "docks"})])
    events = read_events(tmp_path).set_index("event_id")
    assert json.loads(events.loc["p1", "context"]) == {"neighbourhood": "centre",
                                                       "household": "single"}
    assert json.loads(events.loc["p2", "context"]) == {"neighbourhood": "docks"}
    assert read_table(tmp_path)["neighbourhood"].to_pylist() == [None, "docks"]
