"""`bouquet outreach run`'s schedule: today at the planning hour until today is planned,
then tomorrow; and a plan is only for a day near now."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings
from bouquet.outreach.planner import Planner
from bouquet.serving.ranking import OfferRanker

CATALOG = load_catalog()
PARIS = ZoneInfo("Europe/Paris")


def test_next_run_is_today_until_planned_then_tomorrow(tmp_path) -> None:
    settings = Settings(env="test", state_dir=tmp_path, outreach_plan_hour=6,
                        redis_url="redis://127.0.0.1:1/0")
    planner = Planner(settings, CATALOG, OfferRanker(CATALOG))  # Redis is never reached
    early = datetime(2026, 12, 8, 4, 30, tzinfo=PARIS).timestamp()
    late = datetime(2026, 12, 8, 15, 0, tzinfo=PARIS).timestamp()
    assert planner.next_run(early) == (date(2026, 12, 8),
                                       datetime(2026, 12, 8, 6, tzinfo=PARIS).timestamp())
    assert planner.next_run(late) == (date(2026, 12, 8), late)  # missed: plan now
    (planner.ledger.path(date(2026, 12, 8))).parent.mkdir(parents=True)
    planner.ledger.path(date(2026, 12, 8)).write_bytes(b"")
    assert planner.next_run(late) == (date(2026, 12, 9),
                                      datetime(2026, 12, 9, 6, tzinfo=PARIS).timestamp())
    assert planner.plan_instant(date(2026, 12, 10), now=late) == \
        datetime(2026, 12, 10, 6, tzinfo=PARIS).timestamp()
    with pytest.raises(ValueError, match="more than a year"):
        planner.plan(date(2030, 1, 1), now=late)
