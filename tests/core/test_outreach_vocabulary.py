"""Outreach's shared vocabulary: the holdout, quiet hours, the resident's record, the ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pytest

from bouquet.core.outreach import (
    LEDGER_SCHEMA,
    NudgeLedger,
    PlanExists,
    ResidentRecord,
    decode_record,
    in_holdout,
    quiet_minutes,
)


def test_holdout_is_stable_salted_and_of_the_share_asked() -> None:
    ids = [f"p{i:07d}" for i in range(20_000)]
    first = in_holdout(ids, "salt-a", 0.1)
    assert np.array_equal(first, in_holdout(ids, "salt-a", 0.1))
    assert abs(first.mean() - 0.1) < 0.01
    other = in_holdout(ids, "salt-b", 0.1)
    assert abs((first & other).mean() - 0.01) < 0.005  # another salt reshuffles
    assert not in_holdout(ids, "salt-a", 0.0).any()
    # a larger share keeps everyone the smaller one held out
    assert (in_holdout(ids, "salt-a", 0.2) >= first).all()


def test_quiet_hours_wrap_past_midnight() -> None:
    quiet = quiet_minutes("21:00-08:00")
    assert quiet[21 * 60] and quiet[0] and quiet[7 * 60 + 59]
    assert not quiet[8 * 60] and not quiet[20 * 60 + 59]
    assert quiet.sum() == 11 * 60
    day = quiet_minutes("12:00-13:30")
    assert day.sum() == 90 and day[12 * 60] and not day[13 * 60 + 30]
    assert not quiet_minutes("08:00-08:00").any()
    with pytest.raises(ValueError):
        quiet_minutes("8-21")


def test_record_round_trips_through_the_hash() -> None:
    record = ResidentRecord(sent=[1.79e9, 1.7901e9], pending=[(1.7901e9, "v1.outreach.abc")],
                            streak=2, paused_until=0.0)
    raw = {k.encode(): v.encode() for k, v in record.encode().items()}
    assert decode_record(raw) == record
    assert decode_record({}) == ResidentRecord()
    assert decode_record({b"sent": b"x 5", b"streak": b"?"}).sent == [5.0]


def test_ledger_writes_a_day_once_and_reads_by_recommendation_id(tmp_path) -> None:
    ledger = NudgeLedger(tmp_path / "ledger")
    day = date(2026, 12, 8)
    at = datetime(2026, 12, 8, 9, tzinfo=UTC)
    rows = {name: [None, None] for name in LEDGER_SCHEMA.names}
    rows.update({"plan_date": [day, day], "recommendation_id": ["v1.outreach.a", "v1.outreach.b"],
                 "channel": ["push", "sms"], "send_at": [at, at], "planned_at": [at, at]})
    ledger.write(day, pa.table({k: pa.array(v, LEDGER_SCHEMA.field(k).type)
                                for k, v in rows.items()}))
    assert ledger.days() == [day] and ledger.has(day)
    with pytest.raises(PlanExists):
        ledger.write(day, pa.table({k: pa.array(v, LEDGER_SCHEMA.field(k).type)
                                    for k, v in rows.items()}))
    found = ledger.read(recommendation_ids=["v1.outreach.b"])
    assert found["channel"].to_pylist() == ["sms"]
    assert ledger.read(start=date(2026, 12, 9)).num_rows == 0
    assert "resident_id" not in LEDGER_SCHEMA.names  # rows never name a resident
