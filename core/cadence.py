"""The three cadences: what a contact with a resident means, by event type.

Bouquet's purpose is to make residents *use* city services more often, so every headline
cadence counts only what the resident does with a service. What the resident does in
answer to something shown, and what was shown or sent, are counted beside it, never mixed
in, because showing more would otherwise raise "cadence" by construction:

* **use** — ``use``, ``pay``, ``subscribe``, ``rate``: the resident acts with a service;
* **response** — ``click``, ``dismiss``, ``unsubscribe``, ``open``: the resident reacts to
  what Bouquet or a service showed or sent;
* **exposure** — ``view``, ``notify``: Bouquet showed or sent something.

``open`` and ``notify`` are the outcomes of outreach messages (:mod:`bouquet.outreach`),
reported by the messaging gateway: a nudge delivered is exposure, a nudge opened (or
dismissed) is a response, and neither is ever use. The administrative types (``erase``,
``consent``, ``profile``) belong to no class.

The weekly class is defined once here as well: a resident is *weekly or better* when they
were active in at least :data:`WEEKLY_MIN_WEEKS` of the last :data:`WINDOW_WEEKS` weeks
(daily residents, active on :data:`DAILY_MIN_DAYS` of the 28 days, are always weekly too).
"""

from __future__ import annotations

import numpy as np

USE_TYPES: frozenset[str] = frozenset({"use", "pay", "subscribe", "rate"})
RESPONSE_TYPES: frozenset[str] = frozenset({"click", "dismiss", "unsubscribe", "open"})
EXPOSURE_TYPES: frozenset[str] = frozenset({"view", "notify"})
#: Outreach outcomes that exist for outreach alone (``dismiss`` is shared with the apps).
OUTREACH_TYPES: frozenset[str] = frozenset({"open", "notify"})

CADENCE_CLASSES: dict[str, frozenset[str]] = {
    "use": USE_TYPES,
    "response": RESPONSE_TYPES,
    "exposure": EXPOSURE_TYPES,
}

#: The default cadence thresholds (the operators' report uses the same by default).
WINDOW_WEEKS = 4
DAILY_MIN_DAYS = 20
WEEKLY_MIN_WEEKS = 3


def cadence_class(event_type: str) -> str | None:
    """``"use"``, ``"response"`` or ``"exposure"`` for an event type; None for the
    administrative types and unknown names."""
    for name, types in CADENCE_CLASSES.items():
        if event_type in types:
            return name
    return None


def weekly_or_better(active_weeks: np.ndarray) -> np.ndarray:
    """Per row of a (people, weeks) activity grid (bool, or distinct active days per
    week), whether the person was active in at least :data:`WEEKLY_MIN_WEEKS` of the last
    :data:`WINDOW_WEEKS` weeks (of all its weeks when the grid has fewer)."""
    grid = np.asarray(active_weeks)
    if grid.ndim != 2:
        raise ValueError("expected a (people, weeks) grid")
    recent = grid[:, -WINDOW_WEEKS:] > 0
    return recent.sum(1) >= WEEKLY_MIN_WEEKS
