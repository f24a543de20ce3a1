"""Property tests of the decision rule over random cities and histories: whatever residents
do, no plan breaks a contact rule.

Each example is a small city planned day after day with random settings (caps, gap, pause,
holdout, budgets), residents who give and withdraw contact consent, are erased, change
their channels and quiet hours, and open nudges or not.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bouquet.core.outreach import in_holdout, quiet_minutes
from bouquet.outreach.decide import PlanConfig
from bouquet.outreach.rules import WEEK_S, ContactRules
from bouquet.outreach.timing import DayClock
from tests.outreach.world import ZONE, World, days_from

START = date(2026, 3, 23)  # the week before a daylight-saving change in Europe/Paris


@st.composite
def configs(draw: st.DrawFn) -> PlanConfig:
    per_week = draw(st.integers(1, 4))
    gap_h = draw(st.sampled_from([24.0, 36.0, 48.0, 72.0, 100.0]))
    budgets = draw(st.dictionaries(st.sampled_from(["push", "email", "sms"]),
                                   st.integers(0, 6), max_size=2))
    return PlanConfig(
        rules=ContactRules(max_per_week=per_week, min_gap_s=gap_h * 3600,
                           pause_after=draw(st.integers(1, 4)),
                           pause_s=draw(st.sampled_from([1, 2])) * WEEK_S,
                           response_window_s=draw(st.sampled_from([12.0, 48.0])) * 3600),
        timezone=ZONE, channel_budget=budgets,
        holdout_share=draw(st.sampled_from([0.0, 0.1, 0.5])),
        holdout_salt=draw(st.sampled_from(["a", "b"])),
        default_channels=tuple(draw(st.sets(st.sampled_from(["push", "email", "sms"]),
                                            min_size=1))),
        candidates=draw(st.integers(1, 4)), chunk=7)


@settings(max_examples=30, deadline=None)
@given(config=configs(), seed=st.integers(0, 2**32 - 1), residents=st.integers(1, 25),
       n_days=st.integers(3, 16), hours=st.lists(st.integers(0, 23), min_size=16,
                                                  max_size=16))
def test_no_plan_breaks_a_rule(config: PlanConfig, seed: int, residents: int, n_days: int,
                               hours: list[int]) -> None:
    world = World(np.random.default_rng(seed), residents, config)
    budgets_used: list[dict[str, int]] = []
    for day, hour in zip(days_from(START, n_days), hours, strict=False):
        plan = world.plan_day(day, hour)
        budgets_used.append(plan.nudges["channel"].value_counts().to_dict())
        world.next_day()
    rules = config.rules
    per_resident: dict[str, list[dict]] = defaultdict(list)
    for nudge in world.nudges:
        per_resident[nudge["resident_id"]].append(nudge)
        # who: contact consent at plan time, never erased, never the holdout
        assert nudge["contact"] and not nudge["erased"]
        assert not in_holdout([nudge["resident_id"]], config.holdout_salt,
                              config.holdout_share)[0]
        # when: on the planned day, not before the plan, outside the quiet hours in force
        clock = DayClock.of(nudge["day"], ZONE)
        assert nudge["now"] <= nudge["send_at"] <= clock.epochs[-1]
        minute = clock.minute_of(nudge["send_at"])
        local = datetime.fromtimestamp(nudge["send_at"], ZoneInfo(ZONE))
        assert local.date() == nudge["day"] and local.hour * 60 + local.minute == minute
        quiet = nudge["profile"].get("quiet_hours") or config.quiet_hours
        assert not quiet_minutes(quiet)[minute]
        # how: a channel the resident accepts (the default when they declared none)
        accepted = nudge["profile"].get("channels") or config.default_channels
        assert nudge["channel"] in accepted
        assert nudge["offer_id"] and nudge["gain"] > 0
    for nudges in per_resident.values():
        times = sorted(n["send_at"] for n in nudges)
        days = [n["day"] for n in nudges]
        assert len(set(days)) == len(days)  # at most one a day
        assert all(b - a >= rules.min_gap_s - 1e-6 for a, b in zip(times[:-1], times[1:],
                                                                   strict=True))
        for t in times:  # at most N in any 7 days ending at a nudge
            assert sum(t - WEEK_S < u <= t for u in times) <= rules.max_per_week
    for used in budgets_used:
        for channel, budget in config.channel_budget.items():
            assert used.get(channel, 0) <= budget


def test_a_withdrawal_is_honoured_at_the_next_plan_and_a_grant_too() -> None:
    config = PlanConfig(holdout_share=0.0, rules=ContactRules(max_per_week=7,
                                                              min_gap_s=24 * 3600))
    world = World(np.random.default_rng(3), 30, config)
    for p in world.people:
        p.contact, p.erased = True, False
    first, second, third = days_from(START, 3)
    assert world.plan_day(first, 6).planned > 0
    quitter, joiner = world.people[0], world.people[1]
    quitter.contact, joiner.contact = False, False
    nudged = set(world.plan_day(second, 6).nudges["resident_id"])
    assert quitter.rid not in nudged and joiner.rid not in nudged
    joiner.contact = True
    assert joiner.rid in set(world.plan_day(third, 6).nudges["resident_id"])


def test_residents_who_never_open_are_paused_then_return() -> None:
    rules = ContactRules(max_per_week=7, min_gap_s=24 * 3600, pause_after=3,
                         pause_s=2 * WEEK_S, response_window_s=6 * 3600)
    config = PlanConfig(holdout_share=0.0, rules=rules)
    world = World(np.random.default_rng(5), 12, config)
    for p in world.people:
        p.contact, p.erased, p.open_rate = True, False, 0.0
        p.profile.pop("quiet_hours", None)
    days = days_from(START, 30)
    planned = {d: set(world.plan_day(d, 6).nudges["resident_id"]) for d in days}
    for p in world.people:
        mine = [d for d in days if p.rid in planned[d]]
        # three nudges on three days (each settled, unopened, by the next 06:00 plan), then
        # nothing for two weeks, then again
        assert len(mine) >= 4, (p.rid, mine)
        assert (mine[1] - mine[0]).days == 1 and (mine[2] - mine[1]).days == 1
        assert (mine[3] - mine[2]).days >= 14
    # an opener is never paused
    world = World(np.random.default_rng(5), 12, config)
    for p in world.people:
        p.contact, p.erased, p.open_rate = True, False, 1.0
        p.profile.pop("quiet_hours", None)
    counts = defaultdict(int)
    for d in days:
        for rid in world.plan_day(d, 6).nudges["resident_id"]:
            counts[rid] += 1
    assert min(counts.values()) >= 28
