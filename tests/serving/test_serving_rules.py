"""Serving's rules that read the resident's own behaviour or segment, on the ranking alone
(no Redis): rotation of ignored bundles, the segment cold start, exploration."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from bouquet.core.catalog import load_catalog
from bouquet.core.profile import all_segments, segment_id
from bouquet.core.recommendation import development_ids
from bouquet.models.online import Audience, unpack_list
from bouquet.pipelines.publish import publish_in_memory
from bouquet.serving.ranking import EXPLORE, FALLBACK_SEGMENT, OfferRanker, answer, personalises
from bouquet.serving.store import RecentEvent, ResidentState
from tests.serving.support import small_model, with_segments

CATALOG = load_catalog()
DAY = 86_400.0
NOW = time.time()
PROFILE = {"consent": True, "neighbourhood": "gare", "age_band": "26-40",
           "household": "family", "student": False, "low_income": False}
SEGMENT = segment_id("gare", "26-40", "family")


def version_of(model=None):
    model = model or small_model(CATALOG)
    published, lists = publish_in_memory(model, model_version="v1", top=50)
    return published, lists


def ranker(**rules) -> OfferRanker:
    return OfferRanker(CATALOG, **rules)


def state(lists, rid: str = "r1", profile=None, recent=()) -> ResidentState:
    return ResidentState(precomputed=lists.get(rid, unpack_list(None)),
                         profile=dict(PROFILE if profile is None else profile),
                         recent=list(recent))


def shown(bundle: str, days_ago: float) -> RecentEvent:
    return RecentEvent("view", None, bundle, NOW - days_ago * DAY, "v1.champion.00000000000a")


def test_a_bundle_shown_and_ignored_twice_is_rotated_out_for_a_while() -> None:
    version, lists = version_of()
    rules = ranker(rotate_after=2, rotate_days=28)

    def top(recent=(), personalise=True):
        ranked = rules.rank("b", state(lists, recent=recent), version, k=3,
                            personalise=personalise, rerank=False, now=NOW)
        return [p.item_id for p in ranked.items], ranked

    first = top()[0][0]
    assert first in top([shown(first, 1)])[0]  # once is not ignoring
    ids, ranked = top([shown(first, 1), shown(first, 9)])
    assert first not in ids and ranked.rotated == {first}
    # a click after the impressions: not ignored; older than the window: forgotten
    clicked = RecentEvent("click", None, first, NOW - 0.5 * DAY)
    assert first in top([clicked, shown(first, 1), shown(first, 9)])[0]
    assert first in top([shown(first, 1), shown(first, 30)])[0]
    # a view the resident found alone is not an impression; no rotation without consent
    own = [RecentEvent("view", None, first, NOW - DAY), RecentEvent("view", None, first, NOW)]
    assert first in top(own)[0]
    assert not top([shown(first, 1), shown(first, 9)], personalise=False)[1].rotated
    disabled = ranker(rotate_after=0).rank(
        "b", state(lists, recent=[shown(first, 1), shown(first, 9)]), version, k=3,
        personalise=True, rerank=False, now=NOW)
    assert first in [p.item_id for p in disabled.items]


def test_a_consenting_resident_without_history_gets_their_segments_popular_list() -> None:
    model = with_segments(small_model(CATALOG), SEGMENT, "family-pack")
    version, lists = version_of(model)
    rules = ranker()
    cold = rules.rank("b", state({}, rid="newcomer"), version, k=3, personalise=True,
                      rerank=True, now=NOW)
    assert cold.items[0].item_id == "family-pack"
    assert cold.items[0].reason_code == f"segment:{SEGMENT}"
    assert cold.fallback == FALLBACK_SEGMENT and not cold.personalised
    assert "residents like them" in cold.notice
    assert rules.reason_text(cold.items[0].reason_code) == \
        "Popular with residents like you in Quartier de la Gare (station district)"
    # without consent: the neighbourhood's list, whatever the declared attributes
    lawful = rules.rank("b", state({}, rid="newcomer", profile={**PROFILE, "consent": False}),
                        version, k=3, personalise=False, rerank=True, now=NOW)
    assert lawful.fallback == "popular_neighbourhood"
    assert all(p.reason_code == "popular:gare" for p in lawful.items)


def test_without_a_champion_segment_lists_serve_consenting_residents_only_when_earned(
) -> None:
    model = with_segments(small_model(CATALOG), SEGMENT, "family-pack")
    rules = ranker(explore_share=0.0)
    use = RecentEvent("use", "bike-share", None, NOW - DAY)

    def served(audience: Audience, profile=None):
        version, lists = publish_in_memory(model, model_version="v1", top=50,
                                           audience=audience)
        assert lists == {}  # no personal list is published without a champion
        # r1 has a history the unpromoted model knows, and a recent event to fold in
        return answer(rules, "b", "r1", state(lists, profile=profile, recent=[use]), version,
                      variant="champion", personalise=personalises(version), rerank=True,
                      k=3, ids=development_ids(), now=NOW).ranked

    earned = served(Audience(personalised=False, segment_lists=True))
    assert earned.items[0].item_id == "family-pack" and earned.fallback == FALLBACK_SEGMENT
    assert not earned.personalised and not earned.reranked  # no unearned model folds in
    not_earned = served(Audience(personalised=False, segment_lists=False))
    assert not_earned.fallback == "popular_neighbourhood" and not not_earned.reranked
    assert all(p.reason_code == "popular:gare" for p in not_earned.items)
    lawful = served(Audience(personalised=False, segment_lists=True),
                    profile={**PROFILE, "consent": False})
    assert lawful.fallback == "popular_neighbourhood"


def test_a_versions_audience_survives_its_meta_and_older_versions_keep_their_rule() -> None:
    for audience in (Audience(), Audience(False, True), Audience(False, False)):
        assert Audience.from_meta(audience.as_meta()) == audience
    # published before segment lists were gated: segment lists exactly when personalised
    assert Audience.from_meta({"personalised": "1"}) == Audience(True, True)
    assert Audience.from_meta({"personalised": "0"}) == Audience(False, False)
    assert Audience.from_meta({}) == Audience(True, True)
    assert not personalises(publish_in_memory(small_model(CATALOG), model_version="v1", top=5,
                                              audience=Audience(False, False))[0])


def test_exploration_fills_a_share_of_the_slots_by_thompson_sampling() -> None:
    base = small_model(CATALOG)
    segments = all_segments(CATALOG.neighbourhood_ids)
    shown_, taken = (np.zeros((1 + len(segments), len(base.bundle_ids))) for _ in range(2))
    row = 1 + segments.index(SEGMENT)
    shown_[row] = 1000.0
    target = "culture-pass"
    taken[row, base.bundle_ids.index(target)] = 400.0  # converts well in this segment
    shown_[0], taken[0] = shown_[row], taken[row]
    model = with_segments(base, SEGMENT, "family-pack", shown_, taken)
    version, lists = version_of(model)
    rules = ranker(explore_share=1 / 3)
    picks = Counter()
    for n in range(60):
        rid = f"r{n % 50}"
        found = answer(rules, "b", rid, state(lists, rid=rid), version, variant="champion",
                       personalise=True, rerank=False, k=3, ids=development_ids(),
                       now=NOW + n * DAY)
        items = found.ranked.items
        assert len(items) == 3 and len({p.item_id for p in items}) == 3
        assert [p.source for p in items].count(EXPLORE) == 1 == found.ranked.explored
        explored = items[-1]
        assert explored.source == explored.reason_code == EXPLORE
        assert development_ids().verify(found.item_recommendation_id(explored))[:2] == \
            ("v1", "champion-explore")
        assert found.item_recommendation_id(items[0]) == found.recommendation_id
        picks[explored.item_id] += 1
    assert picks.most_common(1)[0][0] == target, picks
    # the same resident, day and model version: the same answer
    again = [answer(rules, "b", "r7", state(lists, rid="r7"), version, variant="champion",
                    personalise=True, rerank=False, k=3, ids=development_ids(),
                    now=NOW).bundle_ids()
             for _ in range(2)]
    assert again[0] == again[1]
    # no exploration without consent
    lawful = rules.rank("b", state(lists, profile={**PROFILE, "consent": False}), version, k=3,
                        personalise=False, rerank=False, now=NOW)
    assert lawful.explored == 0
