"""The model policy is the product: train, publish and serve in the closed loop."""

from __future__ import annotations

from bouquet.core.catalog import Catalog
from bouquet.core.recommendation import development_ids
from bouquet.core.settings import Settings
from bouquet.simulation.closed_loop import make_policy, run_policy
from bouquet.simulation.model_policy import ModelPolicy
from bouquet.simulation.sinks import MemorySink
from tests.simulation.sim_support import shown_within_serving_rules

#: A small city's hold-out has a few dozen residents: enough to rank, not to promote by the
#: production rule (200), so these tests force the chosen family through (`train --force`).
SMALL = Settings(env="test", train_min_eval_residents=10, train_bootstrap_samples=200,
                 serving_explore_share=1 / 3)


def test_model_policy_trains_publishes_and_serves_on_schedule(catalog: Catalog,
                                                              end_date) -> None:
    policy = ModelPolicy(SMALL, retrain_every_weeks=2, force=True)
    sink = MemorySink()
    run, _ = run_policy(policy, catalog, residents=1500, weeks=4, seed=3, end=end_date,
                        sink=sink)
    assert policy.fits == 2  # weeks 1 and 3: every two weeks, on what it observed by then
    assert len(policy.selections) == 1 and policy.family == policy.selections[0]["chosen"]
    assert policy.version is not None and policy.version.personalised
    assert policy.version.model_version == "v2" and run.shown > 0
    variants = set()
    for event in shown_within_serving_rules(sink.table(), run.shown, catalog):
        found = development_ids().verify(event["recommendation_id"])
        assert found is not None and found.model_version in ("v1", "v2")
        variants.add(found.variant)
    # one slot in three is explored, and the funnel sees it as its own arm
    assert variants == {"model", "model-explore"}


def test_the_model_personalises_where_popularity_cannot(catalog: Catalog, end_date) -> None:
    """Residents with different histories get different lists from the model; the popular
    policy varies only through the filters (zone, eligibility, holdings)."""
    model = ModelPolicy(Settings(env="test", train_min_eval_residents=10,
                                 serving_explore_share=0.0), force=True)
    popular = make_policy("popular")
    for policy in (model, popular):
        run_policy(policy, catalog, residents=1500, weeks=2, seed=5, end=end_date)
    known = list(model.lists)[:300]
    by_model = {tuple(r) for r in model.recommend(known, 3)}
    by_popularity = {tuple(r) for r in popular.recommend(known, 3)}
    assert len(by_model) > 1.5 * len(by_popularity), (len(by_model), len(by_popularity))


def test_without_a_promoted_model_the_product_serves_popular_lists(catalog: Catalog,
                                                                  end_date) -> None:
    """The production promotion rule on a small city: too few hold-out residents, so no
    champion — every answer is the popular list, as `bouquet publish` serves then."""
    policy = ModelPolicy(Settings(env="test"))
    run_policy(policy, catalog, residents=800, weeks=1, seed=4, end=end_date)
    assert policy.family is None and not policy.selections[0]["promote"]
    assert "fewer than the 200 required" in policy.selections[0]["reason"]
    answers = policy.last_answers
    assert answers and all(not a.ranked.personalised and a.ranked.explored == 0
                           for a in answers)
