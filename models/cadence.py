"""Ranking by expected cadence gain: a bundle's score weighed by how often it is used.

Bouquet's goal is a weekly cadence of *use*, and the models predict an *interaction*
(a click, a subscription). Two offers a resident is equally likely to take are not worth
the same: a mobility pass taken becomes a near-daily routine, an ID-documents bundle is
used once a year. So serving ranks bundles by ``score × weight``, the weight being the
bundle's **use rate** — use events per holder per week, counted from the event log at
training — relative to the most used bundle, to the power ``power``:

    weight_b = (rate_b / max rate) ** power

``power`` 0 ranks by the model's score alone, 1 by ``P(take up) × uses per week`` (the
expected cadence gain the outreach planner nudges by). A bundle nobody holds has no rate
of its own and gets the median of the others (not 0: a new bundle must still be shown to
be learnt). A weight is never below :data:`FLOOR` so a score keeps its sign's meaning.
"""

from __future__ import annotations

import numpy as np

#: Smallest weight: an offer almost nobody uses is pushed down, never out.
FLOOR = 1e-3


def use_rate(uses: np.ndarray, holders: np.ndarray, weeks: float) -> np.ndarray:
    """Uses per holder per week of each bundle (``uses``, ``holders``: per bundle); the
    median of the known rates where a bundle has no holder or no week was observed."""
    uses = np.asarray(uses, dtype=np.float64)
    holders = np.asarray(holders, dtype=np.float64)
    known = (holders > 0) & (weeks > 0)
    rate = np.divide(uses, holders * max(weeks, 1e-9), out=np.full(len(uses), np.nan),
                     where=known)
    fill = float(np.median(rate[known])) if known.any() else 0.0
    return np.where(np.isnan(rate), fill, rate)


def offer_use_rates(resident: np.ndarray, bundle: np.ndarray, service: np.ndarray,
                    holders: np.ndarray, n_services: int, weeks: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Uses a week of each bundle per holder and of each service per resident who used it,
    from ``use`` events — each one's resident code, bundle and service index (−1: none) —
    and each bundle's ``holders``: the one rule training counts by, and the simulator's
    popularity baseline with it."""
    resident, bundle, service = (np.asarray(a, dtype=np.int64)
                                 for a in (resident, bundle, service))
    holders = np.asarray(holders)
    bundle_uses = np.bincount(bundle[bundle >= 0], minlength=len(holders))
    named = service >= 0
    service_uses = np.bincount(service[named], minlength=n_services)
    pairs = np.unique(resident[named] * n_services + service[named])
    users = np.bincount(pairs % n_services, minlength=n_services)
    return use_rate(bundle_uses, holders, weeks), use_rate(service_uses, users, weeks)


def cadence_weights(rate: np.ndarray, power: float) -> np.ndarray:
    """Each bundle's weight in ``[FLOOR, 1]`` (see the module docstring); all 1 when
    ``power`` is 0 or no bundle was used."""
    rate = np.asarray(rate, dtype=np.float64)
    top = float(rate.max()) if len(rate) else 0.0
    if power == 0 or top <= 0:
        return np.ones(len(rate))
    return np.maximum(rate / top, FLOOR) ** power


def weigh(scores: np.ndarray | list[float], weights: np.ndarray | list[float]
          ) -> np.ndarray:
    """``scores`` ranked by expected cadence gain: a positive score times its weight, a
    negative one divided by it (an unlikely, rarely used offer stays below an unlikely,
    often used one, as a positive product would order them)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return np.where(s >= 0, s * w, s / w)
