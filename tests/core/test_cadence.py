"""The three cadence classes and the weekly rule, defined once in core."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.core.cadence import (
    CADENCE_CLASSES,
    EXPOSURE_TYPES,
    OUTREACH_TYPES,
    RESPONSE_TYPES,
    USE_TYPES,
    cadence_class,
    weekly_or_better,
)
from bouquet.core.events import ADMIN_TYPES, CONTACT_TYPES, EventType


def test_every_accepted_type_is_in_exactly_one_class_or_administrative() -> None:
    classes = [USE_TYPES, RESPONSE_TYPES, EXPOSURE_TYPES]
    assert sum(len(c) for c in classes) == len(set().union(*classes))  # disjoint
    for kind in EventType:
        if kind.value in ADMIN_TYPES:
            assert cadence_class(kind.value) is None
        else:
            assert sum(kind.value in c for c in classes) == 1, kind
    assert {"use", "pay", "subscribe", "rate"} == USE_TYPES
    assert {"click", "dismiss", "unsubscribe", "open"} == RESPONSE_TYPES
    assert {"view", "notify"} == EXPOSURE_TYPES
    assert set(CADENCE_CLASSES) == {"use", "response", "exposure"}


def test_contact_types_are_the_accepted_members_of_the_classes() -> None:
    accepted = {k.value for k in EventType}
    assert (USE_TYPES | RESPONSE_TYPES | EXPOSURE_TYPES) & accepted == CONTACT_TYPES
    # outreach outcomes are contacts of their class, accepted like any other
    assert {"open", "notify"} == OUTREACH_TYPES
    assert OUTREACH_TYPES <= CONTACT_TYPES
    assert cadence_class("open") == "response" and cadence_class("notify") == "exposure"
    assert cadence_class("view") == "exposure" and cadence_class("use") == "use"
    assert cadence_class("nonsense") is None


def test_weekly_or_better_counts_the_last_four_weeks() -> None:
    grid = np.array([
        [0, 0, 1, 1, 1, 1],  # 4 of the last 4
        [1, 1, 1, 0, 1, 1],  # 3 of the last 4
        [1, 1, 1, 0, 0, 1],  # 2 of the last 4: older weeks do not count
        [0, 0, 7, 7, 0, 0],  # many days, 2 weeks
        [0, 0, 2, 1, 0, 3],  # active-day counts work like booleans
    ])
    assert weekly_or_better(grid).tolist() == [True, True, False, False, True]
    assert weekly_or_better(np.array([[1, 1, 1], [1, 0, 1]])).tolist() == [True, False]
    with pytest.raises(ValueError):
        weekly_or_better(np.array([1, 1, 1]))
