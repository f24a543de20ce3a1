"""The DuckDB figures (analytics/logdb.py, analytics/sql/) against the pandas computation
they replaced, kept as the test oracle (analytics/engagement.py), on a generated log with
re-delivered rows, erased residents (erase events, and the erasure register), consent
withdrawals and forged recommendation ids: every table, for every selection of cadence
classes, its small-cell suppression and the funnel must be equal (floats to 1e-12)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bouquet.analytics.engagement import DIMENSIONS
from bouquet.analytics.figures import suppressed_breakdown
from bouquet.analytics.funnel import funnel_by_arm
from bouquet.analytics.logdb import CLASSES, LogDatabase
from bouquet.analytics.synthetic import SyntheticSpec, generate
from bouquet.core.cadence import CADENCE_CLASSES
from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import DECLARED_COLUMNS, SCHEMA, EventLog
from tests.analytics.engagement_oracle import compute_engagement, load_engagement_data

CATALOG = load_catalog(None)
ERASED_AT = datetime(2026, 10, 15, tzinfo=UTC)
REGISTERED_AT = datetime(2026, 9, 20, tzinfo=UTC)
FIGURES = ("cadence", "stickiness", "contacts", "monthly", "cohorts", "lifetime", "daily")
SELECTIONS = (CLASSES, ("use",), ("response",), ("exposure",))
K = 5


class Register:
    """The erasure register as the view sees it (privacy.erasure.ErasureRegister)."""

    def __init__(self, erased: dict[str, float]) -> None:
        self.erased = erased

    def __len__(self) -> int:
        return len(self.erased)

    def erased_among(self, resident_ids: Iterable[str]) -> dict[str, float]:
        return {r: self.erased[r] for r in resident_ids if r in self.erased}


def erase_events(residents: Iterable[str], at: datetime, tag: str) -> list[dict]:
    return [{"event_id": f"{tag}-{rid}", "resident_id": rid, "type": "erase", "ts": at,
             "channel": "desk", "schema_version": 1} for rid in residents]


def generated_log(root: Path) -> tuple[Path, list[str], list[str]]:
    """Four months of a synthetic city, plus what readers must undo or must not count: a
    batch written twice, erase events for a few residents, recommendation ids that do not
    verify, and consent withdrawals (administrative: never a contact). Also returns the
    residents the erasure register alone names (their events are still in the files)."""
    table = generate(CATALOG, SyntheticSpec(residents=1500, days=120, end=date(2026, 10, 31),
                                            seed=5))
    log = EventLog(root, writer_id="gen")
    log.append(table)
    log.append(table.slice(1000, 3000))  # re-delivered: the first copy must win
    rec = table["recommendation_id"].to_numpy(zero_copy_only=False)
    forged = np.flatnonzero(pd.notna(rec))[:40]
    rows = table.take(pa.array(forged))
    rows = rows.set_column(rows.schema.get_field_index("event_id"), "event_id",
                           pc.binary_join_element_wise(rows["event_id"], "-forged", ""))
    rows = rows.set_column(rows.schema.get_field_index("recommendation_id"),
                           "recommendation_id",
                           pc.binary_join_element_wise(rows["recommendation_id"], "0", ""))
    log.append(rows)
    residents = sorted(set(table["resident_id"].to_pylist()))
    erased, registered = residents[:25], residents[25:40]
    log.append(erase_events(erased, ERASED_AT, "erase"))
    log.append([{"event_id": f"withdraw-{rid}", "resident_id": rid, "type": "consent",
                 "ts": datetime(2026, 9, 1 + i % 28, 12, tzinfo=UTC), "value": 0.0,
                 "channel": "app", "schema_version": 1}
                for i, rid in enumerate(residents[40:140])])
    return root, erased, registered


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory):
    """The log with a register for DuckDB, and for the oracle (which knows only erase
    events) the same files plus erase events for the registered residents."""
    root, erased, registered = generated_log(tmp_path_factory.mktemp("log"))
    oracle = tmp_path_factory.mktemp("oracle") / "log"
    shutil.copytree(root, oracle)
    EventLog(oracle, writer_id="oracle").append(erase_events(registered, REGISTERED_AT,
                                                             "registered"))
    register = Register({r: REGISTERED_AT.timestamp() for r in registered})
    db = LogDatabase(root, CATALOG, memory_limit="256MB", threads=2, erasures=register)
    db.erased_in_test, db.registered_in_test = erased, registered
    yield oracle, db
    db.close()


@pytest.fixture(scope="module")
def both(logs):
    oracle, db = logs
    return load_engagement_data(oracle, CATALOG), db


def assert_same(old: pd.DataFrame, new: pd.DataFrame, name: str) -> None:
    old, new = old.reset_index(drop=True), new.reset_index(drop=True)
    assert list(old.columns) == list(new.columns), name
    assert len(old) == len(new) > 0, name
    for column in old.columns:
        a, b = old[column], new[column]
        if a.dtype.kind in "fiub":
            assert a.dtype.kind == b.dtype.kind, (name, column, a.dtype, b.dtype)
            assert np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-12, atol=0,
                               equal_nan=True), (name, column)
        else:
            assert [str(x) for x in a] == [str(x) for x in b], (name, column)


@pytest.fixture(scope="module")
def engagements(logs):
    """Per selection of cadence classes: (oracle, DuckDB) engagement."""
    oracle, db = logs
    out = {}
    for classes in SELECTIONS:
        types = set().union(*(CADENCE_CLASSES[c] for c in classes))
        data = load_engagement_data(oracle, CATALOG, contact_types=types)
        out[classes] = compute_engagement(data), db.engagement(classes)
    return out


@pytest.mark.parametrize("classes", SELECTIONS, ids="+".join)
@pytest.mark.parametrize("figure", FIGURES)
def test_every_engagement_table_equals_the_pandas_path(engagements, figure: str,
                                                       classes: tuple[str, ...]) -> None:
    old, new = engagements[classes]
    assert_same(getattr(old, figure), getattr(new, figure), figure)


@pytest.mark.parametrize("classes", [CLASSES, ("use",)], ids="+".join)
@pytest.mark.parametrize("by", ["all", *DIMENSIONS])
def test_small_cells_are_suppressed_alike(engagements, by: str,
                                          classes: tuple[str, ...]) -> None:
    old, new = engagements[classes]
    hidden = 0
    for figure in FIGURES:
        a = suppressed_breakdown(old, figure, K, by)
        b = suppressed_breakdown(new, figure, K, by)
        assert_same(a, b, f"{figure} by {by}")
        hidden += sum(len(s) for s in b["suppressed"]) if "suppressed" in b else 0
    assert hidden  # the log is small enough to have small cells


def test_the_use_headline_counts_fewer_contacts_than_every_class(engagements) -> None:
    every, use = engagements[CLASSES][1], engagements[("use",)][1]
    assert 0 < use.summary["contacts"] < every.summary["contacts"]
    assert use.summary["classes"] == ["use"]


@pytest.mark.parametrize("by", ["all", "neighbourhood", "domain", "channel"])
@pytest.mark.parametrize("weekly", [False, True])
def test_the_funnel_equals_the_pandas_path(both, by: str, weekly: bool) -> None:
    data, db = both
    since = data.last_event_day - 30
    for since_day in (None, since):
        old = funnel_by_arm(data.funnel_events, since_day=since_day, weekly=weekly, by=by)
        assert_same(old, db.funnel(since_day=since_day, weekly=weekly, by=by), f"funnel {by}")
    assert "unattributed" in set(db.funnel()["model_version"])


def test_the_view_reads_each_event_once_without_the_erased(both) -> None:
    data, db = both
    events = db.read_events(["event_id", "resident_id", "type", "ts"])
    assert len(events) == db.events == data.events
    assert events["event_id"].is_unique
    raw = pd.concat([pd.read_parquet(f, columns=["event_id", "resident_id", "ts"])
                     for f in db.files])
    assert len(raw) > len(events) and not raw["event_id"].is_unique  # so the test can fail
    assert "erase" not in set(events["type"])
    for erased, at in ((db.erased_in_test, ERASED_AT), (db.registered_in_test, REGISTERED_AT)):
        cutoff, erased = pd.Timestamp(at), set(erased)
        assert erased <= set(raw.loc[raw["ts"] <= cutoff, "resident_id"])
        assert not erased & set(events.loc[events["ts"] <= cutoff, "resident_id"])
        assert erased & set(events["resident_id"])  # who came back after is a new start


def test_a_log_written_before_typed_columns_gives_the_same_neighbourhoods(tmp_path) -> None:
    """Files from before the declared attributes were columns hold them in ``context``."""
    old_schema = pa.schema([f for f in SCHEMA if f.name not in DECLARED_COLUMNS])
    ts = datetime(2026, 3, 2, 9, tzinfo=UTC)
    rows = [{"event_id": "p1", "resident_id": "a", "type": "profile", "ts": ts,
             "channel": "app", "schema_version": 1, "ingested_at": ts,
             "context": '{"neighbourhood":"centre"}'},
            {"event_id": "u1", "resident_id": "a", "type": "use", "service_id": "bus",
             "ts": ts, "channel": "app", "schema_version": 1, "ingested_at": ts}]
    directory = tmp_path / "date=2026-03-02"
    directory.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema),
                   directory / "part-00000000T000000000000-old-000001.parquet")
    EventLog(tmp_path).append([
        {"event_id": "p2", "resident_id": "b", "type": "profile", "ts": ts, "channel": "app",
         "schema_version": 1, "context": '{"neighbourhood":"docks","screen":"home"}'},
        {"event_id": "u2", "resident_id": "b", "type": "use", "service_id": "bus", "ts": ts,
         "channel": "app", "schema_version": 1}])
    db = LogDatabase(tmp_path, CATALOG, memory_limit="128MB", threads=1)
    try:
        assert db.dimension_values["neighbourhood"][:2] == ("centre", "docks")
        cadence = db.engagement(("use",)).cadence
        known = cadence[cadence["dimension"] == "neighbourhood"].groupby("value")["known"].max()
        assert known["centre"] == known["docks"] == 1
    finally:
        db.close()


def test_a_partial_month_is_flagged_and_not_divided_by_full_weeks(engagements) -> None:
    """The log starts on 3 July: July's few days of actives are not a month's, so its
    stickiness ratios are left out rather than shown above 100 %."""
    monthly = engagements[("use",)][1].monthly
    city = monthly[monthly["dimension"] == "all"].set_index("month")
    assert not city.loc["2026-07", "month_complete"]
    assert city.loc[["2026-08", "2026-09", "2026-10"], "month_complete"].all()
    partial = monthly[~monthly["month_complete"]]
    assert partial["wau_mau"].isna().all() and partial["dau_mau"].isna().all()
    assert (partial["mau"] > 0).any()  # there were actives to divide
    complete = monthly[monthly["month_complete"] & (monthly["mau"] > 0)]
    assert complete["wau_mau"].notna().all() and (complete["wau_mau"] <= 1).all()
