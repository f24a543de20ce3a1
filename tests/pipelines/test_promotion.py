"""The promotion rule and its statistics, without a registry."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.pipelines.promotion import (
    Interval,
    decide,
    decide_segment_lists,
    is_degenerate,
    paired_bootstrap,
    score_spread,
)


def test_paired_bootstrap_covers_the_true_difference_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.05, 400)
    found = paired_bootstrap(better, base, samples=1000, seed=3)
    assert found.low < 0.05 < found.high and found.above_zero and found.users == 400
    assert found == paired_bootstrap(better, base, samples=1000, seed=3)
    same = paired_bootstrap(base, base, samples=500)
    assert same.mean == same.low == same.high == 0.0 and not same.above_zero
    noisy = paired_bootstrap(base[:6] + rng.normal(0, 0.3, 6), base[:6], samples=500)
    assert noisy.low < 0 < noisy.high  # six residents decide nothing
    with pytest.raises(ValueError, match="align"):
        paired_bootstrap(base, base[:5])


def test_the_promotion_level_sets_how_sure_the_interval_must_be() -> None:
    """A small real gain on a small hold-out: the 95% interval straddles 0, a 60% one (the
    candidate better with one-sided confidence 80%) does not; the level is in the text."""
    rng = np.random.default_rng(6)
    base = rng.random(250)
    slightly = base + 0.01 + rng.normal(0, 0.1, 250)
    wide = paired_bootstrap(slightly, base, samples=2000, seed=1)
    narrow = paired_bootstrap(slightly, base, samples=2000, seed=1, level=0.6)
    assert wide.mean == narrow.mean and wide.low < narrow.low < narrow.high < wide.high
    assert not wide.above_zero and narrow.above_zero
    assert "95% CI" in str(wide) and "60% CI" in str(narrow)


def test_degenerate_scores_are_those_that_do_not_vary_across_residents() -> None:
    rng = np.random.default_rng(1)
    assert is_degenerate(np.tile(rng.random(24), (50, 1)))  # everyone ranked alike
    assert is_degenerate(rng.random((50, 24)) * 1e-22)  # factors shrunk to nothing
    assert not is_degenerate(rng.random((50, 24)))
    assert score_spread(np.zeros((1, 5))) == 0.0


def _interval(low: float, high: float) -> Interval:
    return Interval((low + high) / 2, low, high, 300)


def test_decide_rule() -> None:
    good, flat = _interval(0.01, 0.05), _interval(-0.02, 0.03)
    args = {"metric": "bundles.ndcg_at_10", "candidate_value": 0.4, "eval_residents": 300,
            "min_residents": 200, "degenerate": False, "champion_value": None}
    assert decide(**args, vs_popularity=good, vs_champion=None, champion_version=None).promote
    no_pop = decide(**args, vs_popularity=flat, vs_champion=None, champion_version=None)
    assert not no_pop.promote and "does not beat popularity" in no_pop.reason
    few = decide(**{**args, "eval_residents": 6}, vs_popularity=good, vs_champion=None,
                 champion_version=None)
    assert not few.promote and "6 residents" in few.reason and "200" in few.reason
    flat_vs_champion = decide(**args, vs_popularity=good, vs_champion=flat,
                              champion_version="3")
    assert not flat_vs_champion.promote and "champion v3" in flat_vs_champion.reason
    assert "95% CI" in flat_vs_champion.reason
    assert decide(**args, vs_popularity=good, vs_champion=good, champion_version="3").promote
    unknown = decide(**args, vs_popularity=good, vs_champion=None, champion_version="3")
    assert not unknown.promote and "could not be re-evaluated" in unknown.reason
    degenerate = decide(**{**args, "degenerate": True}, vs_popularity=good, vs_champion=None,
                        champion_version=None)
    assert not degenerate.promote and "degenerate" in degenerate.reason
    forced = decide(**{**args, "eval_residents": 1}, vs_popularity=flat, vs_champion=flat,
                    champion_version="3", force=True)
    assert forced.promote and forced.as_tags()["promotion.decision"] == "promoted"
    assert set(forced.as_tags()) >= {"promotion.vs_popularity", "promotion.vs_champion"}


def test_segment_lists_serve_without_a_champion_only_on_the_same_evidence() -> None:
    above, straddles = Interval(0.02, 0.01, 0.03, 500), Interval(0.02, -0.01, 0.05, 500)
    rule = {"metric": "bundles.ndcg_at_10", "min_residents": 100}
    served = decide_segment_lists(eval_residents=500, vs_popularity=above, **rule)
    assert served.serve and "beat popularity" in served.reason
    assert served.as_tags()["segment_lists.decision"] == "served"
    assert not decide_segment_lists(eval_residents=500, vs_popularity=straddles, **rule).serve
    assert not decide_segment_lists(eval_residents=500, vs_popularity=None, **rule).serve
    few = decide_segment_lists(eval_residents=50, vs_popularity=above, **rule)
    assert not few.serve and "fewer than the 100" in few.reason
    nan = Interval(float("nan"), float("nan"), float("nan"), 0)
    assert not decide_segment_lists(eval_residents=500, vs_popularity=nan, **rule).serve
