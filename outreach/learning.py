"""What a nudge is expected to bring: P(open), P(convert | open) and the offer's weekly use.

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

**Usage frequency.** How often an offer's services are used per week by the residents who
use them: use-class events per service over the history window ÷ distinct users ÷ weeks; a
bundle brings all its services, so its frequency is the sum of theirs (a bundle-level use
event without a service counts for each of its services in equal shares). A service with no
use in the window gets the median of those with some (or :data:`DEFAULT_FREQUENCY`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Default rates before any outcome is seen (a push campaign opens at roughly this rate).
PRIOR_OPEN = 0.2
PRIOR_CONVERT = 0.1
#: Uses per week assumed for a service nobody used in the window when no service has data.
DEFAULT_FREQUENCY = 0.5


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


def service_frequency(resident: np.ndarray, service: np.ndarray, weight: np.ndarray,
                      n_services: int, weeks: float) -> np.ndarray:
    """Uses per week per user of each service (see the module docstring). ``resident`` are
    64-bit hashes of the ids, ``service`` catalog indices (< 65,536, as packed lists allow),
    ``weight`` the share of a use event each row carries (1, or 1/k for a bundle event
    spread over k services)."""
    service = np.asarray(service, dtype=np.int64)
    uses = np.bincount(service, weights=weight, minlength=n_services)
    users = np.zeros(n_services)
    if len(service):
        # one key per (resident, service): the resident's hash with its low 16 bits
        # replaced by the service (a collision needs two 48-bit hashes equal)
        keys = (np.asarray(resident).astype(np.uint64) & ~np.uint64(0xFFFF)) \
            | service.astype(np.uint64)
        distinct = pd.unique(keys)
        users = np.bincount((distinct & np.uint64(0xFFFF)).astype(np.int64),
                            minlength=n_services).astype(float)
    rate = np.divide(uses, users * max(weeks, 1e-9), out=np.full(n_services, np.nan),
                     where=users > 0)
    known = rate[~np.isnan(rate)]
    fill = float(np.median(known)) if len(known) else DEFAULT_FREQUENCY
    return np.where(np.isnan(rate), fill, rate)


def offer_frequency(service_rate: np.ndarray, bundle_members: list[list[int]]) -> np.ndarray:
    """Frequency of every offer in the planner's offer space: bundles (the sum over their
    services) first, then services."""
    bundles = np.array([float(service_rate[m].sum()) if m else 0.0 for m in bundle_members])
    return np.concatenate([bundles, service_rate])
