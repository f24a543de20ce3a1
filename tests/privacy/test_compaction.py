"""Compaction: erasures and retention reach the Parquet files; rewrites are crash-safe."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bouquet.core.eventlog import EventLog, read_events, read_table
from bouquet.core.settings import Settings
from bouquet.privacy import compaction
from bouquet.privacy.compaction import compact
from bouquet.privacy.erasure import ErasureRegister
from tests.privacy.helpers import file_occurrences

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)  # the fake clock
ERASED = "zzErasedQ7"
RETENTION = {"view": 30, "use": 365, "consent": 3650}


def record(eid: str, rid: str, kind: str, ts: datetime, **extra) -> dict:
    row = {"event_id": eid, "resident_id": rid, "type": kind, "ts": ts, "channel": "app",
           "service_id": "bike-share" if kind in ("view", "use") else None,
           "schema_version": 1}
    row.update(extra)
    return row


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", state_dir=tmp_path / "state", retention_days=RETENTION)


def day(n: int, hour: int = 10) -> datetime:
    return NOW - timedelta(days=n) + timedelta(hours=hour - 12)


@pytest.fixture
def log(settings: Settings) -> EventLog:
    """Three residents over a year: a view too old to keep, a use kept, the erased
    resident's events before and after their erasure, re-delivered duplicates, many small
    files in one day (a consumer's batches)."""
    event_log = EventLog(settings.event_log_path, writer_id="test")
    event_log.append([record("a-old-view", "rKeepA", "view", day(40)),
                      record("a-use", "rKeepA", "use", day(40, 11)),
                      record("a-consent", "rKeepA", "consent", day(40, 9), value=1.0)])
    for i in range(10):  # one file per batch
        event_log.append([record(f"b-{i}", "rKeepB", "view", day(5, 8 + i % 8))])
    event_log.append([record("b-3", "rKeepB", "view", day(5, 8 + 3))])  # a redelivery
    event_log.append([record("e-1", ERASED, "use", day(20)),
                      record("e-2", ERASED, "view", day(10)),
                      record("e-erase", ERASED, "erase", day(9), channel="system"),
                      record("e-after", ERASED, "use", day(2))])
    return event_log


def visible(settings: Settings) -> list[str]:
    return sorted(read_events(settings.event_log_path)["event_id"])


def test_erasures_and_retention_are_applied_to_the_files(settings: Settings,
                                                         log: EventLog) -> None:
    before = visible(settings)
    assert "e-1" not in before and "e-after" in before  # read-time erasure already
    assert file_occurrences(settings.event_log_path, "e-1")  # ...but the bytes are there

    report = compact(settings, now=NOW)
    assert report.erasures_recorded == 1
    assert report.dropped_erased == 2 and report.dropped_erase_events == 1
    assert report.dropped_retention == {"view": 1}  # a-old-view: 40 days > 30
    assert report.dropped_duplicates == 1
    after = visible(settings)
    assert after == sorted(set(before) - {"a-old-view"})
    raw = read_table(settings.event_log_path)["event_id"].to_pylist()
    assert sorted(raw) == after  # the files hold exactly what readers see: no duplicates
    for gone in ("e-1", "e-2", "e-erase", "a-old-view"):
        assert not file_occurrences(settings.event_log_path, gone), gone
    # the erased resident's id survives only in their post-erasure event (new data)
    holders = {p.split(" ")[0] for p in file_occurrences(settings.event_log_path, ERASED)}
    assert len(holders) == 1 and "e-after" in pq.read_table(holders.pop())[
        "event_id"].to_pylist()
    assert ErasureRegister.for_settings(settings).cutoff(ERASED) == day(9).timestamp()
    assert not list(settings.event_log_path.rglob(".tmp-*"))

    again = compact(settings, now=NOW)  # idempotent: nothing left to do
    assert again.partitions_rewritten == 0 and visible(settings) == after


def test_a_late_event_of_an_erased_resident_is_dropped_by_the_next_compaction(
        settings: Settings, log: EventLog) -> None:
    compact(settings, now=NOW)
    late = record("e-late", ERASED, "use", day(15))  # before the erasure, arrives after
    log.append([late])
    register = ErasureRegister.for_settings(settings)
    assert register.erased_mask([ERASED], [day(15).timestamp()]).tolist() == [True]
    assert register.erased_mask([ERASED], [day(1).timestamp()]).tolist() == [False]
    compact(settings, now=NOW)
    assert "e-late" not in visible(settings)
    assert not file_occurrences(settings.event_log_path, "e-late")
    assert "e-after" in visible(settings)


def test_retention_follows_the_clock_per_event_type(settings: Settings,
                                                    log: EventLog) -> None:
    compact(settings, now=NOW)
    later = compact(settings, now=NOW + timedelta(days=400))  # a use is 365 days
    assert later.dropped_retention == {"use": 2, "view": 10}
    remaining = read_events(settings.event_log_path)
    assert set(remaining["type"]) == {"consent"}  # consents are kept 10 years


def test_a_crash_mid_rewrite_changes_nothing_readers_see(settings: Settings, log: EventLog,
                                                         monkeypatch) -> None:
    before = visible(settings)
    before_frame = read_events(settings.event_log_path)
    original = Path.unlink
    busy = log.partition_dir(day(5).date())  # 11 small files, one a duplicate
    calls = {"n": 0}

    def crash(self: Path, *args, **kwargs) -> None:
        if self.parent == busy and self.suffix == ".parquet":
            calls["n"] += 1
            if calls["n"] == 4:  # merged file written, three old ones removed: crash
                raise OSError("simulated crash")
        original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(OSError, match="simulated crash"):
        compact(settings, now=NOW, min_files=2)
    monkeypatch.setattr(Path, "unlink", original)
    assert len(list(busy.glob("*.parquet"))) == 11 - 3 + 1
    # between the new file and the last unlink, readers see the same events
    mid = read_events(settings.event_log_path)
    pd.testing.assert_frame_equal(mid[mid["event_id"] != "a-old-view"].reset_index(drop=True),
                                  before_frame[before_frame["event_id"] != "a-old-view"]
                                  .reset_index(drop=True))
    compact(settings, now=NOW)  # the next run finishes the job
    assert visible(settings) == sorted(set(before) - {"a-old-view"})
    assert not file_occurrences(settings.event_log_path, "e-1")


def test_dry_run_changes_nothing_and_stale_temp_files_go(settings: Settings,
                                                         log: EventLog) -> None:
    files = sorted(settings.event_log_path.rglob("*.parquet"))
    report = compact(settings, now=NOW, dry_run=True)
    assert report.dropped_erased == 2 and report.dropped_retention == {"view": 1}
    assert sorted(settings.event_log_path.rglob("*.parquet")) == files
    assert len(ErasureRegister.for_settings(settings)) == 0

    stale = log.partition_dir(day(20).date()) / ".tmp-part-crashed.parquet"
    stale.write_bytes(b"half a file with " + ERASED.encode())
    old = time.time() - compaction.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    fresh = log.partition_dir(day(5).date()) / ".tmp-part-in-progress.parquet"
    fresh.write_bytes(b"being written")
    report = compact(settings, now=NOW)
    assert report.stale_tmp_removed == 1
    assert not stale.exists() and fresh.exists()


def test_compact_every_removes_late_rows_on_its_schedule_and_stops_on_sigterm(
        make_settings, tmp_path: Path) -> None:
    """``bouquet compact --every`` as a process on the real services: its first run removes
    the erased resident's rows, a later run the row that arrived late, and SIGTERM ends it
    with a clean exit."""
    import signal
    import subprocess
    import sys

    from bouquet.benchmarks.processes import service_env

    settings = make_settings()
    now = datetime.now(UTC)
    log = EventLog(settings.event_log_path, writer_id="test")
    log.append([record("e-1", ERASED, "use", now - timedelta(days=3)),
                record("k-1", "rKeepA", "use", now - timedelta(days=3)),
                record("e-erase", ERASED, "erase", now - timedelta(days=2), channel="system")])
    report = tmp_path / "last.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bouquet", "compact", "--every", "2s", "--no-aof", "--json",
         str(report)], env=service_env(settings, "unused-app-key"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)

    def wait_until(condition, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    try:
        wait_until(report.exists, "the first run's report")
        wait_until(lambda: not file_occurrences(settings.event_log_path, "e-1"), "e-1 gone")
        log.append([record("e-late", ERASED, "use", now - timedelta(days=2, hours=12))])
        wait_until(lambda: not file_occurrences(settings.event_log_path, "e-late"),
                   "the late row removed by a later run")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    runs = int(out.rsplit("compaction stopped after ", 1)[1].split(" ")[0])
    assert runs >= 2
    assert visible(settings) == ["k-1"]
