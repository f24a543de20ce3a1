"""Through a real ``bouquet serve`` (uvicorn, 2 workers, uvloop/httptools) on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.localstack import free_port
from tests.serving.support import APP, publish, set_profile, small_model

CATALOG = load_catalog()


@pytest.fixture
def server(settings):
    port = free_port()
    env = {**os.environ, "BOUQUET_ENV": "test", "REDIS_URL": settings.redis_url,
           "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix,
           "BOUQUET_TOPIC_EVENTS": settings.topic_events,
           "BOUQUET_STATE_DIR": str(settings.state_dir),
           "BOUQUET_SERVING_POINTER_POLL_MS": "100"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "bouquet", "serve", "--workers", "2",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.timeout(180)
def test_real_server_answers_and_reports_metrics_of_all_workers(settings, server) -> None:
    set_profile(settings, "r1", consent="1", neighbourhood="gare")
    with httpx.Client(base_url=server, headers=APP, timeout=5) as c:
        assert c.get("/readyz").status_code == 503  # nothing published yet
        report = publish(settings, small_model(CATALOG))
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:  # each worker notices the pointer
            assert time.monotonic() < deadline
            time.sleep(0.1)
        answers = [c.get("/v1/residents/r1/bundles", params={"k": 3}) for _ in range(40)]
        assert all(a.status_code == 200 for a in answers)
        assert {a.json()["keyspace_version"] for a in answers} == {report.version}
        assert all(a.json()["personalised"] for a in answers)
        assert c.get("/v1/residents/bad*id/bundles").status_code == 422
        docs = c.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = c.get("/openapi.json").json()
        assert "/v1/residents/{resident_id}/bundles" in spec["paths"]
        assert "examples" in str(spec["paths"]["/v1/events"]["post"]["requestBody"])
        metrics = c.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("bouquet_http_requests_total{")
                and "bundles" in x and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 40  # counted across both workers
