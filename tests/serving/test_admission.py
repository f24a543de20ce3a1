"""Admission before any body is read: the key first (401 without reading the body), then
the key's rate limit (429 + Retry-After), then each route's body cap (413); and every
route that needs a key is refused at the door without one."""

from __future__ import annotations

import pytest

from bouquet.serving.admission import is_public, rate_group
from bouquet.serving.app import create_app
from tests.serving.support import APP, OPERATOR, client_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
FOUR_MB = 4 * 1024 * 1024


async def call(app, method: str, path: str, headers: list[tuple[bytes, bytes]],
               body: bytes) -> tuple[int, int, dict[bytes, bytes]]:
    """Call the ASGI app directly; returns (status, how many times the app called
    ``receive``, response headers)."""
    received = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("bouquet", 80),
             "scheme": "http", "root_path": ""}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], received, dict(start["headers"])


@pytest.mark.parametrize("method, path", [("PUT", "/v1/residents/r1/consent"),
                                          ("POST", "/v1/events"),
                                          ("GET", "/v1/operator/engagement")])
@pytest.mark.parametrize("chunked", [False, True])
async def test_an_unauthenticated_large_body_is_refused_unread(settings, method, path,
                                                               chunked) -> None:
    app = create_app(settings)
    length = [(b"transfer-encoding", b"chunked")] if chunked else \
        [(b"content-length", str(FOUR_MB).encode())]
    for key in ([], [(b"x-api-key", b"not-a-key")]):
        status, received, headers = await call(
            app, method, path, [(b"content-type", b"application/json"), *length, *key],
            b"x" * FOUR_MB)
        assert (status, received) == (401, 0)
        assert headers[b"www-authenticate"] == b"X-API-Key"


async def test_bodies_are_capped_per_route(settings) -> None:
    small = settings.model_copy(update={"serving_max_batch": 2, "max_event_bytes": 512})
    app = create_app(small)
    consent = [(b"x-api-key", APP["X-API-Key"].encode()),
               (b"content-type", b"application/json"), (b"content-length", b"1025")]
    status, received, _ = await call(app, "PUT", "/v1/residents/r1/consent", consent,
                                     b"x" * 1025)
    assert (status, received) == (413, 0)
    events = [(b"x-api-key", APP["X-API-Key"].encode()),
              (b"content-type", b"application/json"), (b"content-length", b"1025")]
    status, received, _ = await call(app, "POST", "/v1/events", events, b"x" * 1025)
    assert (status, received) == (413, 0)  # 2 events × 512 bytes


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(settings) -> None:
    limited = settings.model_copy(update={"rate_limit_operator_per_s": 0.5,
                                          "rate_limit_operator_burst": 3,
                                          "rate_limit_intake_per_s": 0.5,
                                          "rate_limit_intake_burst": 2})
    async with client_for(limited) as c:
        codes = [(await c.get("/v1/admin/audit", headers=OPERATOR)).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = await c.get("/v1/operator/live", headers=OPERATOR)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # buckets are per key and per group: the app key's intake bucket is its own, and
        # recommendations (the hot path) are not limited
        intake = [(await c.post("/v1/events", json=[])).status_code for _ in range(3)]
        assert intake == [422, 422, 429]
        bundles = [(await c.get("/v1/residents/r1/bundles")).status_code for _ in range(5)]
        assert bundles == [200] * 5


def test_every_route_that_checks_a_role_is_closed_at_the_door(settings) -> None:
    """A route with a role check is never public (so its body is never read before its key
    is checked), and every route without one is public (nothing is refused by mistake)."""
    production = settings.model_copy(update={"env": "production"})
    paths = create_app(settings).openapi()["paths"]
    checked = 0
    for template, operations in paths.items():
        path = template.replace("{resident_id}", "r1").replace("{figure}", "cadence") \
            .replace("{table}", "live")
        for operation in operations.values():
            if operation.get("security"):
                assert not is_public(path, settings) and not is_public(path, production), path
            else:
                assert is_public(path, settings), path
            checked += 1
    assert checked >= 20
    assert is_public("/dashboard/assets/dashboard.js", production)
    assert not is_public("/openapi.json", production) and not is_public("/metrics", production)
    assert rate_group("GET", "/v1/residents/r1/bundles") is None
    assert rate_group("GET", "/v1/residents/r1/export") == "operator"
    assert rate_group("DELETE", "/v1/residents/r1") == "operator"
    assert rate_group("PUT", "/v1/residents/r1/consent") == "intake"
