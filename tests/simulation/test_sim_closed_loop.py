"""The closed loop: it rewards better targeting, and cadence is classified as documented."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from bouquet.core.cadence import DAILY_MIN_DAYS, WEEKLY_MIN_WEEKS, cadence_class
from bouquet.core.catalog import Catalog
from bouquet.core.recommendation import development_ids
from bouquet.simulation.behaviour import Simulation
from bouquet.simulation.closed_loop import (
    CADENCES,
    Estimate,
    cadence_codes,
    compare,
    run_policy,
    t_quantile_975,
)
from bouquet.simulation.policies import HttpPolicy, OraclePolicy, PopularPolicy, ScoringPolicy
from bouquet.simulation.sinks import MemorySink
from tests.simulation.sim_support import shown_within_serving_rules


def test_the_loop_tells_policies_apart(catalog: Catalog, end_date) -> None:
    result = compare(["none", "random", "popular", "oracle"], catalog, residents=3000,
                     weeks=10, seeds=[1, 2], end=end_date)
    by = {(r.policy, r.seed): r for r in result.runs}
    for seed in (1, 2):
        share = {p: by[p, seed].shares["daily"] + by[p, seed].shares["weekly"]
                 for p in ("none", "random", "popular", "oracle")}
        assert share["oracle"] > share["popular"] > share["none"], share
        assert share["oracle"] > share["random"] > share["none"], share
        # better targeting: more shown bundles are taken
        assert by["oracle", seed].accepted > by["popular", seed].accepted \
            > by["random", seed].accepted > 0
        assert by["none", seed].shown == 0
        assert abs(sum(by["none", seed].shares.values()) - 1) < 1e-9
    assert result.uplift("oracle", "none").mean > 0.02
    shares = result.shares("popular")
    assert set(shares) == {*CADENCES, "weekly_or_better"}
    assert json.dumps(result.as_dict())  # serialisable for --json


def test_cadence_classes_by_hand(catalog: Catalog, end_date) -> None:
    sim = Simulation.create(catalog, 7, 6, 1, end=end_date)
    sim.week_done = 6
    sim.use_days[:] = 0
    sim.use_days[0, 2:] = [5, 5, 5, 5]  # 20 days in the last 4 weeks: daily
    sim.use_days[1, 2:] = [5, 5, 5, 4]  # 19 days, every week: weekly
    sim.use_days[2, 2:] = [1, 0, 1, 1]  # 3 of 4 weeks: weekly
    sim.use_days[3, 2:] = [0, 0, 6, 6]  # 12 days but only 2 weeks: monthly
    sim.use_days[4, 0] = 3  # active before the last 4 weeks only: yearly
    sim.last_history_use[5] = int(sim.day_start_us[0]) - 10 * 86_400_000_000  # yearly
    # resident 6: a contact 400 days before the end only: dormant
    sim.last_history_use[6] = int(sim.day_start_us[-1]) - 400 * 86_400_000_000
    assert [CADENCES[c] for c in cadence_codes(sim)] == [
        "daily", "weekly", "weekly", "monthly", "yearly", "yearly", "dormant"]
    sim.erased_at[6] = 0
    assert cadence_codes(sim)[6] == -1


def test_cadence_is_use_cadence_and_the_other_classes_are_counted_beside_it(
        popular_run) -> None:
    table, sim, run = popular_run
    frame = table.select(["resident_id", "type", "ts"]).to_pandas()
    frame = frame[frame["ts"] >= pd.Timestamp(int(sim.day_start_us[0]), unit="us", tz="UTC")]
    kind = frame["type"].map(cadence_class)
    # use days per resident and week, recomputed from the events on local days
    uses = frame[kind == "use"]
    local = uses["ts"].dt.tz_convert(sim.params.timezone).dt.tz_localize(None)
    day = (local.dt.normalize() - pd.Timestamp(sim.start)).dt.days.to_numpy()
    rows = pd.Index(sim.residents.ids).get_indexer(uses["resident_id"])
    expected = np.zeros_like(sim.use_days)
    pairs = np.unique(np.stack([rows, day]), axis=1)
    np.add.at(expected, (pairs[0], pairs[1] // 7), 1)
    assert (sim.use_days == expected).all()
    # a view is exposure, not use: residents who were only shown bundles are not active
    viewers = set(frame.loc[kind == "exposure", "resident_id"]) - set(uses["resident_id"])
    assert viewers
    assert not sim.use_days[pd.Index(sim.residents.ids).get_indexer(list(viewers))].any()
    alive = (sim.erased_at == np.iinfo(np.int64).max).sum()
    for name in ("use", "response", "exposure"):
        per_week = (kind == name).sum() / alive / sim.weeks
        assert run.per_resident_week[name] == pytest.approx(per_week)
    assert run.per_resident_week["exposure"] > 0
    assert run.weekly_share[-1] == pytest.approx(run.shares["daily"] + run.shares["weekly"])


def test_thresholds_match_the_operators_report() -> None:
    from bouquet.analytics.engagement import CADENCES as REPORTED
    from bouquet.analytics.engagement import CadenceRules

    rules = CadenceRules()
    reported = (rules.daily_min_days, rules.weekly_min_weeks, rules.window_days)
    assert reported == (DAILY_MIN_DAYS, WEEKLY_MIN_WEEKS, 28)
    assert CADENCES == REPORTED


def test_confidence_intervals() -> None:
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(14) == pytest.approx(2.145, abs=1e-3)  # not rounded to 15's
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=1e-3)
    e = Estimate.of([0.1, 0.2, 0.3])
    assert e.mean == pytest.approx(0.2)
    assert e.high - e.mean == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-4)
    single = Estimate.of([0.5])
    assert single.mean == 0.5 and single.low != single.low  # NaN: no interval from one seed


def test_recommendations_are_allowed_and_attributed(popular_run, catalog: Catalog) -> None:
    table, _, run = popular_run
    assert run.shown > 0
    shown = shown_within_serving_rules(table, run.shown, catalog)
    for event in shown:
        attribution = development_ids().verify(event["recommendation_id"])
        assert attribution is not None and attribution.variant == "popular"
    # a subscription taken from a recommendation echoes the id of the view
    views = {(e["resident_id"], e["bundle_id"], e["recommendation_id"]) for e in shown}
    subs = table.filter(pc.and_(pc.equal(table["type"], "subscribe"),
                                pc.is_valid(table["recommendation_id"]))).to_pylist()
    assert subs
    assert all((s["resident_id"], s["bundle_id"], s["recommendation_id"]) in views
               for s in subs)


def test_popular_learns_from_events_only(catalog: Catalog, end_date) -> None:
    policy = PopularPolicy()
    run_policy(policy, catalog, residents=800, weeks=2, seed=5, end=end_date)
    assert policy.subscriptions.sum() > 0
    top = catalog.bundle_ids[int(np.argmax(policy.subscriptions))]
    # a resident known to hold nothing and allowed everything open gets the top bundle
    ids = list(policy._row)
    answers = policy.recommend(ids[:200], 3)
    assert any(top in a for a in answers)
    for rid, answer in zip(ids[:200], answers, strict=True):
        row = policy._row[rid]
        assert not any(policy.holdings[row, catalog.bundle_ids.index(b)] for b in answer)
    assert policy.recommend(["unknown-resident"], 3) == [[]]
    # a profile declared by another front end (keys in another order) is understood
    import pyarrow as pa

    from bouquet.core.eventlog import SCHEMA

    rid = ids[0]
    context = ('{"student": false, "low_income": false, "household": "single", '
               '"age_band": "65+", "neighbourhood": "centre"}')
    row = {name: None for name in SCHEMA.names}
    row.update(event_id="x1", resident_id=rid, type="profile", channel="app",
               ts=datetime(2025, 6, 1, tzinfo=UTC), context=context, schema_version=1)
    policy.observe(pa.Table.from_pylist([row], schema=SCHEMA))
    allowed = policy.allowed(np.array([policy._row[rid]]))[0]
    assert allowed[catalog.bundle_ids.index("senior-pass")] or policy.holdings[
        policy._row[rid], catalog.bundle_ids.index("senior-pass")]
    assert not allowed[catalog.bundle_ids.index("student-pass")]


def test_the_oracle_personalises_only_with_consent(catalog: Catalog, end_date) -> None:
    import pyarrow as pa

    from bouquet.core.eventlog import SCHEMA

    oracle = OraclePolicy()
    _, sim = run_policy(oracle, catalog, residents=1500, weeks=2, seed=4, end=end_date)
    ids = list(oracle._row)
    rows = np.arange(len(ids))
    # what it knows is what was observed: consent changes of the run included
    assert (oracle.consent == sim.consent).all()
    assert 0 < oracle.consent.sum() < len(ids)
    answers = oracle.recommend(ids, 3)
    popular = PopularPolicy.recommend(oracle, ids, 3)
    allowed = oracle.allowed(rows)
    truth = np.where(allowed, sim.bundle_affinity(sim.affinity(rows)), -np.inf)
    for i in rows:
        if oracle.consent[i]:
            best = [catalog.bundle_ids[j] for j in np.argsort(-truth[i], kind="stable")[:3]
                    if np.isfinite(truth[i, j])]
            assert answers[i] == best
        else:
            assert answers[i] == popular[i]  # the lawful non-personalised fallback
    assert sum(a != p for a, p in zip(answers, popular, strict=True)) > len(ids) // 3
    # a withdrawal it observes turns personalisation off for that resident
    rid = next(r for r in ids if oracle.consent[oracle._row[r]]
               and oracle.recommend([r], 3) != PopularPolicy.recommend(oracle, [r], 3))
    row = {name: None for name in SCHEMA.names}
    row.update(event_id="c1", resident_id=rid, type="consent", channel="app", value=0.0,
               ts=datetime(2025, 6, 1, tzinfo=UTC), schema_version=1)
    oracle.observe(pa.Table.from_pylist([row], schema=SCHEMA))
    assert oracle.recommend([rid], 3) == PopularPolicy.recommend(oracle, [rid], 3)


def test_a_scoring_function_can_be_the_policy(catalog: Catalog, end_date, caplog) -> None:
    periods = []
    fixed = ["culture-pass", "sport-pass", "no-such-bundle"]
    policy = ScoringPolicy(lambda ids, k: [fixed[:k] for _ in ids], name="model",
                           model_version="v7", on_events=periods.append)
    sink = MemorySink()
    run, _ = run_policy(policy, catalog, residents=600, weeks=3, seed=2, end=end_date,
                        sink=sink)
    assert len(periods) == 1 + 3  # history, then every week
    table = sink.table()
    recs = table.filter(pc.is_valid(table["recommendation_id"]))
    assert recs.num_rows > 0
    assert set(pc.unique(recs["bundle_id"]).to_pylist()) == {"culture-pass", "sport-pass"}
    assert all(r.startswith("v7.model.") for r in recs["recommendation_id"].to_pylist())
    assert "no-such-bundle" in caplog.text  # unknown ids are ignored, with a warning


class _FakeServing(BaseHTTPRequestHandler):
    """A stand-in serving API: always the same two bundles, with a per-resident id."""

    def do_GET(self) -> None:  # noqa: N802 — http.server naming
        url = urlparse(self.path)
        resident = url.path.split("/")[3]
        k = int(parse_qs(url.query)["k"][0])
        body = {"recommendation_id": f"v3.champion.{resident[-6:]}",
                "bundles": [{"bundle_id": b} for b in ["zero-waste", "health-plus"][:k]]}
        payload = json.dumps(body).encode()
        self.send_response(200 if self.headers.get("X-API-Key") == "key" else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_the_serving_api_can_be_the_policy(catalog: Catalog, end_date) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    forwarded = []
    try:
        policy = HttpPolicy(f"http://127.0.0.1:{server.server_address[1]}", api_key="key",
                            forward=forwarded.append, workers=4)
        sink = MemorySink()
        run, _ = run_policy(policy, catalog, residents=300, weeks=2, seed=3, end=end_date,
                            k=2, sink=sink)
        policy.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(forwarded) == 3 and run.shown > 0
    table = sink.table()
    recs = table.filter(pc.is_valid(table["recommendation_id"])).to_pylist()
    assert recs
    for event in recs:  # the server's own ids are echoed, as a front end would
        assert event["recommendation_id"] == f"v3.champion.{event['resident_id'][-6:]}"
        assert event["bundle_id"] in {"zero-waste", "health-plus"}
