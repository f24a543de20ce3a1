"""The trained-model policy: the closed loop recommends with Bouquet's own model."""

from __future__ import annotations

from bouquet.core.catalog import Catalog
from bouquet.simulation.closed_loop import make_policy, run_policy
from bouquet.simulation.model_policy import ModelPolicy
from bouquet.simulation.sinks import MemorySink
from tests.simulation.sim_support import shown_within_serving_rules


def test_model_policy_retrains_weekly_and_respects_serving_rules(catalog: Catalog,
                                                                  end_date) -> None:
    policy = make_policy("model")
    assert isinstance(policy, ModelPolicy)
    sink = MemorySink()
    run, _ = run_policy(policy, catalog, residents=1500, weeks=4, seed=3, end=end_date,
                        sink=sink)
    assert policy.fits == 4  # one fit per week, on what it observed up to then
    assert run.shown > 0
    for event in shown_within_serving_rules(sink.table(), run.shown, catalog):
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
