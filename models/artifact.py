"""The deployable model artifact (filled in below) and the confidence rule it carries.

The confidence rule lives here, not in :mod:`bouquet.pipelines`, because two processes
must apply it identically: training turns the event log into confidence matrices, and
serving turns a resident's last few events (from Redis) into the same kind of confidences
before folding them in. Both import these functions; the artifact records their parameters.
"""

from __future__ import annotations

import numpy as np

NS_PER_DAY = 86_400 * 10**9


def decay_factor(age_days: np.ndarray | float, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age / half_life)``: an event loses half its weight every half-life.

    Ages below zero (an event after the reference time, e.g. clock skew) count as fresh.
    ``half_life_days`` of ``None`` or ``0`` disables decay.
    """
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    if not half_life_days:
        return np.ones_like(age)
    return np.exp2(-age / float(half_life_days))


def confidence(strength: np.ndarray | float, log_alpha: float) -> np.ndarray:
    """Confidence of a (resident, item) pair from its *strength*.

    ``strength`` = Σ over the pair's events of ``weight(type) · decay(age)``; the confidence
    is ``1 + log_alpha · log1p(strength)`` (Hu, Koren & Volinsky's log scaling): repeated
    events add diminishing returns, so a daily bus rider does not drown every other signal,
    and every observed pair is at least 1 — implicit's ALS reads a stored value as the
    pair's total confidence against an unobserved baseline of 1. Pairs of zero strength
    (only weight-0 events such as ``dismiss``) are not observations and are never stored.
    """
    s = np.asarray(strength, dtype=np.float64)
    return 1.0 + float(log_alpha) * np.log1p(s)
