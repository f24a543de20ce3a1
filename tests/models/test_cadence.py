"""Ranking by expected cadence gain (models/cadence.py): the use rate counted at training,
the weights, and serving's order of personalised and popular bundles with them."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.models.cadence import FLOOR, cadence_weights, use_rate, weigh
from bouquet.models.online import unpack_list
from bouquet.pipelines.publish import publish_in_memory
from bouquet.serving.ranking import OfferRanker
from bouquet.serving.store import ResidentState
from tests.serving.support import small_model

CATALOG = load_catalog()
NOW = time.time()
PROFILE = {"consent": True, "neighbourhood": "gare", "age_band": "26-40",
           "household": "family", "student": False, "low_income": False}


def test_use_rate_is_uses_per_holder_per_week_and_the_median_where_unknown() -> None:
    rate = use_rate(np.array([20.0, 2.0, 0.0, 5.0]), np.array([2.0, 1.0, 4.0, 0.0]), 2.0)
    assert rate[:3].tolist() == [5.0, 1.0, 0.0]
    assert rate[3] == 1.0  # nobody holds it: the median of the known rates
    assert use_rate(np.ones(2), np.ones(2), 0.0).tolist() == [0.0, 0.0]  # no week seen


def test_weights_are_relative_to_the_most_used_bundle_and_power_zero_is_score_alone() -> None:
    rate = np.array([4.0, 1.0, 0.0])
    assert cadence_weights(rate, 1.0).tolist() == [1.0, 0.25, FLOOR]
    assert cadence_weights(rate, 0.5).tolist() == pytest.approx([1.0, 0.5, FLOOR ** 0.5])
    assert cadence_weights(rate, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert cadence_weights(np.zeros(3), 1.0).tolist() == [1.0, 1.0, 1.0]


def test_weighing_orders_by_expected_gain_whatever_the_scores_sign() -> None:
    out = weigh([0.5, 0.4, -0.2, -0.2], [0.1, 1.0, 0.5, 1.0])
    assert out.tolist() == pytest.approx([0.05, 0.4, -0.4, -0.2])
    assert np.argsort(-out, kind="stable").tolist() == [1, 0, 3, 2]


def test_dataset_counts_uses_per_holder_and_per_user_per_week() -> None:
    from bouquet.core.settings import Settings
    from bouquet.pipelines.dataset import EventArrays, build_dataset, rule_from_settings

    frame = _two_weeks_of_use()
    data = build_dataset(EventArrays.from_frame(frame, CATALOG), rule_from_settings(Settings()))
    rate = data.bundle_use_rate
    assert rate[0] == pytest.approx(3.0) and rate[1] == pytest.approx(0.5)
    assert data.service_use_rate[0] == pytest.approx(6 / 2 / 2)  # uses / users / weeks


def _two_weeks_of_use():
    """Two residents holding a bundle each, using them and a service for two weeks: the
    first bundle 3 uses per holder per week, the second 0.5, the service 1.5 per user."""
    import pandas as pd

    start = pd.Timestamp("2025-03-03", tz="UTC")
    maas, civic = CATALOG.bundle_ids[0], CATALOG.bundle_ids[1]
    rows = [("r1", "consent", None, None, start, 1.0), ("r2", "consent", None, None, start, 1.0)]
    rows += [("r1", "subscribe", None, maas, start, None),
             ("r2", "subscribe", None, civic, start, None)]
    rows += [("r1", "use", None, maas, start + pd.Timedelta(days=d), None) for d in range(6)]
    rows += [("r2", "use", None, civic, start + pd.Timedelta(days=14), None)]
    bike = CATALOG.service_ids[0]
    rows += [(rid, "use", bike, None, start + pd.Timedelta(days=d), None)
             for rid, days in (("r1", range(1, 5)), ("r2", (3, 9))) for d in days]
    return pd.DataFrame(rows, columns=["resident_id", "type", "service_id", "bundle_id",
                                       "ts", "value"]).assign(context=None)


def test_the_simulated_popularity_baseline_counts_uses_by_the_training_rule() -> None:
    """What the loop's popular policy publishes for the planner is what training measures
    on the same events (everyone consents here)."""
    import pyarrow as pa

    from bouquet.core.settings import Settings
    from bouquet.pipelines.dataset import EventArrays, build_dataset, rule_from_settings
    from bouquet.simulation.policies import CityView, PopularPolicy

    frame = _two_weeks_of_use()
    data = build_dataset(EventArrays.from_frame(frame, CATALOG), rule_from_settings(Settings()))
    policy = PopularPolicy()
    policy.start(CityView(CATALOG, pa.table({"resident_id": ["r1", "r2"]}), None))
    events = pa.Table.from_pandas(frame.assign(ts=frame["ts"].astype("datetime64[us, UTC]")),
                                  preserve_index=False)
    policy.observe(events)
    rates = policy.use_rates()
    np.testing.assert_allclose(rates["b"], data.bundle_use_rate)
    np.testing.assert_allclose(rates["s"], data.service_use_rate)


def version_with_rates(rates: dict[str, float]):
    model = small_model(CATALOG)
    rate = np.array([rates.get(b, 0.0) for b in model.bundle_ids])
    return publish_in_memory(replace(model, bundle_use_rate=rate), model_version="v1",
                             top=50)


def top(ranker: OfferRanker, version, lists, rid: str, personalise: bool) -> list[str]:
    """The ids of the answer's first source: the resident's list, or the popular list."""
    state = ResidentState(precomputed=lists.get(rid, unpack_list(None)) if personalise
                          else unpack_list(None), profile=dict(PROFILE))
    ranked = ranker.rank("b", state, version, k=3, personalise=personalise, rerank=False,
                         now=NOW)
    source = ranked.items[0].source
    return [p.item_id for p in ranked.items if p.source == source]


@pytest.mark.parametrize("personalise", [True, False])
def test_serving_puts_a_much_used_bundle_first_and_power_zero_keeps_the_score_order(
        personalise: bool) -> None:
    version, lists = version_with_rates({})
    rid = max(lists, key=lambda r: len(lists[r]))
    plain = top(OfferRanker(CATALOG), version, lists, rid, personalise)
    assert len(plain) == 3
    # the second of the plain answer (a positive score) is the one bundle residents use
    version, lists = version_with_rates({plain[1]: 5.0})
    assert top(OfferRanker(CATALOG, cadence_power=0.0), version, lists, rid,
               personalise) == plain
    weighed = top(OfferRanker(CATALOG, cadence_power=1.0), version, lists, rid, personalise)
    assert weighed[0] == plain[1]


def test_the_use_rate_travels_with_the_serving_view() -> None:
    from bouquet.models.deployable import from_blob

    rate = np.arange(len(CATALOG.bundle_ids), dtype=np.float64)
    services = np.arange(len(CATALOG.service_ids), dtype=np.float64) / 2
    model = replace(small_model(CATALOG), bundle_use_rate=rate, service_use_rate=services)
    view = from_blob(model.serving_view().to_blob())
    np.testing.assert_array_equal(view.bundle_use_rate, rate)
    np.testing.assert_array_equal(view.service_use_rate, services)
