"""Segment rates pooled by attributes (``additive_group_rates``) and the segment order."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS
from bouquet.core.profile import all_segments, segment_id, segment_levels
from bouquet.models.popularity import additive_group_rates

NEIGHBOURHOODS = ["centre", "north", "river", "hills"]


def _additive_world(seed: int, items: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """Segments whose rates are additive in their attributes' logits, and counts drawn
    from them for segments of 0 to 60 residents."""
    rng = np.random.default_rng(seed)
    levels = segment_levels(NEIGHBOURHOODS)
    effects = [rng.normal(0, 1, (n, items)) for n in (len(NEIGHBOURHOODS), len(AGE_BANDS),
                                                         len(HOUSEHOLDS))]
    logit = rng.normal(-2, 0.5, items) + sum(e[levels[:, f]] for f, e in enumerate(effects))
    truth = 1 / (1 + np.exp(-logit))
    sizes = rng.integers(0, 60, len(levels))
    return truth, rng.binomial(sizes[:, None], truth), sizes, levels


def test_segment_levels_follow_all_segments() -> None:
    segments = all_segments(NEIGHBOURHOODS)
    levels = segment_levels(NEIGHBOURHOODS)
    assert len(levels) == len(segments)
    rebuilt = [segment_id(NEIGHBOURHOODS[n], AGE_BANDS[a], HOUSEHOLDS[h]) for n, a, h in levels]
    assert rebuilt == segments
    # the order every published segment table keeps: neighbourhood, age band, household
    assert segments == [segment_id(nb, age, household) for nb in NEIGHBOURHOODS
                        for age in AGE_BANDS for household in HOUSEHOLDS]


def test_pooled_rates_are_closer_to_the_truth_than_each_segments_own_counts() -> None:
    truth, counts, sizes, levels = _additive_world(seed=7)
    pooled = additive_group_rates(counts, sizes, levels)
    seen = sizes > 0
    own = counts[seen] / sizes[seen, None]
    pooled_error = np.abs(pooled[seen] - truth[seen]).mean()
    own_error = np.abs(own - truth[seen]).mean()
    assert pooled_error < 0.6 * own_error, (pooled_error, own_error)


def test_a_segment_without_residents_gets_what_its_attributes_predict() -> None:
    levels = segment_levels(NEIGHBOURHOODS)
    families = levels[:, 2] == HOUSEHOLDS.index("family")
    sizes = np.full(len(levels), 40)
    empty = int(np.flatnonzero(families)[0])
    sizes[empty] = 0
    counts = np.where(families, 30, 2)[:, None] * (sizes[:, None] > 0)
    rates = additive_group_rates(counts, sizes, levels)[:, 0]
    others = rates[~families].max()
    assert rates[empty] > 3 * others  # a family segment, known only by its attributes


def test_items_nobody_or_everybody_has() -> None:
    levels = segment_levels(NEIGHBOURHOODS)
    sizes = np.full(len(levels), 5)
    counts = np.stack([np.zeros(len(levels)), sizes, np.minimum(levels[:, 0], 5)], axis=1)
    rates = additive_group_rates(counts, sizes, levels)
    assert np.all(rates[:, 0] == 0) and np.all(rates[:, 1] == 1)
    assert np.all((rates[:, 2] > 0) & (rates[:, 2] < 1))


def test_inconsistent_counts_are_refused() -> None:
    levels = segment_levels(NEIGHBOURHOODS)
    sizes = np.full(len(levels), 3)
    with pytest.raises(ValueError, match="between 0 and"):
        additive_group_rates(np.full((len(levels), 1), 4), sizes, levels)
    with pytest.raises(ValueError, match="one row per group"):
        additive_group_rates(np.zeros((2, 1)), sizes, levels)
