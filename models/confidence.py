"""The confidence rule: how a resident's events on an item become one confidence.

Training builds its matrices with it (vectorised over millions of events) and serving folds
a resident's last few events in with it (a handful of events, per request). Both stages call
the methods of one :class:`ConfidenceRule`, and a trained model carries the rule it was
trained with, so a model is always folded in the way its confidences were built::

    strength   = Σ over the pair's events of weight[type] · 0.5 ** (age_days / half_life_days)
    confidence = 1 + log_alpha · log1p(strength)          (pairs with strength > 0 only)

An *impression* — a ``view`` carrying a recommendation id: Bouquet showed the offer —
weighs ``impression_weight`` (when the rule sets one) instead of the ``view`` weight: what
Bouquet chose to show says nothing of the resident's taste, and a model that learnt from
its own impressions would find what it showed last week liked this week. What the resident
did about it (``click``, ``subscribe``…) carries the signal, so with a weight of 0 an
ignored impression adds nothing. A ``view`` the resident found by themselves (no
recommendation id) keeps the ``view`` weight.

An event naming a service counts for that service; an event naming a bundle counts for the
bundle and, when it names no service and ``spread_bundle_events`` is on, for each of the
bundle's services with an equal share of its strength (so does an event whose service the
model does not know). The services of a bundle are the *model's* composition (the catalog
as it was at training), never today's catalog.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from bouquet.core.events import ADMIN_TYPES

SECONDS_PER_DAY = 86_400.0


def decay_factor(age_days: np.ndarray | float, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age / half_life)``: an event loses half its weight every half-life.

    Ages below zero (an event after the reference time, e.g. clock skew) count as fresh.
    ``half_life_days`` of ``None`` or ``0`` disables decay.
    """
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    if not half_life_days:
        return np.ones_like(age)
    return np.exp2(-age / float(half_life_days))


class RecentEventLike(Protocol):
    """What the rule reads of an event: its type, its item and its time (epoch seconds)."""

    type: str
    service_id: str | None
    bundle_id: str | None
    ts: float | None
    # optional: ``recommendation_id`` (an impression when the type is ``view``), read with
    # getattr so events without the attribute count as the resident's own


def is_impression(event: RecentEventLike) -> bool:
    """A ``view`` of something Bouquet recommended (it carries a recommendation id)."""
    return event.type == "view" and bool(getattr(event, "recommendation_id", None))


@dataclass(frozen=True)
class ConfidenceRule:
    """Event weights, decay and log scaling: the one definition of a confidence.

    Parameters
    ----------
    event_weights : mapping
        Weight per event type (configuration, ``BOUQUET_EVENT_WEIGHTS``); types not listed
        and administrative types weigh 0.
    half_life_days : float or None
        Decay half-life; None or 0 disables decay.
    log_alpha : float
        Log-scaling factor of Hu, Koren & Volinsky: repeated events add diminishing returns,
        so a daily bus rider does not drown every other signal.
    spread_bundle_events : bool
        A bundle-level event (no service) also counts for the bundle's services, each
        receiving an equal share of its strength.
    impression_weight : float or None
        Weight of an impression (a ``view`` with a recommendation id); None: the ``view``
        weight, as for any view (the rule of models trained before impressions were told
        apart, so they fold in as they were trained).
    """

    event_weights: Mapping[str, float] = field(default_factory=dict)
    half_life_days: float | None = 120.0
    log_alpha: float = 2.0
    spread_bundle_events: bool = True
    impression_weight: float | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ConfidenceRule:
        """The rule recorded in a model (``to_dict``'s output; unknown keys ignored)."""
        return cls(event_weights=dict(values.get("event_weights", {})),
                   half_life_days=values.get("half_life_days"),
                   log_alpha=float(values.get("log_alpha", 2.0)),
                   spread_bundle_events=bool(values.get("spread_bundle_events", True)),
                   impression_weight=_optional_float(values.get("impression_weight")))

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_weights": {k: float(v) for k, v in sorted(self.event_weights.items())},
            "half_life_days": None if not self.half_life_days else float(self.half_life_days),
            "log_alpha": float(self.log_alpha),
            "spread_bundle_events": bool(self.spread_bundle_events),
            "impression_weight": _optional_float(self.impression_weight),
        }

    # --- the pieces --------------------------------------------------------------------------
    def weight(self, event_type: str) -> float:
        """The type's weight; administrative events (erasure, consent, declared attributes)
        never weigh, whatever the configuration."""
        if event_type in ADMIN_TYPES:
            return 0.0
        return float(self.event_weights.get(event_type, 0.0))

    def weight_vector(self, types: Sequence[str]) -> np.ndarray:
        """Weight per type code (index into ``types``), for vectorised training."""
        return np.array([self.weight(t) for t in types], dtype=np.float64)

    def event_weight(self, event: RecentEventLike) -> float:
        """The weight of one event: its type's, or ``impression_weight`` for an impression."""
        if self.impression_weight is not None and is_impression(event):
            return float(self.impression_weight)
        return self.weight(event.type)

    def impression_vector(self, types: Sequence[str]) -> np.ndarray:
        """Per type code, the weight of an event of that type *carrying a recommendation
        id* (vectorised training: the ``view`` entry is the impression weight)."""
        out = self.weight_vector(types)
        if self.impression_weight is not None and "view" in types:
            out[list(types).index("view")] = float(self.impression_weight)
        return out

    def decay(self, age_days: np.ndarray | float) -> np.ndarray:
        return decay_factor(age_days, self.half_life_days)

    def confidence(self, strength: np.ndarray | float) -> np.ndarray:
        """``1 + log_alpha · log1p(strength)``; every observed pair is at least 1, which is
        how implicit's ALS reads a stored value (against an unobserved baseline of 1)."""
        return 1.0 + float(self.log_alpha) * np.log1p(np.asarray(strength, dtype=np.float64))

    def spread_matrix(self, bundle_services: Mapping[str, Sequence[str]],
                      bundle_ids: Sequence[str], service_ids: Sequence[str]) -> sp.csr_matrix:
        """Bundles × services: ``1/m`` for each of a bundle's ``m`` services known to the
        model (zeros when spreading is off): a bundle-only strength row times this matrix is
        its services' share."""
        index = {s: i for i, s in enumerate(service_ids)}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        if self.spread_bundle_events:
            for b, bundle in enumerate(bundle_ids):
                members = [index[s] for s in bundle_services.get(bundle, ()) if s in index]
                rows += [b] * len(members)
                cols += members
                vals += [1.0 / len(members)] * len(members)
        return sp.csr_matrix((np.array(vals, dtype=np.float64), (rows, cols)),
                             shape=(len(bundle_ids), len(service_ids)))

    # --- a handful of events (serving) ---------------------------------------------------
    def weight_at(self, event: RecentEventLike, now: float) -> float:
        """The weight of one event at epoch ``now``: its type's weight, decayed by its age
        (an event without a time is not decayed). Plain floats: a request weighs a handful
        of events, where numpy's per-call cost is most of the work."""
        weight = self.event_weight(event)
        if weight > 0 and self.half_life_days and event.ts is not None:
            weight *= 0.5 ** (max(now - event.ts, 0.0) / SECONDS_PER_DAY / self.half_life_days)
        return weight

    def strengths(self, events: Iterable[RecentEventLike], now: float,
                  service_index: Mapping[str, int], bundle_index: Mapping[str, int],
                  bundle_members: Sequence[Sequence[int]]) -> Strengths:
        """Strengths of ``events`` at epoch ``now`` per service and per bundle index.

        ``bundle_members[b]`` are the service indices of bundle ``b`` in the model (the
        model's composition). The same rule as training's vectorised build: an event counts
        for its service and for its bundle; a bundle-only event is also shared over the
        bundle's services. A test checks both stages give the same confidences.
        """
        services: dict[int, float] = {}
        bundles: dict[int, float] = {}
        for event in events:
            weight = self.weight_at(event, now)
            if weight <= 0:
                continue
            b = bundle_index.get(event.bundle_id) if event.bundle_id is not None else None
            if b is not None:
                bundles[b] = bundles.get(b, 0.0) + weight
            s = service_index.get(event.service_id) if event.service_id is not None else None
            if s is not None:
                services[s] = services.get(s, 0.0) + weight
            elif b is not None and self.spread_bundle_events and bundle_members[b]:
                share = weight / len(bundle_members[b])
                for s in bundle_members[b]:
                    services[s] = services.get(s, 0.0) + share
        return Strengths(services, bundles)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Strengths:
    """A resident's recent strengths by model index: ``{service: s}`` and ``{bundle: s}``."""

    services: dict[int, float]
    bundles: dict[int, float]

    def __bool__(self) -> bool:
        return bool(self.services or self.bundles)
