"""Publish then serve, against the session's real Redis: every rule of the bundles answer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import development_ids
from bouquet.pipelines.publish import popular_lists
from tests.serving.support import (
    ADMIN,
    OPERATOR,
    client_for,
    ids,
    publish,
    push_recent,
    redis_client,
    set_profile,
    small_model,
)

pytestmark = pytest.mark.anyio
CATALOG = load_catalog()
NAMES = {s.id: s.name for s in CATALOG.services}
ALL = len(CATALOG.bundles)


@pytest.fixture
def served(settings):
    """The settings of a test with a small model published under its own prefix."""
    model = small_model(CATALOG)
    report = publish(settings, model)
    return settings, model, report


async def test_publish_then_serve_personalised(served) -> None:
    settings, model, report = served
    set_profile(settings, "r1", consent="1", neighbourhood="gare")
    async with client_for(settings) as c:
        answer = (await c.get("/v1/residents/r1/bundles", params={"k": 5})).json()
    assert answer["personalised"] is True and answer["fallback"] is None
    assert answer["model_version"] == "v1"
    assert answer["keyspace_version"] == report.version
    assert answer["variant"] == "champion"
    attribution = development_ids().verify(answer["recommendation_id"])
    assert attribution is not None and attribution[:2] == ("v1", "champion")
    assert len(answer["bundles"]) == 5
    first = answer["bundles"][0]
    assert first["services"] and all(s["name"] for s in first["services"])
    assert first["reason"] and first["source"] == "model"
    scores = [b["score"] for b in answer["bundles"]]
    assert scores == sorted(scores, reverse=True)
    # Precomputed order = the model's own scores for the resident (no recent events).
    user = model.resident_factors[1]
    expected = sorted(CATALOG.bundle_ids, key=lambda b: -float(
        model.bundle_factors[list(model.bundle_ids).index(b)] @ user))
    allowed = [b for b in expected if not CATALOG.bundle_by_id[b].eligibility.model_dump(
        exclude_none=True) and "*" in CATALOG.bundle_by_id[b].zones or b == "work-from-here"]
    assert ids(answer) == allowed[:5]


async def test_every_filter_applies(served) -> None:
    settings, _, _ = served
    keys = Keys(settings.redis_key_prefix)
    r = redis_client(settings)
    set_profile(settings, "r2", consent="1", neighbourhood="faubourg", age_band="26-40",
                household="single", student="0", low_income="1")
    async with client_for(settings) as c:
        before = ids((await c.get("/v1/residents/r2/bundles", params={"k": ALL})).json())
        # Eligibility: low-income yes → solidarity pass; not a student, not a family, not 65+.
        assert "solidarity-pass" in before
        for barred in ("student-pass", "student-life", "family-pack", "senior-pass",
                       "youth-culture-pass", "canal-neighbourhood-pack"):
            assert barred not in before, barred
        # Zone: work-from-here is only in canal/gare/centre; faubourg does not have it.
        assert "work-from-here" not in before
        r.sadd(keys.holdings("r2"), "b:maas-urban", "s:bus")
        r.sadd(keys.dismissed("r2"), "culture-pass")
        after = ids((await c.get("/v1/residents/r2/bundles", params={"k": ALL})).json())
        assert "maas-urban" not in after and "culture-pass" not in after
        assert set(after) == set(before) - {"maas-urban", "culture-pass"}
        # Query parameters: domain and zone.
        mobility = (await c.get("/v1/residents/r2/bundles",
                                params={"k": ALL, "domain": "mobility"})).json()
        assert mobility["bundles"] and all(b["domain"] == "mobility"
                                           for b in mobility["bundles"])
        in_gare = ids((await c.get("/v1/residents/r2/bundles",
                                   params={"k": ALL, "zone": "gare"})).json())
        assert "work-from-here" in in_gare
        # Services: held services are excluded too.
        services = (await c.get("/v1/residents/r2/services", params={"k": 50})).json()
        assert services["personalised"] and "bus" not in ids(services, "services")
    r.close()


async def test_residents_only_offers_follow_where_the_resident_lives_under_zone(served) -> None:
    """``zone`` says where the offer must be available; a residents-only rule still reads
    where the resident lives. Two residents asking for the same zone share the per-profile
    filter cache only if they live in the same place (the first one's answer once leaked
    the canal's residents-only bundles to anyone asking for zone=jardins-du-canal)."""
    settings, _, _ = served
    canal = "canal-neighbourhood-pack"
    set_profile(settings, "r3", consent="1", neighbourhood="jardins-du-canal")
    set_profile(settings, "r4", consent="1", neighbourhood="gare")
    async with client_for(settings) as c:
        for rid, expected in (("r3", True), ("r4", False), ("r3", True)):
            for path in ("bundles", "services"):
                answer = (await c.get(f"/v1/residents/{rid}/{path}",
                                      params={"k": 50, "zone": "jardins-du-canal"})).json()
                got = ids(answer, path)
                if path == "bundles":
                    assert (canal in got) is expected, (rid, got)
                else:
                    assert ("canal-shared-cars" in got) is expected, (rid, got)
            popular = (await c.get(f"/v1/residents/{rid}/bundles",
                                   params={"k": 50, "zone": "jardins-du-canal",
                                           "rerank": "false"})).json()
            assert (canal in ids(popular)) is expected, (rid, ids(popular))


async def test_cold_start_and_unknown_residents_get_popular(served) -> None:
    settings, model, _ = served
    set_profile(settings, "newcomer", neighbourhood="rives")
    async with client_for(settings) as c:
        nb = (await c.get("/v1/residents/newcomer/bundles", params={"k": 3})).json()
        stranger = (await c.get("/v1/residents/never-seen/bundles", params={"k": 3})).json()
    assert nb["personalised"] is False and nb["fallback"] == "popular_neighbourhood"
    assert nb["notice"] and all(b["reason_code"] == "popular:rives" for b in nb["bundles"])
    order = [model.bundle_ids[i] for i in popular_lists(model, "b")["rives"][0]]
    assert ids(nb) == [b for b in order if b in ids(nb)]  # popular order kept
    assert stranger["personalised"] is False and stranger["fallback"] == "popular_city"
    assert "nothing is known" in stranger["notice"]


async def test_consent_withdrawn_gives_a_non_personalised_answer(served) -> None:
    settings, _, _ = served
    set_profile(settings, "r3", consent="1", neighbourhood="centre")
    async with client_for(settings) as c:
        assert (await c.get("/v1/residents/r3/bundles")).json()["personalised"] is True
        set_profile(settings, "r3", consent="0")
        answer = (await c.get("/v1/residents/r3/bundles")).json()
    assert answer["personalised"] is False
    assert answer["fallback"] == "popular_neighbourhood"
    assert "not consented" in answer["notice"]


async def test_fold_in_of_recent_events_changes_the_ranking(served) -> None:
    settings, _, _ = served
    set_profile(settings, "r4", consent="1", neighbourhood="centre")
    async with client_for(settings) as c:
        before = (await c.get("/v1/residents/r4/bundles", params={"k": ALL})).json()
        # The resident's least liked bundle; they now use one of its services, repeatedly.
        target = CATALOG.bundle_by_id[ids(before)[-1]]
        service = min(target.services, key=lambda s: sum(s in b.services
                                                         for b in CATALOG.bundles))
        push_recent(settings, "r4", *[("use", service)] * 4)
        after = (await c.get("/v1/residents/r4/bundles", params={"k": ALL})).json()
        plain = (await c.get("/v1/residents/r4/bundles",
                             params={"k": ALL, "rerank": "false"})).json()
    assert before["reranked"] is False and after["reranked"] is True
    assert ids(plain) == ids(before)  # the precomputed order is untouched
    assert ids(after).index(target.id) < ids(before).index(target.id)
    # Bundles with that service jump into the top 3, and say why.
    jumped = [b for b in after["bundles"][:3]
              if service in CATALOG.bundle_by_id[b["bundle_id"]].services]
    assert jumped, (service, ids(after)[:3])
    today = datetime.now(UTC).date().isoformat()
    assert all(b["reason_code"] == f"evt:use:s:{service}:{today}"
               and b["reason"] == f"Because you just used {NAMES[service]}" for b in jumped)
    assert min(ids(before).index(b["bundle_id"]) for b in jumped) > 2


async def test_new_resident_with_consent_is_personalised_by_recent_events_alone(served) -> None:
    settings, _, _ = served
    set_profile(settings, "fresh1", consent="1", neighbourhood="centre")
    push_recent(settings, "fresh1", ("use", "bike-share"), ("use", "bike-share"))
    async with client_for(settings) as c:
        answer = (await c.get("/v1/residents/fresh1/bundles", params={"k": 3})).json()
    assert answer["personalised"] is True and answer["reranked"] is True
    assert "bike-share" in CATALOG.bundle_by_id[answer["bundles"][0]["bundle_id"]].services


async def test_api_keys_and_roles(served) -> None:
    settings, _, _ = served
    async with client_for(settings) as c:
        assert (await c.get("/v1/residents/r1/bundles", headers={"X-API-Key": ""})).status_code \
            == 401
        assert (await c.get("/v1/residents/r1/bundles",
                            headers={"X-API-Key": "wrong"})).status_code == 401
        denied = await c.get("/v1/residents/r1/bundles", headers=OPERATOR)
        assert denied.status_code == 403 and "'app' role" in denied.json()["detail"]
        assert (await c.get("/v1/residents/r1/bundles", headers=ADMIN)).status_code == 200
        assert (await c.post("/v1/events", json={}, headers=OPERATOR)).status_code == 403
        assert (await c.get("/v1/catalog/bundles", headers=OPERATOR)).status_code == 200
        assert (await c.get("/v1/catalog/bundles", headers={"X-API-Key": ""})).status_code \
            == 401


async def test_catalog_endpoints(served) -> None:
    settings, _, _ = served
    async with client_for(settings) as c:
        services = (await c.get("/v1/catalog/services", params={"domain": "mobility"})).json()
        bundles = (await c.get("/v1/catalog/bundles", params={"zone": "port"})).json()
        bad = await c.get("/v1/catalog/bundles", params={"zone": "atlantis"})
    assert services and {s["domain"] for s in services} == {"mobility"}
    assert "work-from-here" not in {b["id"] for b in bundles}
    assert len(bundles) == sum(1 for b in CATALOG.bundles if "*" in b.zones or "port" in b.zones)
    assert bad.status_code == 422 and "atlantis" in bad.text


async def test_readyz_and_metrics(served, make_settings) -> None:
    settings, _, _ = served
    async with client_for(settings) as c:
        ready = await c.get("/readyz")
        await c.get("/v1/residents/never-seen/bundles")
        text = (await c.get("/metrics")).text
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["model"]["ok"]
    assert 'bouquet_fallbacks_total{kind="popular_city"}' in text
    assert 'route="/v1/residents/{resident_id}/bundles"' in text
    assert "bouquet_http_request_duration_seconds_bucket" in text
    async with client_for(make_settings()) as c:  # nothing published under this prefix
        empty = await c.get("/readyz")
        catalog_answer = (await c.get("/v1/residents/x/bundles")).json()
    assert empty.status_code == 503 and empty.json()["status"] == "not_ready"
    assert "bouquet publish" in empty.json()["checks"]["model"]["detail"]
    assert catalog_answer["fallback"] == "catalog" and catalog_answer["model_version"] == "none"


async def test_benchmark_floors_exist_only_when_enabled(served) -> None:
    """The two floors of ``bench serve`` return the resident's precomputed list as stored;
    the authenticated one checks the key; both are 404 unless the bench endpoints are on."""
    settings, _, report = served
    stored = redis_client(settings).get(Keys(settings.redis_key_prefix).recs(
        report.version, "r1", "b"))
    assert stored
    async with client_for(settings) as c:
        assert (await c.get("/v1/_bench/bare-open/r1")).status_code == 404
        assert (await c.get("/v1/_bench/bare/r1")).status_code == 404
    enabled = settings.model_copy(update={"serving_bench_endpoints": True})
    async with client_for(enabled) as c:
        assert (await c.get("/v1/_bench/bare-open/r1", headers={"X-API-Key": ""})).content \
            == stored
        assert (await c.get("/v1/_bench/bare/r1")).content == stored
        assert (await c.get("/v1/_bench/bare/r1", headers={"X-API-Key": "nope"})).status_code \
            == 401
