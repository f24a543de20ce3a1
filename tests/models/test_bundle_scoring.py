"""Bundle scoring on a small synthetic city: residents, services, bundles of services."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bouquet.models import (
    BundleScorer,
    CrossViewEASE,
    EASERecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    load_model,
)
from bouquet.models.bundles import _standardise

SERVICES = [
    "metro pass",
    "bus pass",
    "bike share",
    "e-scooter",
    "car share",  # mobility 0-4
    "museum card",
    "theatre",
    "library",
    "concerts",
    "cinema",  # culture 5-9
    "green power",
    "heat pump",
    "solar share",
    "smart meter",
    "ev charging",  # energy 10-14
]
BUNDLES = {  # bundle id -> services
    0: [0, 1],  # public transport
    1: [2, 3],  # micro-mobility
    2: [0, 2, 4],  # multimodal
    3: [5, 6],  # culture classic
    4: [7, 8, 9],  # culture everyday
    5: [5, 9],  # museum + cinema
    6: [10, 11],  # home energy
    7: [12, 13, 14],  # prosumer
    8: [10, 14],  # green driver
}
N_RES, N_SERV, N_BUND = 240, len(SERVICES), len(BUNDLES)
DOMAIN = {0: range(0, 5), 1: range(5, 10), 2: range(10, 15)}
DOMAIN_BUNDLES = {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8]}


def city(seed: int = 0):
    """Residents 'belong' to a domain and use its services and bundles."""
    rng = np.random.default_rng(seed)
    domain = np.arange(N_RES) % 3
    ui = np.zeros((N_RES, N_SERV), np.float32)
    ub = np.zeros((N_RES, N_BUND), np.float32)
    for r in range(N_RES):
        ui[r, rng.choice(list(DOMAIN[domain[r]]), size=3, replace=False)] = 1
        ub[r, rng.choice(DOMAIN_BUNDLES[domain[r]], size=1)] = 1
    comp = np.zeros((N_BUND, N_SERV), np.float32)
    for b, members in BUNDLES.items():
        comp[b, members] = 1
    return sp.csr_matrix(ub), sp.csr_matrix(ui), sp.csr_matrix(comp), domain


UB, UI, COMP, DOMAIN_OF = city()


@pytest.fixture(scope="module")
def scorer() -> BundleScorer:
    return BundleScorer(
        bundle_model=CrossViewEASE(l2=10.0), item_model=ItemKNNRecommender(K=10), mix=0.5
    ).fit(UB, side_items=UI, composition=COMP)


def test_holdings_are_never_recommended(scorer: BundleScorer) -> None:
    users = np.arange(N_RES)
    holdings = UB.copy()
    ids, _ = scorer.recommend(users, UB, n=4, exclude=holdings, side_items=UI)
    for u in users:
        assert not set(ids[u]) & set(holdings[u].indices)


def test_recommends_bundles_of_the_residents_domain(scorer: BundleScorer) -> None:
    users = np.arange(N_RES)
    ids, _ = scorer.recommend(users, UB, n=1, exclude=UB, side_items=UI)
    in_domain = [ids[u, 0] in DOMAIN_BUNDLES[DOMAIN_OF[u]] for u in users]
    assert np.mean(in_domain) > 0.9


def test_reasons_name_services_the_resident_really_uses(scorer: BundleScorer) -> None:
    explained = 0
    for u in range(0, N_RES, 7):
        best = int(scorer.recommend(u, UB[[u]], n=1, exclude=UB[[u]], side_items=UI[[u]])[0][0])
        reason = scorer.explain_bundle(u, UB[[u]], UI[[u]], best, service_names=SERVICES)
        if reason.kind == "services":
            explained += 1
            assert reason.service_ids and set(reason.service_ids) <= set(UI[u].indices)
            for s in reason.service_ids:
                assert SERVICES[s] in reason.text
            assert reason.text.startswith("because you use ")
        else:
            assert reason.kind in ("bundles", "popular")
            assert set(reason.bundle_ids) <= set(UB[u].indices)
    assert explained > 0


def test_resident_without_history_gets_popular_reason(scorer: BundleScorer) -> None:
    empty_b = sp.csr_matrix((1, N_BUND), dtype=np.float32)
    empty_s = sp.csr_matrix((1, N_SERV), dtype=np.float32)
    reason = scorer.explain_bundle(0, empty_b, empty_s, 3)
    assert reason.kind == "popular"
    assert reason.text == "popular with residents like you"


def test_score_is_standardised_collab_plus_mix_times_aggregated_affinity() -> None:
    """The documented formula, recomputed by hand with transparent parts."""
    mix, power = 0.7, 0.5
    model = BundleScorer(
        bundle_model=EASERecommender(l2=3.0),
        item_model=EASERecommender(l2=3.0),
        mix=mix,
        aggregation_norm=power,
    ).fit(UB, side_items=UI, composition=COMP)
    users = np.arange(N_RES)
    collab = EASERecommender(l2=3.0).fit(UB).score(users, UB)
    item_scores = EASERecommender(l2=3.0).fit(UI).score(users, UI)
    comp = COMP.toarray()
    agg = comp / comp.sum(1, keepdims=True) ** power
    expected = _standardise(collab) + mix * _standardise(item_scores @ agg.T)
    np.testing.assert_allclose(model.score(users, UB, side_items=UI), expected, atol=1e-5)


def test_without_services_only_the_bundle_signal_is_used() -> None:
    model = BundleScorer(bundle_model=EASERecommender(l2=3.0), mix=0.5).fit(UB)
    assert model.item_model_ is None
    users = np.arange(N_RES)
    plain = EASERecommender(l2=3.0).fit(UB).score(users, UB)
    np.testing.assert_allclose(model.score(users, UB), _standardise(plain), atol=1e-6)


def test_mix_zero_ignores_the_item_model() -> None:
    model = BundleScorer(bundle_model=PopularityRecommender(), mix=0.0)
    model.fit(UB, side_items=UI, composition=COMP)
    assert model.item_model_ is None


def test_round_trip_keeps_scores_and_reasons(scorer: BundleScorer, tmp_path) -> None:
    loaded = load_model(scorer.save(tmp_path / "bundles"))
    users = np.arange(N_RES)
    np.testing.assert_array_equal(
        loaded.score(users, UB, side_items=UI), scorer.score(users, UB, side_items=UI)
    )
    assert loaded.explain_bundle(3, UB[[3]], UI[[3]], 4) == scorer.explain_bundle(
        3, UB[[3]], UI[[3]], 4
    )


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="composition"):
        BundleScorer().fit(UB, side_items=UI, composition=COMP[:5])
    with pytest.raises(ValueError, match="side_items"):
        BundleScorer().fit(UB, side_items=UI[:10], composition=COMP)


def test_from_parts_equals_fit(scorer: BundleScorer) -> None:
    """Tuning the mix on fitted parts must give exactly what a full fit gives."""
    users = np.arange(N_RES)
    for mix in (0.0, 0.5, 2.0):
        full = BundleScorer(
            bundle_model=CrossViewEASE(l2=10.0), item_model=ItemKNNRecommender(K=10), mix=mix
        ).fit(UB, side_items=UI, composition=COMP)
        parts = BundleScorer.from_parts(
            scorer.bundle_model_, scorer.item_model_, COMP, mix=mix, aggregation_norm=0.5
        )
        np.testing.assert_array_equal(
            parts.score(users, UB, side_items=UI), full.score(users, UB, side_items=UI)
        )
