"""Hostile and malformed input never produces a 5xx: clear 4xx answers, Redis untouched."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bouquet.core.catalog import load_catalog
from bouquet.serving.app import create_app
from tests.serving.support import APP, all_keys, publish, redis_client, small_model

CATALOG = load_catalog()
HOSTILE_IDS = ["a" * 65, "r1*", "r1\r\nFLUSHALL", "..%2f..%2fadmin", "%00", "é", "{r1}",
               "r1:profile", "r1}:x", "🙂", "r 1", "*", "?", "%", "r1;DEL x", "\\x00"]
HOSTILE_QUERIES = [{"k": "0"}, {"k": "-1"}, {"k": "10000"}, {"k": "abc"}, {"k": "1e400"},
                   {"domain": "xyz"}, {"zone": "../etc"}, {"zone": "A"}, {"zone": "atlantis"},
                   {"rerank": "maybe"}, {"zone": "a" * 5000}]
DEEP = b"[" * 100_000 + b"]" * 100_000
BODIES = [b"", b"null", b"42", b'"event"', b"[1, 2]", b"[[]]", b"{}", b"\xff\xfe\xfd", DEEP,
          b'{"schema_version": 1e999}', b'{"schema_version": NaN}', b'[{"a":' * 50 + b"1",
          b'{"schema_version":1,"event_id":"e","resident_id":"r","type":"use",'
          b'"service_id":"bus","ts":"2026-01-01T00:00:00Z","channel":"app",'
          b'"context":' + b'{"a":' * 500 + b"1" + b"}" * 501,
          b'{"schema_version":2}', b'{"__proto__": {"x": 1}}']


@pytest.fixture
def client(settings):
    publish(settings, small_model(CATALOG))
    with TestClient(create_app(settings), headers=APP, raise_server_exceptions=False) as c:
        yield c


def test_hostile_resident_ids_queries_and_bodies_get_4xx(client, settings) -> None:
    r = redis_client(settings)
    # the intake's token bucket of the app key (serving/rate_limit.py) is the one key a
    # request may create; it is named by the key's keyed fingerprint, never by input
    buckets = f"{settings.redis_key_prefix}rl:*"
    keys_before = all_keys(r)
    statuses = []
    for rid in HOSTILE_IDS:
        for kind in ("bundles", "services"):
            resp = client.get(f"/v1/residents/{quote(rid, safe='')}/{kind}")
            statuses.append((rid, resp.status_code))
            assert resp.status_code in (404, 422), (rid, resp.status_code, resp.text[:200])
    for query in HOSTILE_QUERIES:
        resp = client.get("/v1/residents/r1/bundles", params=query)
        assert resp.status_code == 422, (query, resp.status_code)
        assert resp.json()["detail"] == "invalid request" and resp.json()["problems"]
    for body in BODIES:
        resp = client.post("/v1/events", content=body,
                           headers={"Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500, (body[:40], resp.status_code, resp.text[:200])
    for key in ("x" * 10_000, "dev-app-key\x00", "ключ".encode()):
        resp = client.get("/v1/residents/r1/bundles", headers={"X-API-Key": key})
        assert resp.status_code == 401
    bucket = list(r.scan_iter(match=buckets))
    assert len(bucket) == 1
    assert all_keys(r) - keys_before == set(bucket)  # no other new key
    r.close()


def test_fuzzed_resident_ids_never_give_5xx(client) -> None:
    @hsettings(max_examples=150, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(min_size=1, max_size=80))
    def check(rid: str) -> None:
        resp = client.get(f"/v1/residents/{quote(rid, safe='')}/bundles")
        assert resp.status_code < 500, (rid, resp.status_code)
        if resp.status_code == 200:
            assert resp.json()["resident_id"] == rid

    check()


def test_a_true_bug_is_a_clean_json_500(client, monkeypatch) -> None:
    runtime = client.app.state.bouquet_runtime

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runtime.ranker, "rank", broken)
    resp = client.get("/v1/residents/r1/bundles")
    assert resp.status_code == 500
    assert resp.json()["detail"] == "internal error" and resp.json()["error_id"]
    assert "ZeroDivision" not in resp.text
