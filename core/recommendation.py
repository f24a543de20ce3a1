"""Recommendation ids: how a later event is attributed to the answer that caused it.

A recommendation id is ``<model_version>.<variant>.<token>``: the front end echoes it in
the events that follow (click, subscribe, use), and the consumer can credit the funnel of
that model version and experiment variant without looking anything up.
"""

from __future__ import annotations

import re
import secrets
from typing import NamedTuple

_PART = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class Attribution(NamedTuple):
    model_version: str
    variant: str
    token: str


def make_recommendation_id(model_version: str, variant: str) -> str:
    """A fresh id for one answer of the recommendation API."""
    for name, part in (("model_version", model_version), ("variant", variant)):
        if not _PART.match(part):
            raise ValueError(f"{name} {part!r} must match {_PART.pattern}")
    return f"{model_version}.{variant}.{secrets.token_hex(6)}"


def parse_recommendation_id(recommendation_id: str | None) -> Attribution | None:
    """The model version and variant an id names, or None for ids not made by Bouquet."""
    if not recommendation_id:
        return None
    parts = recommendation_id.split(".")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        return None
    return Attribution(*parts)
