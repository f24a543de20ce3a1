"""The ValleyBike replay: every kept trip becomes exactly one event, noise is counted."""

from __future__ import annotations

import csv
import gzip
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import read_events
from bouquet.core.events import check_against_catalog, parse_event
from bouquet.core.settings import Settings
from bouquet.simulation.columns import table_to_payloads
from bouquet.simulation.replay import read_trips, replay_table
from bouquet.simulation.runner import replay_valleybike

SECRET = "test-secret"


def _independent_count(path: Path) -> tuple[int, int, int, int]:
    """(rows, kept, missing_start, short) with the csv module and datetime, not pandas."""
    rows = kept = missing = short = 0
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            rows += 1
            try:
                start = datetime.fromisoformat(row["started_at"])
            except ValueError:
                missing += 1
                continue
            month, year = re.match(r"route_(\d\d)_(\d{4})@", row["route_id"]).groups()
            middle = datetime(int(year), int(month), 16, tzinfo=UTC)
            if abs(start - middle) > timedelta(days=45):
                continue  # clock error
            try:
                end = datetime.fromisoformat(row["ended_at"])
            except ValueError:
                kept += 1  # no end: duration unknown, kept
                continue
            if end < start:
                continue
            if (end - start).total_seconds() < 60:
                short += 1
                continue
            kept += 1
    return rows, kept, missing, short


def test_event_count_matches_an_independent_count(shared_data: Path, catalog: Catalog) -> None:
    path = shared_data / "valleybike" / "trips.tsv.gz"
    rows, kept, missing, short = _independent_count(path)
    trips = read_trips(path)
    c = trips.counts
    assert (c.rows, c.kept, c.missing_start, c.short) == (rows, kept, missing, short)
    assert (c.rows, c.missing_start, c.clock_error) == (135_972, 529, 11)
    table = replay_table(trips, catalog, SECRET)
    uses = table.filter(pc.equal(table["type"], "use"))
    assert uses.num_rows == kept
    assert table.num_rows == kept + c.riders  # one profile per rider
    assert pc.all(pc.equal(uses["service_id"], "bike-share")).as_py()
    assert pc.all(pc.equal(uses["channel"], "partner")).as_py()
    # with false starts kept, the use count grows by exactly the short trips
    head = read_trips(path, limit=20_000).counts
    assert read_trips(path, keep_short=True, limit=20_000).counts.kept == head.kept + head.short
    assert head.short > 1000


def _write(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with gzip.open(path, "wt") as handle:
        handle.write("route_id\tuser_id\tstarted_at\tended_at\n")
        for row in rows:
            handle.write("\t".join(row) + "\n")
    return path


def test_noise_is_counted_never_repaired(tmp_path: Path, catalog: Catalog) -> None:
    june = "route_06_2019@"
    path = _write(tmp_path / "trips.tsv.gz", [
        (june + "a1", "u1", "2019-06-03 08:00:00+00", "2019-06-03 08:20:00+00"),  # ok
        (june + "a2", "u1", "2019-06-04 08:00:00.5+00", "-"),  # no end: kept
        (june + "a3", "u2", "-", "-"),  # no start
        (june + "a4", "u2", "not a time", "2019-06-04 09:00:00+00"),  # bad start
        (june + "a5", "u2", "1980-11-21 14:24:06+00", "2019-06-05 10:00:00+00"),  # clock
        (june + "a6", "u3", "2019-06-05 10:00:00+00", "2019-06-05 09:00:00+00"),  # end < start
        (june + "a7", "u3", "2019-06-05 11:00:00+00", "2019-06-05 11:00:30+00"),  # short
        ("route_07_2019@a8", "u3", "2019-08-02 11:00:00+00", "2019-08-02 11:30:00+00"),  # ok
    ])
    c = read_trips(path).counts
    assert (c.rows, c.kept, c.riders) == (8, 3, 2)
    assert (c.missing_start, c.clock_error, c.end_before_start) == (2, 1, 1)
    assert (c.missing_end, c.missing_end_kept, c.short, c.short_dropped) == (2, 1, 1, 1)
    assert read_trips(path, keep_short=True).counts.kept == 4
    trips = read_trips(path)
    table = replay_table(trips, catalog, SECRET)
    times = sorted(t.isoformat() for t in table.filter(
        pc.equal(table["type"], "use"))["ts"].to_pylist())
    assert times == ["2019-06-03T08:00:00+00:00", "2019-06-04T08:00:00.500000+00:00",
                     "2019-08-02T11:00:00+00:00"]  # real starts only, never invented


def test_ids_are_pseudonymous_and_deterministic(tmp_path: Path, catalog: Catalog,
                                                shared_data: Path) -> None:
    trips = read_trips(shared_data / "valleybike" / "trips.tsv.gz", limit=3000)
    a = replay_table(trips, catalog, SECRET, assign_neighbourhoods=True)
    b = replay_table(trips, catalog, SECRET, assign_neighbourhoods=True)
    other = replay_table(trips, catalog, "another-secret")
    assert a.equals(b)
    raw = set(trips.user_id.tolist())
    residents = set(a["resident_id"].to_pylist())
    assert not raw & residents
    assert all(re.fullmatch(r"vb-[0-9a-f]{20}", r) for r in residents)
    assert len(residents) == len(raw) == trips.counts.riders
    assert not residents & set(other["resident_id"].to_pylist())
    uses = a.filter(pc.equal(a["type"], "use"))
    assert set(uses["event_id"].to_pylist()) == {
        "vb-" + r.replace("@", ".") for r in trips.route_id.tolist()}
    now = datetime.now(UTC)
    for payload in table_to_payloads(a):
        check_against_catalog(parse_event(json.dumps(payload)), catalog, now=now)
    profiles = a.filter(pc.equal(a["type"], "profile"))
    assert {json.loads(c)["neighbourhood"] for c in profiles["context"].to_pylist()} <= set(
        catalog.neighbourhood_ids)
    # each rider's profile precedes their first trip
    frame = a.select(["resident_id", "type", "ts"]).to_pandas()
    firsts = frame.sort_values("ts", kind="stable").groupby("resident_id").head(1)
    assert set(firsts["type"]) == {"profile"}


def test_replay_into_the_event_log_deduplicates(tmp_path: Path, shared_data: Path) -> None:
    settings = Settings(env="test", state_dir=tmp_path / "state")
    path = shared_data / "valleybike" / "trips.tsv.gz"
    summary, _ = replay_valleybike(settings, path, to="eventlog", limit=5000, progress=False)
    again, _ = replay_valleybike(settings, path, to="eventlog", limit=5000, progress=False)
    events = read_events(settings.event_log_path)
    assert len(events) == summary.events == again.events
    assert (events["type"] == "use").sum() == summary.counts.kept
    assert summary.consents == 0  # riders never opted in
    granted, memory = replay_valleybike(settings, path, to="memory", limit=5000,
                                        grant_consent=True, progress=False)
    assert granted.consents == granted.profiles == granted.counts.riders
    assert np.all(memory.table().filter(pc.equal(memory.table()["type"], "consent"))["value"]
                  .to_numpy() == 1.0)


def test_bad_files_fail_clearly(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_trips(path)
