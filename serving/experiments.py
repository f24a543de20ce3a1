"""Online experiments: which variant a resident is in, stably, with configurable shares.

Configuration (``BOUQUET_EXPERIMENTS``, JSON)::

    {"salt": "bundles-2026-11",
     "variants": [{"name": "champion", "share": 0.8},
                  {"name": "challenger", "share": 0.1},
                  {"name": "popular", "share": 0.1}]}

* ``champion`` reads the keyspace the ``current`` pointer names (what ``bouquet publish``
  switches); ``popular`` answers with the neighbourhood's popular bundles (the
  non-personalised baseline); any other name reads the keyspace of the pointer of that name,
  written by ``bouquet publish --pointer NAME`` (a challenger model version).
* Assignment is a keyed hash of the resident id and the salt, so a resident stays in one
  variant across requests and processes, and changing the salt reshuffles everyone.
* The variant is in every answer and in its ``recommendation_id``, so the funnel is
  attributed per variant without a look-up.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
POPULAR = "popular"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class ExperimentConfigError(ValueError):
    """A ``BOUQUET_EXPERIMENTS`` value that cannot be used; the message says why."""


@dataclass(frozen=True)
class Variant:
    name: str
    share: float

    @property
    def pointer(self) -> str | None:
        """Which version pointer this variant reads (None: the popular baseline)."""
        if self.name == POPULAR:
            return None
        return "current" if self.name == CHAMPION else self.name


class Experiment:
    """Stable hash assignment of residents to variants."""

    def __init__(self, variants: list[Variant], salt: str = "bouquet") -> None:
        if not variants:
            raise ExperimentConfigError("an experiment needs at least one variant")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ExperimentConfigError(f"variant names repeat: {names}")
        for v in variants:
            if not _NAME.match(v.name):
                raise ExperimentConfigError(f"variant name {v.name!r} must match "
                                            f"{_NAME.pattern}")
            if v.share < 0:
                raise ExperimentConfigError(f"variant {v.name!r} has a negative share")
        total = sum(v.share for v in variants)
        if total <= 0:
            raise ExperimentConfigError("variant shares add up to 0")
        self.variants = variants
        self.salt = salt.encode()
        # Cumulative upper bounds on [0, 2**64): resident hash < bound[i] → variant i.
        bounds, acc = [], 0.0
        for v in variants:
            acc += v.share / total
            bounds.append(min(int(acc * 2**64), 2**64))
        bounds[-1] = 2**64
        self._bounds = bounds

    @classmethod
    def from_settings(cls, config: dict[str, Any] | None) -> Experiment:
        """The configured experiment, or everyone on the champion when none is set."""
        if not config:
            return cls([Variant(CHAMPION, 1.0)])
        raw = config.get("variants")
        if not isinstance(raw, list):
            raise ExperimentConfigError('BOUQUET_EXPERIMENTS needs "variants": [{"name": ..., '
                                        '"share": ...}, ...]')
        try:
            variants = [Variant(str(v["name"]), float(v["share"])) for v in raw]
        except (KeyError, TypeError, ValueError) as exc:
            raise ExperimentConfigError(f"bad variant in BOUQUET_EXPERIMENTS: {exc}") from None
        return cls(variants, str(config.get("salt", "bouquet")))

    @property
    def pointers(self) -> set[str]:
        """Version pointers some variant reads (always includes ``current``)."""
        return {"current"} | {v.pointer for v in self.variants if v.pointer}

    def assign(self, resident_id: str) -> Variant:
        if len(self.variants) == 1:
            return self.variants[0]
        digest = hashlib.blake2b(resident_id.encode(), digest_size=8, key=self.salt[:64])
        point = int.from_bytes(digest.digest(), "big")
        for variant, bound in zip(self.variants, self._bounds, strict=True):
            if point < bound:
                return variant
        return self.variants[-1]
