"""The planner's candidates are serving's answer: for random residents (profiles,
holdings, dismissals, precomputed lists, consent) and published lists (neighbourhoods',
segments', the city's), the vectorised rule gives exactly the first offers and reasons
:meth:`OfferRanker.rank` gives without real-time re-ranking."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bouquet.core.profile import segment_of
from bouquet.models.online import Audience, unpack_list
from bouquet.outreach.candidates import CandidateBuilder
from bouquet.serving.ranking import personalises
from bouquet.serving.store import ResidentState
from tests.outreach.world import (
    CATALOG,
    RANKER,
    packed_list,
    published,
    random_profile,
    serving_view,
)

VOCAB = ["cf", "evt:use:s:bike-share:2026-11", "evt:subscribe:b:maas-urban:2026-10"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5), residents=st.integers(1, 30))
def test_candidates_are_the_first_offers_of_the_serving_answer(seed: int, n: int,
                                                               residents: int) -> None:
    rng = np.random.default_rng(seed)
    lists = published(rng, VOCAB)
    # a champion's version, one without a champion serving segment lists, one without
    lists.audience = [Audience(), Audience(False, True), Audience(False, False)][
        int(rng.choice(3, p=[0.8, 0.1, 0.1]))]
    version = serving_view(lists)
    builder = CandidateBuilder(CATALOG, lists, RANKER, list(CATALOG.neighbourhood_ids), n)
    profiles = [random_profile(rng) for _ in range(residents)]
    consent = rng.random(residents) < 0.6
    holdings = [" ".join(f"{k}:{i}" for k, i in zip(
        rng.choice(["b", "s"], 3), rng.choice([*CATALOG.bundle_ids, *CATALOG.service_ids], 3),
        strict=True)) if rng.random() < 0.5 else "" for _ in range(residents)]
    dismissed = [" ".join(rng.choice([*CATALOG.bundle_ids, "s:bike-share"], 2))
                 if rng.random() < 0.4 else "" for _ in range(residents)]
    nb_index = {nb: i for i, nb in enumerate(CATALOG.neighbourhood_ids)}
    neighbourhood = np.array([nb_index.get(p.get("neighbourhood"), -1) for p in profiles])
    seg_index = {seg: i for i, seg in enumerate(builder.segments)}
    segment = np.array([seg_index.get(segment_of(p) or "", -1) for p in profiles])
    for kind, ids in (("b", CATALOG.bundle_ids), ("s", CATALOG.service_ids)):
        packed = [packed_list(rng, len(ids), len(VOCAB)) if lists.audience.personalised
                  else b"" for _ in range(residents)]
        signature = np.array([builder.signature(kind, p) for p in profiles])
        blocked = builder.blocked(kind, holdings, dismissed)
        items, reasons = builder.build(kind, consent & lists.audience.tailors, packed,
                                       neighbourhood, signature, blocked, segment)
        for r in range(residents):
            state = ResidentState(precomputed=unpack_list(packed[r]), profile=profiles[r],
                                  holdings=set(holdings[r].split()),
                                  dismissed=set(dismissed[r].split()))
            answer = RANKER.rank(kind, state, version, k=n,
                                 personalise=bool(consent[r]) and personalises(version),
                                 rerank=False)
            got = [(ids[i], builder.codes[c]) for i, c in zip(items[r], reasons[r],
                                                                strict=True) if i >= 0]
            assert got == [(p.item_id, p.reason_code) for p in answer.items], (kind, r)
