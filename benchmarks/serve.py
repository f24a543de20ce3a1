"""``bouquet bench serve``: recommendation latency at fixed rates, throughput, freshness.

All in one run, against one server (``bouquet serve --workers 2``, uvicorn + uvloop +
httptools) started as a subprocess, with its own Redis and broker on free ports:

* **Keyspace**: ``--residents`` synthetic residents (default 50,000) published with
  :class:`~bouquet.pipelines.publish.Publisher` from a synthetic factor model over the demo
  city (64 factors, 56 services, 24 bundles; services of one domain share a direction, as
  trained factors do) — the benchmark measures serving, so it does not train. Every
  resident consents and has a profile; 80 % have 5 recent events, so re-ranking does a real
  fold-in on most requests.
* **Fixed-rate latency**: an open-loop generator in its own process (asyncio + uvloop, raw
  HTTP/1.1 on keep-alive connections) sends at 250, 1,000 and 2,000 req/s for
  ``--duration`` seconds each and measures every latency from the request's *intended*
  send time, so a stalled server is charged for the requests it delayed (no coordinated
  omission). Three endpoints: bundles with re-ranking, bundles without
  (``rerank=false``), and the bare floor ``/v1/_bench/bare/{id}`` (one Redis GET in the same
  server).
* **Maximum throughput**: ``wrk`` (random resident per request, Lua) against the same
  endpoints and the strict floor ``/v1/_bench/bare-open/{id}`` (the same GET without the
  API-key check); ``ratio_to_bare_redis`` = re-ranked bundles req/s ÷ strict floor req/s
  (the issue's "bare FastAPI + redis-py GET endpoint"), ``ratio_to_bare_redis_auth`` = the
  same ÷ the authenticated floor.
* **Freshness**: a real consumer (``bouquet ingest``) runs; for each trial a resident with
  no recent events gets one event through ``POST /v1/events`` and the bundles endpoint is
  polled every 5 ms until the answer is re-ranked by it; time from the POST to that answer.

``--redis-cluster`` runs the same measurement against a three-primary Redis Cluster (the
code behind ``bouquet stack up --redis-cluster``), reported as ``serve-redis-cluster``;
Redis' CPU is then that of the three nodes.

The machine is shared: the load average before and after is in the notes; compare figures
within one run (ratios), not across runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.benchmarks.processes import load_note, service_env, start, stop, wait_ready
from bouquet.core.catalog import Catalog, load_catalog
from bouquet.core.keys import Keys
from bouquet.core.redisclient import primaries, redis_client
from bouquet.core.settings import Settings
from bouquet.localcluster import free_redis_url
from bouquet.localstack import LocalStack, ensure_topics, free_port

log = logging.getLogger(__name__)
APP_KEY = "bench-app-key"
RATES = (250, 1000, 2000)


# --- the keyspace --------------------------------------------------------------------------
def synthetic_model(catalog: Catalog, residents: int, factors: int = 64, seed: int = 0):
    """A factor model of realistic shape over ``catalog`` (see the module docstring)."""
    from bouquet.models.confidence import ConfidenceRule
    from bouquet.models.factor import FactorModel

    rng = np.random.default_rng(seed)
    sids, bids = list(catalog.service_ids), list(catalog.bundle_ids)
    domains = sorted({s.domain.value for s in catalog.services})
    base = {d: rng.normal(size=factors) for d in domains}
    services = np.stack([base[catalog.service_by_id[s].domain.value]
                         + 0.4 * rng.normal(size=factors) for s in sids])
    services = (services / np.sqrt(factors)).astype(np.float32)
    users = (rng.normal(size=(residents, factors)) / np.sqrt(factors)).astype(np.float32)
    index = {s: i for i, s in enumerate(sids)}
    members = {b: list(catalog.bundle_by_id[b].services) for b in bids}
    bundles = np.stack([services[[index[s] for s in members[b]]].mean(axis=0) for b in bids])
    n_nb = 1 + len(catalog.neighbourhood_ids)
    return FactorModel(
        service_ids=sids, bundle_ids=bids, bundle_services=members,
        neighbourhoods=list(catalog.neighbourhood_ids),
        rule=ConfidenceRule(dict(Settings().event_weights), half_life_days=30.0),
        popular_services=rng.random((n_nb, len(sids))),
        popular_bundles=rng.random((n_nb, len(bids))),
        resident_ids=np.array([f"r{i}" for i in range(residents)]),
        resident_neighbourhood=np.full(residents, -1, np.int16),
        meta={"model_kind": "synthetic"}, service_factors=services, bundle_factors=bundles,
        resident_factors=users, regularization=0.05)


def _resident_state(settings: Settings, catalog: Catalog, residents: int, seed: int) -> None:
    """Profiles (consent, neighbourhood, attributes) for all, recent events for 80 %."""
    rng = random.Random(seed)
    keys = Keys(settings.redis_key_prefix)
    client = redis_client(settings.redis_url)
    services = list(catalog.service_ids)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(residents):
        rid = f"r{i}"
        pipe.hset(keys.profile(rid), mapping={
            "consent": "1", "neighbourhood": rng.choice(catalog.neighbourhood_ids),
            "age_band": rng.choice(["18-25", "26-40", "41-64", "65+"]),
            "household": rng.choice(["single", "couple", "family", "shared"]),
            "student": "0", "low_income": "0"})
        if rng.random() < 0.8:
            pipe.lpush(keys.recent(rid), *[json.dumps({
                "event_id": f"seed-{i}-{j}", "type": rng.choice(["view", "click", "use"]),
                "ts": now - rng.random() * 86400, "channel": "app",
                "service_id": rng.choice(services)}) for j in range(5)])
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.close()


# --- the open-loop generator (runs in its own process) --------------------------------------
def _fixed_rate(port: int, paths: list[str], rate: float, seconds: float, connections: int,
                out: Any) -> None:
    """Send ``rate`` requests/s for ``seconds``; latency from each intended send time."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(_fixed_rate_async(port, paths, rate, seconds, connections)))


async def _fixed_rate_async(port: int, paths: list[str], rate: float, seconds: float,
                            connections: int) -> dict[str, Any]:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    requests = [(f"GET {p} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {APP_KEY}\r\n\r\n").encode()
                for p in paths]
    latencies: list[float] = []
    errors = {"status": 0, "network": 0}
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    total = int(rate * seconds)
    pending: set[asyncio.Task[None]] = set()

    async def one(intended: float, request: bytes) -> None:
        conn = await idle.get()
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                errors["status"] += 1
            latencies.append(clock() - intended)
        except (OSError, asyncio.IncompleteReadError, AttributeError):
            errors["network"] += 1
            writer.close()
            conn = await asyncio.open_connection("127.0.0.1", port)
        idle.put_nowait(conn)

    start = clock() + 0.05
    for i in range(total):
        intended = start + i / rate
        delay = intended - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(intended, requests[i % len(requests)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    achieved = len(latencies) / max(clock() - start, 1e-9)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"rate": rate, "sent": total, "ok": len(latencies) - errors["status"],
            "errors": errors["status"] + errors["network"] + (total - len(latencies)
                                                                - errors["network"]),
            "achieved_rps": achieved, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(np.max(ms))}


def fixed_rate(port: int, paths: list[str], rate: float, seconds: float,
               connections: int = 64) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_fixed_rate, args=(port, paths, rate, seconds, connections,
                                                 queue))
    proc.start()
    try:
        return queue.get(timeout=seconds + 120)
    finally:
        proc.join(timeout=30)


# --- maximum throughput with wrk ------------------------------------------------------------
_WRK_LUA = """
math.randomseed(%(seed)d)
request = function()
  local path = string.format("%(template)s", math.random(0, %(n)d - 1))
  return wrk.format("GET", path, {["X-API-Key"] = "%(key)s"})
end
"""


def _cpu_seconds(procs: list[Any]) -> float:
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def max_throughput(port: int, template: str, residents: int, seconds: float,
                   connections: int, workdir: Path, measured: list[Any]) -> dict[str, float]:
    """wrk at full speed; also the CPU seconds the server and Redis spent per request,
    which — unlike req/s — does not depend on how much CPU other work left us."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk, or `make bench`)")
    script = workdir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    script.write_text(_WRK_LUA % {"seed": 7, "template": template, "n": residents,
                                  "key": APP_KEY})
    cpu_before = _cpu_seconds(measured)
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency",
                          "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = _cpu_seconds(measured) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] \
        if p99 else float("nan")
    return {"rps": rps, "errors": errors, "p99_ms": p99_ms,
            "cpu_us_per_req": cpu / max(requests, 1) * 1e6}


# --- freshness -----------------------------------------------------------------------------
def freshness(base: str, catalog: Catalog, residents: list[str], trials: int,
              give_up_s: float = 10.0) -> list[float]:
    """POST one event for a resident with no recent events; time until an answer shows it."""
    import httpx

    out = []
    with httpx.Client(base_url=base, headers={"X-API-Key": APP_KEY}, timeout=10) as client:
        for i, rid in enumerate(residents[:trials]):
            assert not client.get(f"/v1/residents/{rid}/bundles").json()["reranked"]
            event = {"schema_version": 1, "event_id": f"fresh-{uuid.uuid4().hex}",
                     "resident_id": rid, "type": "use",
                     "service_id": catalog.service_ids[i % len(catalog.service_ids)],
                     "ts": datetime.now(UTC).isoformat(), "channel": "app"}
            began = time.perf_counter()
            sent = client.post("/v1/events", json=event)
            if sent.status_code != 202:
                raise RuntimeError(f"intake answered {sent.status_code}: {sent.text[:200]}")
            while True:
                if client.get(f"/v1/residents/{rid}/bundles").json()["reranked"]:
                    out.append((time.perf_counter() - began) * 1000)
                    break
                if time.perf_counter() - began > give_up_s:
                    out.append(float("inf"))
                    break
                time.sleep(0.005)
            time.sleep(0.05)
    return out


# --- the run -------------------------------------------------------------------------------
def run_benchmark(settings: Settings, *, residents: int = 50_000, duration: float = 10.0,
                  rates: tuple[int, ...] = RATES, wrk_seconds: float = 5.0,
                  wrk_rounds: int = 3, wrk_connections: int = 8, freshness_trials: int = 40,
                  keep_state: bool = False, redis_cluster: bool = False) -> BenchResult:
    result = BenchResult("serve-redis-cluster" if redis_cluster else "serve", params={
        "residents": residents, "duration_s": duration, "rates": list(rates),
        "wrk_seconds": wrk_seconds, "wrk_rounds": wrk_rounds,
        "wrk_connections": wrk_connections,
        "freshness_trials": freshness_trials, "workers": 2,
        "redis": "cluster of 3 primaries" if redis_cluster else "one server",
        "model": "synthetic factors "
        "(64 factors, demo city: 56 services, 24 bundles); no trained artifact in the "
        "benchmark's private store"})
    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix="bouquet-bench-serve-"))
    bench = Settings(env="test", state_dir=state,
                     kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                     redis_url=free_redis_url(redis_cluster), topic_partitions=2,
                     redis_key_prefix="bq:", catalog_path=settings.catalog_path)
    catalog = load_catalog(bench.catalog_path)
    stack = LocalStack(bench)
    server = consumer = None
    try:
        stack.up(timeout_s=60)
        ensure_topics(bench)
        from bouquet.pipelines.publish import Publisher

        log.info("publishing %d synthetic residents", residents)
        model = synthetic_model(catalog, residents)
        report = Publisher(bench, neighbourhoods=catalog.neighbourhood_ids).publish(
            model, model_version="v1", run_id="bench", progress=False)
        result.add("publish_s", report.seconds, "s")
        result.add("publish_residents_per_s", residents / report.seconds, "residents/s")
        result.add("bytes_per_resident", report.bytes_written / residents, "bytes")
        fresh_count = max(freshness_trials + 1, 2)
        _resident_state(bench, catalog, residents - fresh_count, seed=1)
        fresh = [f"r{i}" for i in range(residents - fresh_count, residents)]
        client = redis_client(bench.redis_url)
        keys = Keys(bench.redis_key_prefix)
        pipe = client.pipeline(transaction=False)
        for rid in fresh:  # consenting, no recent events yet
            pipe.hset(keys.profile(rid), mapping={"consent": "1", "neighbourhood": "centre"})
        pipe.execute()
        used = sum(node.info("memory")["used_memory"] for node in primaries(client))
        result.add("redis_used_memory_mb", used / 2**20, "MB")
        client.close()

        port = free_port()
        env = service_env(bench, APP_KEY, BOUQUET_SERVING_BENCH_ENDPOINTS="true",
                          BOUQUET_INGEST_SESSION_TIMEOUT_MS="6000",
                          BOUQUET_INGEST_HEARTBEAT_INTERVAL_MS="1000")
        server = start([sys.executable, "-m", "bouquet", "serve", "--workers", "2",
                        "--port", str(port)], env, state / "server.log")
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, server)
        time.sleep(1.0)

        rng = random.Random(3)
        sample = [f"r{rng.randrange(residents - fresh_count)}" for _ in range(5000)]
        endpoints = {
            "rerank": [f"/v1/residents/{r}/bundles?k=10" for r in sample],
            "norerank": [f"/v1/residents/{r}/bundles?k=10&rerank=false" for r in sample],
            "bare": [f"/v1/_bench/bare/{r}" for r in sample],
        }
        errors = 0
        fixed_rate(port, endpoints["rerank"], 200, 2.0)  # warm-up
        for rate in rates:
            for name, paths in endpoints.items():
                stats = fixed_rate(port, paths, rate, duration)
                log.info("%s @ %d req/s: %s", name, rate, stats)
                suffix = "" if name == "rerank" else f"_{name}"
                for q in ("p50", "p95", "p99"):
                    result.add(f"{q}_ms@{rate}rps{suffix}", stats[f"{q}_ms"], "ms")
                result.add(f"achieved_rps@{rate}rps{suffix}", stats["achieved_rps"], "req/s")
                errors += stats["errors"]
        # Rounds alternate the endpoints so that a burst of other work on this shared
        # machine does not land on one of them only; the best round of each is kept.
        wrk: dict[str, dict[str, float]] = {}
        templates = {"rerank": "/v1/residents/r%d/bundles?k=10",
                     "norerank": "/v1/residents/r%d/bundles?k=10&rerank=false",
                     "bare": "/v1/_bench/bare-open/r%d",
                     "bare_auth": "/v1/_bench/bare/r%d"}
        import psutil

        server_proc = psutil.Process(server.pid)
        measured = [server_proc, *server_proc.children(recursive=True)]
        measured += stack.redis_processes()
        cpu: dict[str, list[float]] = {name: [] for name in templates}
        for round_ in range(wrk_rounds):
            order = list(templates) if round_ % 2 == 0 else list(reversed(templates))
            for name in order:
                got = max_throughput(port, templates[name], residents - fresh_count,
                                     wrk_seconds, wrk_connections, state, measured)
                cpu[name].append(got["cpu_us_per_req"])
                log.info("wrk round %d %s: %s", round_, name, got)
                errors += got["errors"]
                if name not in wrk or got["rps"] > wrk[name]["rps"]:
                    wrk[name] = got
        result.add("max_rps", wrk["rerank"]["rps"], "req/s")
        result.add("max_rps_norerank", wrk["norerank"]["rps"], "req/s")
        result.add("max_rps_bare_redis", wrk["bare"]["rps"], "req/s")
        result.add("ratio_to_bare_redis", wrk["rerank"]["rps"] / wrk["bare"]["rps"], "ratio")
        result.add("ratio_norerank_to_bare_redis", wrk["norerank"]["rps"] / wrk["bare"]["rps"],
                   "ratio")
        result.add("max_rps_bare_redis_auth", wrk["bare_auth"]["rps"], "req/s")
        result.add("ratio_to_bare_redis_auth", wrk["rerank"]["rps"] / wrk["bare_auth"]["rps"],
                   "ratio")
        median = {name: float(np.median(values)) for name, values in cpu.items()}
        for name, value in median.items():
            suffix = "" if name == "rerank" else f"_{name}"
            result.add(f"cpu_us_per_req{suffix}", value, "µs (server + Redis)")
        # Capacity ratio from CPU cost: robust when other work takes CPU from the run.
        result.add("cpu_ratio_to_bare_redis", median["bare"] / median["rerank"], "ratio")

        if freshness_trials:
            consumer = start([sys.executable, "-m", "bouquet", "ingest"], env,
                            state / "consumer.log")
            # The first resident warms the path up (group join, first batch): not measured.
            warm = freshness(base, catalog, fresh[:1], 1, give_up_s=90)
            log.info("consumer ready after %.0f ms", warm[0])
            times = freshness(base, catalog, fresh[1:], freshness_trials)
            result.add("freshness_p50_ms", float(np.percentile(times, 50)), "ms")
            result.add("freshness_p95_ms", float(np.percentile(times, 95)), "ms")
            result.add("freshness_max_ms", float(np.max(times)), "ms")
        result.add("errors", errors, "count")
    finally:
        stop(consumer)
        stop(server)
        stack.down()
        if not keep_state:
            shutil.rmtree(state, ignore_errors=True)
    result.notes.append(load_note(load_before,
                                  "server, Redis, broker, load generator, wrk and other work"))
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark(settings)


def DEFAULT_REDIS_CLUSTER(settings: Settings) -> BenchResult:  # noqa: N802 - as DEFAULT
    return run_benchmark(settings, redis_cluster=True)


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("serve")
    def serve_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        residents: int = typer.Option(50_000, help="Residents in the published keyspace."),
        duration: float = typer.Option(10.0, help="Seconds per fixed rate and endpoint."),
        rates: str = typer.Option(",".join(map(str, RATES)), help="Fixed rates, req/s."),
        wrk_seconds: float = typer.Option(5.0, help="Seconds of each wrk run."),
        wrk_rounds: int = typer.Option(3, help="Alternating wrk rounds (best kept)."),
        wrk_connections: int = typer.Option(8, help="wrk connections."),
        freshness_trials: int = typer.Option(40, help="POST → changed answer trials."),
        redis_cluster: bool = typer.Option(False, "--redis-cluster", help="Start a "
                                           "three-primary Redis Cluster, not one Redis."),
    ) -> None:
        """Serving latency at fixed rates, max throughput vs a bare Redis GET, freshness."""
        from bouquet.core.settings import get_settings

        result = run_benchmark(get_settings(), residents=residents, duration=duration,
                               rates=tuple(int(r) for r in rates.split(",")),
                               wrk_seconds=wrk_seconds, wrk_rounds=wrk_rounds,
                               wrk_connections=wrk_connections,
                               freshness_trials=freshness_trials,
                               redis_cluster=redis_cluster)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
            typer.echo(f"wrote {json_path}")
