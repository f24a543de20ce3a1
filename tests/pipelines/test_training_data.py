"""Dataset building and splits on tiny hand-made event logs, with exact expected values."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import EventLog, read_events
from bouquet.models.confidence import ConfidenceRule
from bouquet.pipelines.dataset import (
    EVENT_COLUMNS,
    EventArrays,
    build_dataset,
)
from bouquet.pipelines.split import random_split, temporal_split

CATALOG = load_catalog()
S = CATALOG.service_ids
B = CATALOG.bundle_ids
NB = CATALOG.neighbourhood_ids
T = datetime(2025, 6, 1, tzinfo=UTC)
WEIGHTS = {"view": 0.5, "click": 1.0, "use": 2.0, "subscribe": 4.0, "pay": 3.0,
           "dismiss": 0.0, "unsubscribe": 0.0, "consent": 100.0, "profile": 100.0}
PARAMS = ConfidenceRule(event_weights=WEIGHTS, half_life_days=10.0, log_alpha=2.0,
                       spread_bundle_events=False)
_ids = itertools.count()
STUDENT_IN_CENTRE = json.dumps({"neighbourhood": "centre", "age_band": "18-25",
                                "household": "shared", "student": True, "low_income": False})


def ev(resident: str, kind: str, days_before: float, *, service: str | None = None,
       bundle: str | None = None, value: float | None = None, context: str | None = None,
       event_id: str | None = None, recommendation_id: str | None = None) -> dict:
    """An event-log record ``days_before`` the reference time T (negative: after T)."""
    return {"event_id": event_id or f"e{next(_ids)}", "resident_id": resident, "type": kind,
            "service_id": service, "bundle_id": bundle, "ts": T - timedelta(days=days_before),
            "channel": "app", "value": value, "context": context, "schema_version": 1,
            "recommendation_id": recommendation_id}


def conf(strength: float) -> float:
    return 1.0 + 2.0 * np.log1p(strength)


def arrays_of(root: Path, records: list[dict]) -> EventArrays:
    EventLog(root).append(records)
    return EventArrays.from_frame(read_events(root, columns=list(EVENT_COLUMNS)), CATALOG)


@pytest.fixture
def log_root(tmp_path: Path) -> Path:
    return tmp_path / "eventlog"


def hand_made_log() -> list[dict]:
    profile = json.dumps({"neighbourhood": NB[2], "student": True})
    return [
        # a: consents, two decayed bus uses, a tram view, a dismissed service
        ev("a", "consent", 30, value=1),
        ev("a", "profile", 30, context=profile),
        ev("a", "use", 10, service=S[0]),  # 2 · 0.5
        ev("a", "use", 20, service=S[0]),  # 2 · 0.25
        ev("a", "view", 0.0001, service=S[1], event_id="dup"),
        ev("a", "view", 0.0001, service=S[1], event_id="dup"),  # redelivered copy
        ev("a", "dismiss", 1, service=S[2]),
        # bundle 0 subscribed then unsubscribed, bundle 1 subscribed and kept
        ev("a", "subscribe", 5, bundle=B[0]),
        ev("a", "unsubscribe", 3, bundle=B[0]),
        ev("a", "subscribe", 10, bundle=B[1]),
        ev("a", "use", -1, service=S[3]),  # after the cut-off: not training data
        ev("a", "use", 1, service="no-such-service"),
        # b: never consented
        ev("b", "use", 1, service=S[0]),
        # c: consented, then withdrew
        ev("c", "consent", 20, value=1),
        ev("c", "use", 1, service=S[0]),
        ev("c", "consent", 2, value=0),
        # d: refused, then consented: the latest consent decides
        ev("d", "consent", 20, value=0),
        ev("d", "consent", 15, value=1),
        ev("d", "click", 0.0001, bundle=B[2], service=CATALOG.bundle_by_id[B[2]].services[0]),
        # e: consented, used, then asked to be erased
        ev("e", "consent", 20, value=1),
        ev("e", "use", 5, service=S[0]),
        ev("e", "erase", 4),
        # f: consenting, but only weightless events: not a training row
        ev("f", "consent", 20, value=1),
        ev("f", "dismiss", 3, bundle=B[0]),
    ]


def test_confidences_decay_log_scaling_consent_and_erasure(log_root: Path) -> None:
    arrays = arrays_of(log_root, hand_made_log())
    data = build_dataset(arrays, PARAMS, until=pd.Timestamp(T))

    assert data.resident_ids.tolist() == ["a", "d"]
    assert arrays.stats["unknown_service_events"] == 1
    services = data.services.toarray()
    expected_a = np.zeros(len(S))
    expected_a[0] = conf(2 * 0.5 + 2 * 0.25)
    expected_a[1] = conf(0.5 * 2 ** (-0.0001 / 10))  # counted once despite the duplicate
    np.testing.assert_allclose(services[0], expected_a, rtol=1e-6)
    d_service = S.index(CATALOG.bundle_by_id[B[2]].services[0])
    assert services[1, d_service] == pytest.approx(conf(1.0 * 2 ** (-0.0001 / 10)), rel=1e-6)
    assert services[1].sum() == pytest.approx(services[1, d_service])

    bundles = data.bundles.toarray()
    assert bundles[0, 0] == pytest.approx(conf(4 * 2 ** (-0.5)), rel=1e-6)
    assert bundles[0, 1] == pytest.approx(conf(4 * 2 ** (-1.0)), rel=1e-6)
    assert bundles[1, 2] == pytest.approx(conf(1.0 * 2 ** (-0.0001 / 10)), rel=1e-6)
    assert data.bundles.nnz == 3
    # holdings: latest subscribe/unsubscribe per pair
    assert data.held_bundles.toarray()[0].nonzero()[0].tolist() == [1]
    assert data.held_services.nnz == 0
    # declared neighbourhood from the latest profile, -1 when none was declared
    assert data.neighbourhood.tolist() == [2, -1]
    assert data.as_of == pd.Timestamp(T)


def test_bundle_events_spread_over_the_bundle_services(log_root: Path) -> None:
    bundle = CATALOG.bundle_by_id[B[0]]
    arrays = arrays_of(log_root, [ev("a", "consent", 30, value=1),
                                  ev("a", "subscribe", 10, bundle=B[0]),
                                  ev("a", "use", 10, service=bundle.services[0])])
    spread = ConfidenceRule(WEIGHTS, 10.0, 2.0, spread_bundle_events=True)
    data = build_dataset(arrays, spread, until=pd.Timestamp(T))
    share = 4 * 0.5 / len(bundle.services)
    expected = np.zeros(len(S))
    for service in bundle.services:
        expected[S.index(service)] = conf(share)
    expected[S.index(bundle.services[0])] = conf(share + 2 * 0.5)
    np.testing.assert_allclose(data.services.toarray()[0], expected, rtol=1e-6)
    assert data.bundles[0, 0] == pytest.approx(conf(4 * 0.5), rel=1e-6)


def test_erased_resident_never_appears(log_root: Path) -> None:
    arrays = arrays_of(log_root, hand_made_log())
    assert "e" not in set(arrays.resident_ids)  # read_events dropped them
    assert "e" not in set(build_dataset(arrays, PARAMS).resident_ids)


def test_weights_come_from_params_and_fingerprint_tracks_them(log_root: Path) -> None:
    arrays = arrays_of(log_root, hand_made_log())
    base = build_dataset(arrays, PARAMS, until=pd.Timestamp(T))
    again = build_dataset(arrays, PARAMS, until=pd.Timestamp(T))
    no_views = ConfidenceRule(event_weights={**WEIGHTS, "view": 0.0}, half_life_days=10.0,
                             log_alpha=2.0, spread_bundle_events=False)
    changed = build_dataset(arrays, no_views, until=pd.Timestamp(T))
    assert base.fingerprint == again.fingerprint
    assert changed.fingerprint != base.fingerprint
    assert changed.services[0, 1] == 0  # the view no longer weighs
    no_decay = build_dataset(arrays, ConfidenceRule(WEIGHTS, None, 2.0, False),
                             until=pd.Timestamp(T))
    assert no_decay.services[0, 0] == pytest.approx(conf(4.0), rel=1e-6)


def test_all_events_when_no_cutoff(log_root: Path) -> None:
    arrays = arrays_of(log_root, hand_made_log())
    data = build_dataset(arrays, PARAMS)
    assert data.services[0, 3] > 0  # the event after T is included
    assert data.as_of == pd.Timestamp(T + timedelta(days=1))  # decay from the latest event


def test_temporal_split_boundaries_masking_and_cold_start(log_root: Path) -> None:
    nb_code = 5
    records = [
        ev("a", "consent", 40, value=1),
        ev("a", "profile", 40, context=STUDENT_IN_CENTRE),  # may be offered all of these
        ev("a", "use", 10, service=S[0]),
        ev("a", "subscribe", 10, bundle=B[1]),
        ev("a", "use", 1e-6, service=S[4]),  # 1 µs-ish before T: training
        ev("a", "use", 0, service=S[1]),  # exactly T: test
        ev("a", "use", -13.9, service=S[2]),  # inside the 2-week window
        ev("a", "use", -14, service=S[3]),  # exactly T + 2 weeks: outside
        ev("a", "use", -1, service=S[0]),  # already a training positive: masked
        ev("a", "subscribe", -2, bundle=B[1]),  # held at T: masked
        ev("a", "view", -2, bundle=B[3]),  # not a positive type
        ev("a", "subscribe", -3, bundle=B[4]),
        ev("n", "consent", 40, value=1),  # new resident: cold start
        ev("n", "profile", 40, context=json.dumps({"neighbourhood": NB[nb_code]})),
        ev("n", "subscribe", -1, bundle=B[0]),
        ev("x", "use", -1, service=S[5]),  # no consent: nowhere
    ]
    arrays = arrays_of(log_root, records)
    split = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), test_weeks=2)

    assert split.train.resident_ids.tolist() == ["a"]
    assert split.train.services[0, 4] > 0 and split.train.services[0, 1] == 0
    assert split.test_services.toarray()[0].nonzero()[0].tolist() == [1, 2]
    assert split.test_bundles.toarray()[0].nonzero()[0].tolist() == [4]
    # held at T, and every bundle serving may not offer a student of 18-25 in the centre
    not_offered = np.flatnonzero(~arrays.offerable(split.train.codes, "bundles")[0])
    assert 0 < len(not_offered) < len(B) and 1 not in not_offered
    assert set(split.mask_bundles.toarray()[0].nonzero()[0].tolist()) == {1, *not_offered}
    assert split.cold is not None and split.cold.n_residents == 1
    assert split.cold.bundles.toarray()[0].nonzero()[0].tolist() == [0]
    assert split.cold.neighbourhood.tolist() == [nb_code]
    assert split.definition["cutoff"] == pd.Timestamp(T).isoformat()
    again = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), test_weeks=2)
    later = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T) + pd.Timedelta(days=1),
                           test_weeks=2)
    assert split.id == again.id and split.id != later.id


def test_split_masks_offers_serving_may_not_make_and_counts_organic_take_ups(
        log_root: Path) -> None:
    """A ranking is judged on what serving could show: an offer not available where the
    resident lives, or one they are not eligible for, is masked like a held one. A take-up
    that followed a recommendation (it carries its id) is a positive only with
    ``positives="all"``: it measures what the policy of the time showed."""
    shown = "v1.champion.0123456789ab"
    records = [
        ev("c", "consent", 40, value=1),
        ev("c", "profile", 40, context=json.dumps({"neighbourhood": "coteaux",
                                                   "age_band": "41-64", "student": False})),
        ev("c", "use", 10, service=S[0]),
        ev("c", "use", -1, service=S[1]),  # tram: not in les Coteaux
        ev("c", "use", -1, service=S[2]),
        ev("c", "subscribe", -2, bundle=B[4]),  # student pass: not a student
        ev("c", "subscribe", -2, bundle=B[2]),
        ev("c", "subscribe", -3, bundle=B[3], recommendation_id=shown),
    ]
    arrays = arrays_of(log_root, records)
    organic = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), test_weeks=2)
    every = temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), test_weeks=2,
                           positives="all")
    assert organic.test_services.toarray()[0].nonzero()[0].tolist() == [2]
    assert 1 in organic.mask_services.toarray()[0].nonzero()[0].tolist()
    assert 4 in organic.mask_bundles.toarray()[0].nonzero()[0].tolist()
    assert organic.test_bundles.toarray()[0].nonzero()[0].tolist() == [2]
    assert every.test_bundles.toarray()[0].nonzero()[0].tolist() == [2, 3]
    assert organic.definition["positives"] == "organic" and organic.id != every.id
    with pytest.raises(ValueError, match="positives"):
        temporal_split(arrays, PARAMS, cutoff=pd.Timestamp(T), positives="some")


def test_default_cutoff_is_weeks_before_the_last_day(log_root: Path) -> None:
    arrays = arrays_of(log_root, [ev("a", "consent", 60, value=1),
                                  ev("a", "use", 30, service=S[0]),
                                  ev("a", "use", 0.5, service=S[1])])
    split = temporal_split(arrays, PARAMS, test_weeks=2)
    assert split.definition["cutoff"] == (pd.Timestamp(T) - pd.Timedelta(weeks=2)).isoformat()


def test_random_split_holds_out_a_fraction_of_each_user() -> None:
    matrix = sp.random(200, 50, density=0.2, random_state=1, format="csr")
    train, test = random_split(matrix, test_fraction=0.25, seed=3)
    assert (train + test - matrix).nnz == 0  # a partition of the pairs
    assert train.multiply(test).nnz == 0
    counts = np.diff(matrix.indptr)
    held = np.diff(test.indptr)
    eligible = counts >= 2
    np.testing.assert_array_equal(held[eligible],
                                  np.maximum(1, np.round(counts[eligible] * 0.25)))
    assert held[~eligible].sum() == 0
    again = random_split(matrix, test_fraction=0.25, seed=3)[1]
    assert (again != test).nnz == 0


def test_reading_in_date_chunks_gives_the_same_arrays(log_root: Path, tmp_path: Path) -> None:
    from bouquet.core.settings import Settings
    from bouquet.pipelines.dataset import load_event_arrays

    records = hand_made_log() + [
        ev("a", "profile", 0.5, context=json.dumps({"neighbourhood": NB[4]})),  # later: wins
        ev("d", "consent", 0.2, value=0),  # d withdraws in a later chunk
    ]
    whole = arrays_of(log_root, records)
    settings = Settings(env="test", state_dir=tmp_path / "s", event_log_dir=log_root)
    chunked = load_event_arrays(settings, CATALOG, chunk_events=3)
    assert chunked.n_events == whole.n_events
    assert list(chunked.resident_ids[chunked.resident]) == list(whole.resident_ids[whole.resident])
    for name in ("kind", "service", "bundle", "ts", "recommended"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    consenting = sorted(chunked.resident_ids[chunked.consent])
    assert consenting == sorted(whole.resident_ids[whole.consent]) == ["a", "f"]
    a = list(chunked.resident_ids).index("a")
    assert chunked.profiles.loc[a, "neighbourhood"] == NB[4]
    assert build_dataset(chunked, PARAMS).fingerprint == build_dataset(whole, PARAMS).fingerprint


@pytest.mark.parametrize("chunk_events", [1, 700, 10**9])
def test_columnar_read_encodes_exactly_the_events_read_events_returns(
        log_root: Path, tmp_path: Path, messy_log, chunk_events: int) -> None:
    from bouquet.core.settings import Settings
    from bouquet.pipelines.dataset import TYPES, load_event_arrays

    messy_log(log_root)
    settings = Settings(env="test", state_dir=tmp_path / "s", event_log_dir=log_root)
    got = load_event_arrays(settings, CATALOG, chunk_events=chunk_events)
    # the reference: read_events' frame, encoded one plain step at a time
    frame = read_events(log_root, columns=list(EVENT_COLUMNS))
    codes, ids = pd.factorize(frame["resident_id"])
    assert got.resident_ids.tolist() == ids.tolist()  # codes in order of first appearance
    np.testing.assert_array_equal(got.resident, codes)
    for name, column, names in (("kind", "type", TYPES), ("service", "service_id", S),
                                ("bundle", "bundle_id", B)):
        index = {value: i for i, value in enumerate(names)}
        np.testing.assert_array_equal(getattr(got, name),
                                      [index.get(v, -1) for v in frame[column]])
    np.testing.assert_array_equal(got.ts, [t.value for t in frame["ts"].dt.as_unit("ns")])
    np.testing.assert_array_equal(got.recommended, frame["recommendation_id"].notna())
    assert got.recommended.any() and not got.recommended.all()
    assert got.stats["unknown_service_events"] == (frame["service_id"] == "retired-service").sum()
    assert got.stats["unknown_bundle_events"] == (frame["bundle_id"] == "retired-bundle").sum()
    personalisation = (frame["type"] == "consent") & ~frame["context"].str.contains(
        '"purpose":"contact"', regex=False, na=False)
    consents = frame[personalisation].sort_values("ingested_at", kind="stable")
    consent = consents.groupby("resident_id")["value"].last()  # the one received last
    assert sorted(got.resident_ids[got.consent]) == sorted(consent.index[consent == 1.0])
    # per attribute, the latest profile event declaring it
    neighbourhood: dict[str, str] = {}
    for rid, text in frame.loc[frame["type"] == "profile", ["resident_id", "context"]].values:
        if "neighbourhood" in json.loads(text):
            neighbourhood[rid] = json.loads(text)["neighbourhood"]
    declared = {got.resident_ids[code]: got.profiles.loc[code, "neighbourhood"]
                for code in got.profiles.index}
    assert {r: v for r, v in declared.items() if isinstance(v, str)} == neighbourhood
    # and what training builds from them is the same dataset
    whole = EventArrays.from_frame(frame, CATALOG)
    assert build_dataset(got, PARAMS).fingerprint == build_dataset(whole, PARAMS).fingerprint


def drivers_one_by_one(arrays: EventArrays, rule: ConfidenceRule,
                       until: pd.Timestamp) -> tuple[dict, dict]:
    """(resident, item) → driver code, per target, by looking at every share in turn: the
    largest wins, ties go to the latest event, then to the share counted later (a bundle's
    share over its services is counted after the services' own events)."""
    from bouquet.models.reasons import encode_drivers
    from bouquet.pipelines.dataset import NS_PER_DAY, TYPES

    cut = pd.Timestamp(until).value
    # an impression (a recommended view) weighs the rule's impression weight
    weight = [rule.impression_vector(TYPES)[k] if recommended else rule.weight_vector(TYPES)[k]
              for k, recommended in zip(arrays.kind, arrays.recommended, strict=True)]
    strength = np.array(weight) * rule.decay((cut - arrays.ts) / NS_PER_DAY)
    used = [e for e in range(arrays.n_events) if arrays.consent[arrays.resident[e]]
            and arrays.ts[e] < cut and arrays.kind[e] >= 0 and weight[e] > 0]
    spread = rule.spread_matrix(arrays.bundle_services, arrays.bundle_ids, arrays.service_ids)
    best: tuple[dict, dict] = ({}, {})
    counted = itertools.count()

    def share(target: dict, e: int, item: int, value: float, bundle_event: bool,
              code_item: int) -> None:
        code = int(encode_drivers(arrays.kind[e], bundle_event, code_item,
                                  arrays.ts[e] // NS_PER_DAY))
        rank = (value, arrays.ts[e], next(counted))
        key = (arrays.resident_ids[arrays.resident[e]], item)
        if key not in target or rank > target[key][0]:
            target[key] = (rank, code)

    for e in used:
        if arrays.service[e] >= 0:
            share(best[0], e, arrays.service[e], strength[e], False, arrays.service[e])
    for e in used:
        if arrays.service[e] < 0 <= arrays.bundle[e] and rule.spread_bundle_events:
            b = arrays.bundle[e]
            for at in range(spread.indptr[b], spread.indptr[b + 1]):
                share(best[0], e, spread.indices[at], strength[e] * spread.data[at], True, b)
    for e in used:
        if arrays.bundle[e] >= 0:
            share(best[1], e, arrays.bundle[e], strength[e], True, arrays.bundle[e])
    return tuple({k: code for k, (_, code) in target.items()} for target in best)


@pytest.mark.parametrize("block", [1, 37, 10**9])
@pytest.mark.parametrize(("half_life", "impression"), [(10.0, None), (None, 0.0), (10.0, 0.5)])
def test_drivers_are_the_largest_share_whatever_the_block_of_residents(
        log_root: Path, tmp_path: Path, messy_log, monkeypatch, block: int,
        half_life: float | None, impression: float | None) -> None:
    from bouquet.core.settings import Settings
    from bouquet.pipelines import dataset

    messy_log(log_root)
    settings = Settings(env="test", state_dir=tmp_path / "s", event_log_dir=log_root)
    arrays = dataset.load_event_arrays(settings, CATALOG)
    rule = ConfidenceRule(WEIGHTS, half_life, 2.0, spread_bundle_events=True,
                          impression_weight=impression)
    until = pd.Timestamp(arrays.ts[int(arrays.n_events * 0.8)], tz="UTC")
    monkeypatch.setattr(dataset, "DRIVER_BLOCK", block)
    monkeypatch.setattr(dataset, "EVENT_BLOCK", block)
    data = build_dataset(arrays, rule, until=until)
    expected = drivers_one_by_one(arrays, rule, until)
    for drivers, want in ((data.service_drivers, expected[0]),
                          (data.bundle_drivers, expected[1])):
        coo = drivers.tocoo()
        got = {(data.resident_ids[r], c): int(v)
               for r, c, v in zip(coo.row, coo.col, coo.data, strict=True)}
        assert len(got) > 100 and got == want


def test_contact_consent_is_not_personalisation_consent_and_profiles_merge(log_root) -> None:
    contact = json.dumps({"purpose": "contact"}, separators=(",", ":"))
    arrays = arrays_of(log_root, [
        ev("ann", "consent", 9, value=1),
        ev("ann", "consent", 5, value=0, context=contact),  # contact withdrawn, later
        ev("bob", "consent", 9, value=1, context=contact),  # contact only
        ev("ann", "profile", 8, context=json.dumps({"neighbourhood": NB[1]})),
        ev("ann", "profile", 4, context=json.dumps({"channels": ["sms"]})),  # nb stays
        ev("ann", "use", 3, service=S[0]), ev("bob", "use", 3, service=S[0]),
    ])
    codes = {rid: i for i, rid in enumerate(arrays.resident_ids)}
    assert arrays.consent[codes["ann"]] and not arrays.consent[codes["bob"]]
    assert arrays.neighbourhood_codes(np.array([codes["ann"]]))[0] == 1


def test_consent_is_decided_by_the_order_of_receipt(log_root: Path, tmp_path: Path) -> None:
    """The consent event received last decides, whatever time stamps clients wrote: a
    withdrawal received after a grant stands even when stamped earlier, and the other way
    round."""
    from bouquet.core.settings import Settings
    from bouquet.pipelines.dataset import load_event_arrays

    log = EventLog(log_root)
    log.append([ev("a", "consent", 1, value=1), ev("b", "consent", 9, value=0)])
    log.append([ev("a", "consent", 9, value=0), ev("b", "consent", 1, value=1)])
    for resident in ("a", "b"):
        log.append([ev(resident, "use", 2, service=S[0])])
    arrays = EventArrays.from_frame(read_events(log_root, columns=list(EVENT_COLUMNS)), CATALOG)
    consenting = dict(zip(arrays.resident_ids, arrays.consent, strict=True))
    assert consenting == {"a": False, "b": True}
    # the columnar scan training uses decides the same way
    settings = Settings(env="test", state_dir=tmp_path / "s", event_log_dir=log_root)
    scanned = load_event_arrays(settings, CATALOG, chunk_events=1)
    assert dict(zip(scanned.resident_ids, scanned.consent, strict=True)) == consenting
