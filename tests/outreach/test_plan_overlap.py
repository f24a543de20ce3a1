"""The planner keeps its next Redis call in flight while it works on the current reply
(``outreach/overlap.py``). That may not change a decision: on a generated city (the
benchmark's, small, with many small chunks so that the overlap really happens), the plan
equals the one the same steps make one after the other, and every record it makes is
written."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bouquet.benchmarks.outreach import fill
from bouquet.core.catalog import load_catalog
from bouquet.core.outreach import ResidentRecord, decode_record
from bouquet.core.settings import Settings
from bouquet.outreach import decide as decide_module
from bouquet.outreach import store as store_module
from bouquet.outreach.decide import DayPlan, decide
from bouquet.outreach.history import read_history
from bouquet.outreach.planner import Planner, plan_seed
from bouquet.serving.ranking import OfferRanker

RESIDENTS = 3_000


def _in_turn(calls: Iterable[Callable[[], Any]]) -> Iterator[Any]:
    return (call() for call in calls)


def _comparable(plan: DayPlan) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The plan without its random ids (message and recommendation ids are minted fresh)."""
    minted = set(plan.nudges["recommendation_id"])
    records = {rid: (sorted(r.sent), sorted((t, "" if ref in minted else ref)
                                            for t, ref in r.pending), r.streak,
                     r.paused_until) for rid, r in plan.records.items()}
    return plan.nudges.drop(columns=["message_id", "recommendation_id"]), records


@pytest.fixture
def city(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Planner:
    fill(str(settings.state_dir), settings.redis_url, RESIDENTS, 30, 5,
         key_prefix=settings.redis_key_prefix)
    # groups of 300 residents, decisions in chunks of 700: many calls to overlap
    monkeypatch.setattr(store_module, "CHUNK", 100)
    monkeypatch.setattr(store_module, "PIPELINED_CALLS", 3)
    catalog = load_catalog(None)
    planner = Planner(settings, catalog, OfferRanker(catalog))
    planner.config = dataclasses.replace(planner.config, chunk=700)
    return planner


def test_the_overlapped_plan_is_the_plan_made_step_by_step(
        city: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
    planner = city
    day = planner.today() + timedelta(days=1)
    now = planner.plan_instant(day)
    _, overlapped = planner.plan(day, now=now, dry_run=True)

    monkeypatch.setattr(store_module, "one_ahead", _in_turn)
    monkeypatch.setattr(decide_module, "one_ahead", _in_turn)
    ids = planner.store.contactable()
    residents = planner._residents(ids)
    history = read_history(planner.settings.event_log_path, planner.catalog, ids, now,
                           planner.settings.outreach_history_days,
                           planner.settings.outreach_timezone,
                           recommendation_ids=planner.config.recommendation_ids)
    knowledge = planner._knowledge(history, residents, now)
    lists = planner.store.published(planner.catalog.neighbourhood_ids)
    assert lists is not None
    rng = np.random.default_rng(plan_seed(planner.settings.outreach_holdout_salt, day))
    in_turn = decide(day, now, residents,
                     lambda rows: planner.store.offers(list(residents.ids[rows]), lists.version),
                     knowledge, lists, planner.catalog, planner.filters, planner.config, rng)

    assert overlapped.planned > RESIDENTS // 2  # the city is worth planning
    assert overlapped.excluded == in_turn.excluded
    assert overlapped.paused_now == in_turn.paused_now
    (nudges_a, records_a), (nudges_b, records_b) = _comparable(overlapped), _comparable(in_turn)
    pd.testing.assert_frame_equal(nudges_a, nudges_b)
    assert records_a == records_b


def test_every_record_of_the_plan_is_written(city: Planner) -> None:
    planner = city
    day = planner.today() + timedelta(days=1)
    report, plan = planner.plan(day, now=planner.plan_instant(day), deliver=False)
    assert report.planned > RESIDENTS // 2
    written = plan.records
    residents, _ = planner.store.resident_table(list(written))
    stored = dict(zip(residents.ids, residents.records, strict=True))
    for rid, record in written.items():
        expected = decode_record(record.encode())  # what a record stores (whole seconds)
        kept = stored[rid] or ResidentRecord()  # a record left with nothing is deleted
        assert kept == expected, rid
