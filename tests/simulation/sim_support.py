"""Checks shared by the closed-loop tests of several policies."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.catalog import Catalog, available_in, eligibility_failure


def shown_within_serving_rules(table: pa.Table, shown_count: int,
                               catalog: Catalog) -> list[dict[str, Any]]:
    """The ``view`` events of a run's recommendations, after checking there is one per
    recommendation shown (``shown_count``) and that each bundle was available where the
    resident lives and the resident was eligible for it (serving's rules)."""
    profiles = table.filter(pc.equal(table["type"], "profile"))
    profile = {r: json.loads(c) for r, c in zip(profiles["resident_id"].to_pylist(),
                                                  profiles["context"].to_pylist(), strict=True)}
    shown = table.filter(pc.and_(pc.equal(table["type"], "view"),
                                 pc.is_valid(table["recommendation_id"]))).to_pylist()
    assert len(shown) == shown_count
    for event in shown:
        bundle = catalog.bundle_by_id[event["bundle_id"]]
        p = profile[event["resident_id"]]
        assert available_in(bundle.zones, p["neighbourhood"])
        assert eligibility_failure(bundle.eligibility, p) is None
    return shown
