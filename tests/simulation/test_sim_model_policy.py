"""The trained-model policy: the closed loop recommends with Bouquet's own model."""

from __future__ import annotations

import json

import pyarrow.compute as pc

from bouquet.core.catalog import Catalog, available_in, eligibility_failure
from bouquet.simulation.closed_loop import make_policy, run_policy
from bouquet.simulation.model_policy import ModelPolicy
from bouquet.simulation.sinks import MemorySink


def test_model_policy_retrains_weekly_and_respects_serving_rules(catalog: Catalog,
                                                                  end_date) -> None:
    policy = make_policy("model")
    assert isinstance(policy, ModelPolicy)
    sink = MemorySink()
    run, _ = run_policy(policy, catalog, residents=1500, weeks=4, seed=3, end=end_date,
                        sink=sink)
    assert policy.fits == 4  # one fit per week, on what it observed up to then
    assert run.shown > 0
    table = sink.table()
    profiles = table.filter(pc.equal(table["type"], "profile"))
    profile = {r: json.loads(c) for r, c in zip(profiles["resident_id"].to_pylist(),
                                                  profiles["context"].to_pylist(), strict=True)}
    shown = table.filter(pc.and_(pc.equal(table["type"], "view"),
                                 pc.is_valid(table["recommendation_id"]))).to_pylist()
    assert len(shown) == run.shown
    for event in shown:
        bundle = catalog.bundle_by_id[event["bundle_id"]]
        assert available_in(bundle.zones, profile[event["resident_id"]]["neighbourhood"])
        assert eligibility_failure(bundle.eligibility, profile[event["resident_id"]]) is None
        assert event["recommendation_id"].split(".")[1] == "model"


def test_model_policy_personalises_for_residents_with_history(catalog: Catalog,
                                                              end_date) -> None:
    """Residents with different histories get different lists from the model; the popular
    policy varies only through the filters (zone, eligibility, holdings)."""
    model, popular = ModelPolicy(), make_policy("popular")
    for policy in (model, popular):
        run_policy(policy, catalog, residents=1500, weeks=2, seed=5, end=end_date)
    known = list(model._model_rows)[:300]
    by_model = {tuple(r) for r in model.recommend(known, 3)}
    by_popularity = {tuple(r) for r in popular.recommend(known, 3)}
    assert len(by_model) > 1.5 * len(by_popularity), (len(by_model), len(by_popularity))
