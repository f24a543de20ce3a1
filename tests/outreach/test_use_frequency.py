"""The planner weighs an offer by the rates serving ranks it by: how often each offer is used
by those who have it, measured once at training and published with the version."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.models.cadence import FLOOR, cadence_weights
from bouquet.outreach.candidates import PublishedLists
from bouquet.outreach.store import OutreachStore
from tests.serving.support import publish, redis_client, small_model

CATALOG = load_catalog()
B, S = list(CATALOG.bundle_ids), list(CATALOG.service_ids)


def lists(bundle_ids: list[str], bundle_rate: list[float] | None) -> PublishedLists:
    found = PublishedLists("v1-test", "v1", bundle_ids, S, ["cf"])
    if bundle_rate is not None:
        found.use_rate = {"b": np.array(bundle_rate), "s": np.full(len(S), 2.0)}
    return found


def test_offers_are_weighed_by_the_published_rates_in_catalog_order() -> None:
    # the version knows three bundles, in its own order; one of them unused
    frequency = lists([B[2], B[0], B[1]], [4.0, 1.0, 0.0]).use_frequency(CATALOG)
    assert len(frequency) == len(B) + len(S)
    assert frequency[:3].tolist() == [1.0, FLOOR * 4.0, 4.0]  # unused: pushed down, not out
    # a bundle the version does not know: the median of the known rates (2.0, services')
    assert frequency[3:len(B)].tolist() == [2.0] * (len(B) - 3)
    assert frequency[len(B):].tolist() == [2.0] * len(S)
    # a version published before rates were recorded weighs every offer alike
    assert lists(B, None).use_frequency(CATALOG).tolist() == [1.0] * (len(B) + len(S))


def test_the_planner_reads_the_rates_serving_ranks_by(settings) -> None:
    rng = np.random.default_rng(3)
    model = replace(small_model(CATALOG), bundle_use_rate=rng.uniform(0.1, 5, len(B)),
                    service_use_rate=rng.uniform(0.1, 5, len(S)))
    publish(settings, model)
    client = redis_client(settings)
    try:
        found = OutreachStore(client, Keys(settings.redis_key_prefix)).published(
            CATALOG.neighbourhood_ids)
    finally:
        client.close()
    assert found is not None
    frequency = found.use_frequency(CATALOG)
    order = [model.bundle_ids.index(b) for b in B]
    np.testing.assert_allclose(frequency[:len(B)], model.bundle_use_rate[order])
    np.testing.assert_allclose(frequency[len(B):],
                               model.service_use_rate[[model.service_ids.index(s) for s in S]])
    # serving's cadence weight of a bundle is its planner frequency over the largest
    np.testing.assert_allclose(cadence_weights(model.bundle_use_rate, 1.0)[order],
                               frequency[:len(B)] / frequency[:len(B)].max())
