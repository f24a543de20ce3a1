"""The segment baseline: what serving shows a consenting resident without a list of their
own, scored on the hold-out as serving would show it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bouquet.core.profile import segment_id
from bouquet.pipelines.candidates import make_candidate
from bouquet.pipelines.dataset import build_dataset
from bouquet.pipelines.split import temporal_split
from tests.pipelines.test_training_data import NB, PARAMS, B, T, arrays_of, ev


def _profile(neighbourhood: str, age_band: str | None, household: str | None) -> str:
    found = {"neighbourhood": neighbourhood, "age_band": age_band, "household": household}
    return json.dumps({k: v for k, v in found.items() if v is not None})


def _world() -> list[dict]:
    """In one neighbourhood, young shared households take bundle 0 and older families
    bundle 1 (more of them, so bundle 1 is the neighbourhood's favourite); one resident
    declares only the neighbourhood; one young newcomer takes up after the cut-off."""
    records = []
    for i in range(6):
        for rid, (age, household, bundle) in ((f"y{i}", ("18-25", "shared", B[0])),
                                              (f"o{i}", ("41-64", "family", B[1])),
                                              (f"p{i}", ("41-64", "family", B[1]))):
            records += [ev(rid, "consent", 40, value=1),
                        ev(rid, "profile", 40, context=_profile(NB[0], age, household)),
                        ev(rid, "subscribe", 10, bundle=bundle)]
    records += [ev("u", "consent", 40, value=1),
                ev("u", "profile", 40, context=_profile(NB[0], None, None)),
                ev("u", "subscribe", 10, bundle=B[2]),
                ev("new", "consent", 40, value=1),
                ev("new", "profile", 40, context=_profile(NB[0], "18-25", "shared")),
                ev("new", "subscribe", -1, bundle=B[0])]
    return records


def test_segment_lists_score_residents_by_their_segment_and_others_by_neighbourhood(
        tmp_path: Path) -> None:
    arrays = arrays_of(tmp_path / "eventlog", _world())
    data = build_dataset(arrays, PARAMS, until=pd.Timestamp(T))
    segment = make_candidate("popularity_segment").fit(data)
    neighbourhood = make_candidate("popularity_neighbourhood").fit(data)
    row = {rid: i for i, rid in enumerate(data.resident_ids.tolist())}
    b0, b1 = data.bundle_ids.index(B[0]), data.bundle_ids.index(B[1])

    young = segment.score("bundles", np.array([row["y0"]]))[0]
    older = segment.score("bundles", np.array([row["o0"]]))[0]
    assert young[b0] > young[b1] and older[b1] > older[b0]
    # the neighbourhood's favourite is bundle 1, for everyone
    around = neighbourhood.score("bundles", np.array([row["y0"]]))[0]
    assert around[b1] > around[b0]
    # no declared segment: the neighbourhood's list, exactly
    np.testing.assert_allclose(segment.score("bundles", np.array([row["u"]])),
                               neighbourhood.score("bundles", np.array([row["u"]])))
    assert data.segment[row["u"]] == -1
    assert data.segments[data.segment[row["y0"]]] == segment_id(NB[0], "18-25", "shared")


def test_the_cold_group_is_scored_by_its_declared_segment(tmp_path: Path) -> None:
    arrays = arrays_of(tmp_path / "eventlog", _world())
    split = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), test_weeks=2)
    cold = split.cold
    assert cold is not None and cold.n_residents == 1
    assert split.train.segments[cold.segment[0]] == segment_id(NB[0], "18-25", "shared")
    segment = make_candidate("popularity_segment").fit(split.train)
    scores = segment.score_groups("bundles", cold.neighbourhood, cold.segment)[0]
    assert np.argmax(scores) == split.train.bundle_ids.index(B[0])
    # without the segment, the neighbourhood's favourite
    plain = segment.score_groups("bundles", cold.neighbourhood)[0]
    assert np.argmax(plain) == split.train.bundle_ids.index(B[1])
