"""What a nudge is expected to bring: P(open) and P(convert | open).

**Beta–Bernoulli per cell.** A cell is segment (the resident's neighbourhood) × offer ×
channel. Its successes and trials come from outcomes in the event log: a delivered nudge
(``notify``) whose response window has passed is an open trial, a success when an ``open``
carries its recommendation id; an opened nudge is a conversion trial, a success when a
use-class event (use, pay, subscribe, rate) carries the id. Cells are sparse, so each is
shrunk toward its offer × channel rate, itself shrunk toward the channel's rate, itself
toward a default (``PRIOR_OPEN`` / ``PRIOR_CONVERT``), each step with the weight of
``strength`` nudges::

    p_channel = (S_c   + m · p_default) / (N_c   + m)
    p_offer   = (S_oc  + m · p_channel) / (N_oc  + m)
    cell      ~ Beta(S_soc + m · p_offer, N_soc − S_soc + m · (1 − p_offer))

**Thompson sampling.** Each (resident, candidate, channel) draws its own P(open) and
P(convert) from the cells' posteriors, and the resident's nudge is the draw of highest
expected gain. A new offer has the pooled rate with a wide posterior, so some residents draw
it high and it is tried; as outcomes come in the posterior narrows.

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Default rates before any outcome is seen (a push campaign opens at roughly this rate).
PRIOR_OPEN = 0.2
PRIOR_CONVERT = 0.1


@dataclass(frozen=True)
class BetaCells:
    """Posterior Beta parameters per (segment, offer, channel)."""

    alpha: np.ndarray  # (segments, offers, channels) float64
    beta: np.ndarray

    def mean(self) -> np.ndarray:
        return self.alpha / (self.alpha + self.beta)

    def sample(self, rng: np.random.Generator, segment: np.ndarray, offer: np.ndarray,
               channel: np.ndarray) -> np.ndarray:
        """One Thompson draw per element of the (broadcast) index arrays."""
        a = self.alpha[segment, offer, channel]
        b = self.beta[segment, offer, channel]
        return rng.beta(a, b)


def fit_cells(segment: np.ndarray, offer: np.ndarray, channel: np.ndarray,
              success: np.ndarray, shape: tuple[int, int, int], prior: float,
              strength: float) -> BetaCells:
    """Posteriors of every cell from trials (one element per trial; see the module
    docstring for the shrinkage)."""
    n_seg, n_off, n_ch = shape
    success = np.asarray(success, dtype=np.float64)
    flat = (np.asarray(segment) * n_off + np.asarray(offer)) * n_ch + np.asarray(channel)
    size = n_seg * n_off * n_ch
    trials = np.bincount(flat, minlength=size).reshape(shape).astype(np.float64)
    wins = np.bincount(flat, weights=success, minlength=size).reshape(shape)
    m = float(strength)
    per_channel = (wins.sum(axis=(0, 1)) + m * prior) / (trials.sum(axis=(0, 1)) + m)
    per_offer = (wins.sum(axis=0) + m * per_channel[None, :]) / (trials.sum(axis=0) + m)
    alpha = wins + m * per_offer[None, :, :]
    beta = trials - wins + m * (1.0 - per_offer[None, :, :])
    return BetaCells(alpha, beta)
