"""No secret and no resident id in logs or status messages; the API's own description and
metrics are for key holders in production; the dashboard never puts the key in a URL the
server sees."""

from __future__ import annotations

import logging
import re
from importlib import resources

import pytest

from bouquet.core.settings import redact_url
from bouquet.localstack import redis_ready
from tests.serving.support import APP, client_for

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
STRONG = {"api_keys": {"kF2pZ7qL0xW9cV4bN8mR3tY6uJ1hG5sDaEoIkUyTrWq": "operator"},
          "pseudonym_secret": "Xq3v0J8kTz1bR7mWc2LpN5yHs9dFg4Ae6UoKiQwErTy",
          "server_secret": "yTrEwQiKoU6eA4gFd9sHy5Np2cWm7Rb1zTk8J0v3qX"}


def test_urls_are_shown_without_their_password() -> None:
    assert redact_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("rediss://bouquet:s3cret@[::1]:6380/2") == "rediss://bouquet:***@[::1]:6380/2"
    assert redact_url("http://u:s3cret@mlflow:5000") == "http://u:***@mlflow:5000"
    assert redact_url("redis://127.0.0.1:16379/0") == "redis://127.0.0.1:16379/0"
    ok, detail = redis_ready("redis://:s3cret-password@127.0.0.1:1/0")  # nothing listens
    assert not ok and "s3cret-password" not in detail and ":***@" in detail


async def test_a_500_is_logged_by_route_never_by_path(settings, caplog, monkeypatch) -> None:
    resident = "rLoggedNowhere42"
    async with client_for(settings) as c:
        runtime = c.app.state.bouquet_runtime

        def broken(*args, **kwargs):
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(runtime.ranker, "rank", broken)
        with caplog.at_level(logging.INFO):
            answer = await c.get(f"/v1/residents/{resident}/bundles")
    assert answer.status_code == 500
    # the server's own records (the test's HTTP client logs its request URLs itself)
    ours = [r for r in caplog.records if r.name.startswith("bouquet")]
    logged = "\n".join(r.getMessage() for r in ours)
    assert answer.json()["error_id"] in logged
    assert "/v1/residents/{resident_id}/bundles" in logged
    assert all(resident not in r.getMessage() and resident not in str(r.exc_text or "")
               for r in ours)


async def test_docs_and_metrics_need_a_key_in_production(settings) -> None:
    production = settings.model_copy(update={"env": "production", **STRONG})
    key = {"X-API-Key": next(iter(STRONG["api_keys"]))}
    async with client_for(production) as c:
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert (await c.get(path, headers={"X-API-Key": ""})).status_code == 401, path
            assert (await c.get(path, headers=key)).status_code == 200, path
        assert (await c.get("/healthz", headers={"X-API-Key": ""})).status_code == 200
    async with client_for(settings) as c:  # on a laptop they stay open
        assert (await c.get("/metrics", headers={"X-API-Key": ""})).status_code == 200
        assert (await c.get("/v1/residents/r1/bundles", headers=APP)).status_code == 200


def test_the_dashboard_takes_the_key_from_a_fragment_never_a_query_string() -> None:
    script = resources.files("bouquet.serving").joinpath("static", "dashboard.js").read_text()
    assert "searchParams.get(\"key\")" not in script and "?key=" not in script
    assert re.search(r"url\.hash.*get\(\"key\"\)", script)
    assert "\"X-API-Key\": key()" in script  # the key travels in a header
