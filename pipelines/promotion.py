"""The promotion rule: a candidate becomes champion only on evidence.

A training run evaluates every candidate on the same hold-out residents, so two models can
be compared resident by resident. The candidate chosen by the run is promoted when

1. the hold-out covers at least ``train_min_eval_residents`` residents (a metric averaged
   over six residents decides nothing);
2. its scores are not degenerate (they vary across residents: a model whose factors
   shrank to nothing ranks everyone alike, and would be popularity in disguise);
3. it beats the stronger popularity baseline **and** the current champion (re-evaluated on
   this split) on the primary metric, each with a paired bootstrap interval of the mean
   difference over hold-out residents that lies above 0, at the level
   ``BOUQUET_TRAIN_PROMOTION_LEVEL`` (80 % by default: better with one-sided confidence
   90 %; docs/training.md §6 says why not 95 %).

Otherwise the current champion keeps serving — or, with no champion, the popular lists —
and the decision says why, with the figures. ``--force`` promotes whatever the figures.

Without a champion, the popular lists are **the segment's** for consenting residents
(neighbourhood × age band × household, "popular with residents like you") only when the
segment baseline earns it by the same test: enough hold-out residents and an interval of
its gain over the stronger popularity baseline above 0 (:func:`decide_segment_lists`).
Otherwise they are the neighbourhood's. A segment list needs no model of the resident's own
behaviour, so it can beat popularity where no personal model yet does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Scores whose spread across residents is below this are degenerate.
DEGENERATE_SPREAD = 1e-8


@dataclass(frozen=True)
class Interval:
    """Mean paired difference (candidate − reference) and its bootstrap interval."""

    mean: float
    low: float
    high: float
    users: int
    level: float = 0.95

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    def __str__(self) -> str:
        return (f"{self.mean:+.4f} [{self.level:.0%} CI {self.low:+.4f}, {self.high:+.4f}; "
                f"{self.users} residents]")


def paired_bootstrap(candidate: np.ndarray, reference: np.ndarray, *, samples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> Interval:
    """Bootstrap (percentile) interval of ``mean(candidate − reference)`` at ``level``,
    resampling users.

    Both arrays hold one value per hold-out user, in the same user order.
    """
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must align: {a.shape} vs {b.shape}")
    diff = a - b
    n = len(diff)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    # resample in blocks so a million users × 2,000 samples never needs one huge index array
    block = max(1, 2_000_000 // n)
    for start in range(0, samples, block):
        stop = min(samples, start + block)
        picks = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[picks].mean(axis=1)
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high), n, level)


def score_spread(scores: np.ndarray) -> float:
    """Largest, over items, standard deviation of the scores across residents."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2:
        return 0.0
    return float(scores.std(axis=0).max())


def is_degenerate(scores: np.ndarray) -> bool:
    return score_spread(scores) < DEGENERATE_SPREAD


@dataclass(frozen=True)
class Decision:
    """Whether a new version takes the ``champion`` alias, and why (logged to the run)."""

    promote: bool
    reason: str
    champion_version: str | None = None
    champion_value: float | None = None
    candidate_value: float | None = None
    intervals: dict[str, str] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        return {
            "promotion.decision": "promoted" if self.promote else "not promoted",
            "promotion.reason": self.reason[:5000],
            "promotion.champion_version": self.champion_version or "",
            **{f"promotion.vs_{name}": text for name, text in self.intervals.items()},
        }


def decide(*, metric: str, candidate_value: float, eval_residents: int, min_residents: int,
           degenerate: bool, vs_popularity: Interval | None, vs_champion: Interval | None,
           champion_version: str | None, champion_value: float | None,
           force: bool = False) -> Decision:
    """The promotion rule (pure, so it is tested without a registry).

    ``vs_champion`` is None when there is no champion; when there is one but it could not
    be re-evaluated on this split, pass ``champion_version`` with ``vs_champion=None`` and
    the candidate is not promoted (nothing to compare with).
    """
    intervals = {name: str(found) for name, found in (("popularity", vs_popularity),
                                                      ("champion", vs_champion)) if found}
    common = {"champion_version": champion_version, "champion_value": champion_value,
              "candidate_value": candidate_value, "intervals": intervals}
    if force:
        return Decision(True, "forced (--force)", **common)
    if degenerate:
        return Decision(False, "its scores do not vary across residents (degenerate model)",
                        **common)
    short = _short_of_evidence(metric, eval_residents, min_residents, vs_popularity)
    if short is not None:
        return Decision(False, short, **common)
    if champion_version is None:
        return Decision(True, f"{metric} {candidate_value:.4f} beats popularity by "
                        f"{vs_popularity}; no champion yet", **common)
    if vs_champion is None:
        return Decision(False, f"champion v{champion_version} could not be re-evaluated on "
                        "this split: nothing to compare with (use --force to promote anyway)",
                        **common)
    if not vs_champion.above_zero:
        return Decision(False, f"{metric} does not beat champion v{champion_version} with "
                        f"confidence: {vs_champion}", **common)
    return Decision(True, f"{metric} {candidate_value:.4f} beats champion "
                    f"v{champion_version} by {vs_champion} and popularity by "
                    f"{vs_popularity}", **common)


@dataclass(frozen=True)
class SegmentDecision:
    """Whether a version published without a champion serves consenting residents their
    segment's popular list (else their neighbourhood's), and why (logged to the run and
    kept on the registered version, which is what publish reads)."""

    serve: bool
    reason: str

    #: The registered version's tag publish reads (``1``: serve segment lists).
    TAG = "segment_lists"

    def as_tags(self) -> dict[str, str]:
        return {"segment_lists.decision": "served" if self.serve else "not served",
                "segment_lists.reason": self.reason[:5000]}


def decide_segment_lists(*, metric: str, eval_residents: int, min_residents: int,
                         vs_popularity: Interval | None) -> SegmentDecision:
    """The segment lists' rule (pure): the promotion rule's evidence, against popularity."""
    short = _short_of_evidence(f"the segment lists' {metric}", eval_residents, min_residents,
                               vs_popularity)
    if short is not None:
        return SegmentDecision(False, short)
    return SegmentDecision(True, f"segment lists beat popularity on {metric} by "
                           f"{vs_popularity}")


def _short_of_evidence(measure: str, eval_residents: int, min_residents: int,
                       vs_popularity: Interval | None) -> str | None:
    """Why the hold-out does not show ``measure`` beating popularity (None: it does): the
    evidence both the promotion rule and the segment lists' rule require."""
    if eval_residents < min_residents:
        return (f"the hold-out has {eval_residents} residents with test positives, fewer "
                f"than the {min_residents} required (BOUQUET_TRAIN_MIN_EVAL_RESIDENTS); "
                "evaluate on more residents or weeks")
    if vs_popularity is None or not vs_popularity.above_zero or math.isnan(vs_popularity.low):
        return f"{measure} does not beat popularity with confidence: {vs_popularity}"
    return None
