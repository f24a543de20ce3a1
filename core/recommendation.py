"""Recommendation ids: how a later event is attributed to the answer that caused it.

A recommendation id is ``<model_version>.<variant>.<token>``: the front end echoes it in
the events that follow (click, subscribe, use), and the consumer can credit the funnel of
that model version and experiment variant without looking anything up.
"""

from __future__ import annotations

import os
import random
import re
import secrets
from typing import NamedTuple

_PART = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

#: Tokens only make ids distinct: attribution is by model version and variant, and the
#: token is no secret (events are authenticated by API key, not by the id they echo). So a
#: PRNG seeded from the OS, reseeded in forked children, instead of a urandom system call
#: per answer (~2.5 % of a recommendation's CPU under load).
_tokens = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _tokens.seed(secrets.randbits(128)))


class Attribution(NamedTuple):
    model_version: str
    variant: str
    token: str


def make_recommendation_id(model_version: str, variant: str) -> str:
    """A fresh id for one answer of the recommendation API."""
    for name, part in (("model_version", model_version), ("variant", variant)):
        if not _PART.match(part):
            raise ValueError(f"{name} {part!r} must match {_PART.pattern}")
    return f"{model_version}.{variant}.{_tokens.getrandbits(48):012x}"


def parse_recommendation_id(recommendation_id: str | None) -> Attribution | None:
    """The model version and variant an id names, or None for ids not made by Bouquet."""
    if not recommendation_id:
        return None
    parts = recommendation_id.split(".")
    if len(parts) != 3 or not all(_PART.match(p) for p in parts):
        return None
    return Attribution(*parts)
