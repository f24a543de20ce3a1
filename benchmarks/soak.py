"""``bouquet bench soak`` and ``bouquet bench kill-replay``: proof under time and under crashes.

**soak** — minutes of steady load on a whole deployment of its own (broker, Redis with its
AOF, a 2-worker ``bouquet serve``, a ``bouquet ingest`` consumer, all as separate processes,
on free ports): an open-loop generator (its own process) asks for bundles at a fixed rate
and, at the same time, sends events through ``POST /v1/events`` at a fixed rate. Every
``--window`` seconds it reports, per window: requests, errors, p50/p95/p99/max latency
measured from each request's *intended* send time (a stalled server is charged for what it
delayed), degraded answers; and the resident memory (RSS) and CPU (cores used) of every
process — server master and workers, consumer, Redis, broker: on two shared cores a latency
that creeps up is read against who took the CPU meanwhile. At the end it waits for the
consumer to drain and checks that **every event acknowledged with 202 is in the event log**
(nothing lost) and that nothing was dead-lettered. ``--redis-restart-at S`` SIGKILLs Redis S
seconds in and restarts it from its AOF (answers degrade, nothing is lost).

**kill-replay** — a synthetic stream (default 200,000 events: profiles, consent, contacts,
re-sends, erasures) is ingested twice from the same topic: once cleanly, once by a
``bouquet ingest`` process SIGKILLed at random moments (up to 30 times, each after it
wrote at least one batch), then restarted until idle. The two event logs (as
``read_events`` returns them) and the two Redis states (every key, markers included) must
be equal.

Both start their own services in a temporary directory and remove it afterwards.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import typer

from bouquet.benchmarks.harness import BenchResult, print_result, write_json
from bouquet.benchmarks.processes import load_note, service_env, start, stop, wait_ready
from bouquet.core.catalog import Catalog, load_catalog
from bouquet.core.keys import Keys
from bouquet.core.redisdump import read_keys, scan_keys
from bouquet.core.settings import Settings
from bouquet.localstack import LocalStack, ensure_topics, free_port

log = logging.getLogger(__name__)
APP_KEY = "soak-app-key"


# --- shared plumbing -------------------------------------------------------------------------
def _deployment(prefix: str, **more: Any) -> tuple[Settings, LocalStack, Path]:
    state = Path(tempfile.mkdtemp(prefix=f"bouquet-{prefix}-"))
    settings = Settings(env="test", state_dir=state,
                        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                        redis_url=f"redis://127.0.0.1:{free_port()}/0", topic_partitions=2,
                        **more)
    return settings, LocalStack(settings), state



# --- soak: the load generator (its own process) ---------------------------------------------
def _generator(port: int, residents: int, services: list[str], rate: float, event_rate: float,
               batch: int, seconds: float, window_s: float, seed: int, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(_generate(port, residents, services, rate, event_rate, batch, seconds,
                                  window_s, seed)))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body


async def _generate(port: int, residents: int, services: list[str], rate: float,
                    event_rate: float, batch: int, seconds: float, window_s: float,
                    seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = time.perf_counter
    windows: dict[int, dict[str, Any]] = {}
    acked: list[str] = []
    refused: list[str] = []

    def window(intended: float) -> dict[str, Any]:
        index = int((intended - start) // window_s)
        return windows.setdefault(index, {"get": [], "post": [], "get_errors": 0,
                                          "post_errors": 0, "post_503": 0, "degraded": 0})

    async def pool(n: int) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(n):
            queue.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        return queue

    gets, posts = await pool(32), await pool(8)

    async def call(conns: asyncio.Queue[Any], request: bytes) -> tuple[int, bytes]:
        reader, writer = await conns.get()
        try:
            writer.write(request)
            found = await asyncio.wait_for(_read_response(reader), timeout=30)
            conns.put_nowait((reader, writer))
            return found
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            writer.close()
            conns.put_nowait(await asyncio.open_connection("127.0.0.1", port))
            return 0, b""

    async def get(intended: float) -> None:
        rid = f"r{rng.randrange(residents)}"
        request = (f"GET /v1/residents/{rid}/bundles?k=10 HTTP/1.1\r\nHost: soak\r\n"
                   f"X-API-Key: {APP_KEY}\r\n\r\n").encode()
        status, body = await call(gets, request)
        w = window(intended)
        if status != 200:
            w["get_errors"] += 1
            return
        w["get"].append(clock() - intended)
        if b'"notice":"degraded' in body:
            w["degraded"] += 1

    async def post(intended: float) -> None:
        now = datetime.now(UTC).isoformat()
        events = [{"schema_version": 1, "event_id": f"soak-{uuid.uuid4().hex}",
                   "resident_id": f"r{rng.randrange(residents)}",
                   "type": rng.choice(("view", "view", "click", "use")),
                   "service_id": rng.choice(services), "ts": now, "channel": "app"}
                  for _ in range(batch)]
        body = json.dumps(events).encode()
        request = (f"POST /v1/events HTTP/1.1\r\nHost: soak\r\nX-API-Key: {APP_KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   ).encode() + body
        status, _ = await call(posts, request)
        w = window(intended)
        ids = [e["event_id"] for e in events]
        if status == 202:
            w["post"].append(clock() - intended)
            acked.extend(ids)
        elif status == 503:  # broker unavailable: the client would retry later
            w["post_503"] += 1
            refused.extend(ids)
        else:
            w["post_errors"] += 1
            refused.extend(ids)

    async def flow(rate_: float, action: Any) -> None:
        if rate_ <= 0:
            return
        pending: set[asyncio.Task[None]] = set()
        for i in range(int(rate_ * seconds)):
            intended = start + i / rate_
            delay = intended - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(action(intended))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=60)

    start = clock() + 0.1
    await asyncio.gather(flow(rate, get), flow(event_rate / batch, post))
    rows = []
    for index in sorted(windows):
        w = windows[index]
        ms = np.array(w["get"]) * 1000 if w["get"] else np.array([np.nan])
        pms = np.array(w["post"]) * 1000 if w["post"] else np.array([np.nan])
        rows.append({"t_s": round((index + 1) * window_s, 1), "gets": len(w["get"]),
                     "get_errors": w["get_errors"], "degraded": w["degraded"],
                     "p50_ms": float(np.percentile(ms, 50)),
                     "p95_ms": float(np.percentile(ms, 95)),
                     "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(np.max(ms)),
                     "posts": len(w["post"]), "post_errors": w["post_errors"],
                     "post_503": w["post_503"], "post_p99_ms": float(np.percentile(pms, 99))})
    every = np.array([x for w in windows.values() for x in w["get"]]) * 1000
    post_all = np.array([x for w in windows.values() for x in w["post"]]) * 1000
    return {"windows": rows, "acked": acked, "refused": refused,
            "get_p50_ms": float(np.percentile(every, 50)) if len(every) else None,
            "get_p99_ms": float(np.percentile(every, 99)) if len(every) else None,
            "get_max_ms": float(np.max(every)) if len(every) else None,
            "post_p99_ms": float(np.percentile(post_all, 99)) if len(post_all) else None,
            "gets": int(len(every)), "elapsed_s": clock() - start}


# --- soak: the run ---------------------------------------------------------------------------
def _seed_residents(settings: Settings, catalog: Catalog, residents: int) -> None:
    """Profiles (consent, neighbourhood) for every published resident."""
    import redis

    rng = random.Random(5)
    keys = Keys(settings.redis_key_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    for i in range(residents):
        pipe.hset(keys.profile(f"r{i}"), mapping={
            "consent": "1" if rng.random() < 0.8 else "0",
            "neighbourhood": rng.choice(catalog.neighbourhood_ids)})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    client.close()


class Reading(NamedTuple):
    """One process at one instant. The pid tells a restarted service (``--redis-restart-at``)
    from the process it replaced, whose CPU seconds do not continue its count."""

    pid: int
    rss_mb: float
    cpu_s: float  # user + system, since the process started


def _read(processes: dict[str, Any]) -> dict[str, Reading | None]:
    """Every process's reading now; None for one that is gone."""
    out: dict[str, Reading | None] = {}
    for name, proc in processes.items():
        try:
            cpu = proc.cpu_times()
            out[name] = Reading(proc.pid, proc.memory_info().rss / 2**20, cpu.user + cpu.system)
        except Exception:  # psutil.NoSuchProcess / AccessDenied: the process is gone
            out[name] = None
    return out


def cores_used(ts: list[float], readings: list[Reading | None], since: float,
               until: float) -> float | None:
    """Mean cores a process used between the samples nearest ``since`` and ``until``
    (CPU seconds over wall seconds); None when either sample is missing or they are of
    two processes (a restart in between)."""
    i = min(range(len(ts)), key=lambda k: abs(ts[k] - since))
    j = min(range(len(ts)), key=lambda k: abs(ts[k] - until))
    first, last = readings[i], readings[j]
    if j <= i or first is None or last is None or first.pid != last.pid:
        return None
    return (last.cpu_s - first.cpu_s) / (ts[j] - ts[i])


def _slope(ts: list[float], values: list[float]) -> float | None:
    """MB per minute, least squares over the samples."""
    pairs = [(t, v) for t, v in zip(ts, values, strict=True) if v is not None]
    if len(pairs) < 3:
        return None
    t = np.array([p[0] for p in pairs]) / 60
    v = np.array([p[1] for p in pairs])
    return float(np.polyfit(t, v, 1)[0])


def run_soak(settings: Settings, *, minutes: float = 5.0, rate: float = 200.0,
             event_rate: float = 200.0, batch: int = 10, residents: int = 20_000,
             window_s: float = 10.0, redis_restart_at: float | None = None,
             timeline_path: Path | None = None) -> BenchResult:
    """Steady load on a private deployment (see the module docstring)."""
    import psutil
    import redis

    from bouquet.benchmarks.serve import synthetic_model
    from bouquet.core.eventlog import read_events
    from bouquet.pipelines.publish import Publisher

    seconds = minutes * 60
    result = BenchResult("soak", params={
        "minutes": minutes, "get_rate_rps": rate, "event_rate_per_s": event_rate,
        "events_per_post": batch, "residents": residents, "window_s": window_s,
        "workers": 2, "redis_restart_at_s": redis_restart_at})
    load_before = os.getloadavg()
    bench, stack, state = _deployment("soak", catalog_path=settings.catalog_path)
    catalog = load_catalog(bench.catalog_path)
    server = consumer = None
    try:
        stack.up(timeout_s=60)
        ensure_topics(bench)
        Publisher(bench, neighbourhoods=catalog.neighbourhood_ids).publish(
            synthetic_model(catalog, residents, factors=32), model_version="v1", run_id="soak")
        _seed_residents(bench, catalog, residents)
        port = free_port()
        env = service_env(bench, APP_KEY)
        server = start([sys.executable, "-m", "bouquet", "serve", "--workers", "2", "--port",
                        str(port)], env, state / "server.log")
        consumer = start([sys.executable, "-m", "bouquet", "ingest", "--log-every", "30"],
                         env, state / "consumer.log")
        wait_ready(f"http://127.0.0.1:{port}", server)
        time.sleep(2.0)
        server_proc = psutil.Process(server.pid)
        processes = {"server_master": server_proc}
        workers = 0
        for child in sorted(server_proc.children(recursive=True), key=lambda p: p.pid):
            if "resource_tracker" in " ".join(child.cmdline()):
                processes["server_resource_tracker"] = child
            else:
                processes[f"server_worker_{workers}"] = child
                workers += 1
        processes["consumer"] = psutil.Process(consumer.pid)
        for name in ("redis", "kafka"):
            found = stack.managed_process(name)
            if found is not None:
                processes["broker" if name == "kafka" else "redis"] = found

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        generator = ctx.Process(target=_generator, args=(
            port, residents, list(catalog.service_ids), rate, event_rate, batch, seconds,
            window_s, 11, queue))
        started = time.monotonic()
        generator.start()
        samples: list[tuple[float, dict[str, Reading | None]]] = []
        restarted = False
        outcome = None
        while outcome is None:
            elapsed = time.monotonic() - started
            samples.append((elapsed, _read(processes)))
            if redis_restart_at is not None and not restarted and elapsed >= redis_restart_at:
                log.info("SIGKILL Redis at %.0f s, restarting it from its AOF", elapsed)
                redis_proc = stack.managed_process("redis")
                if redis_proc is not None:
                    redis_proc.kill()
                    redis_proc.wait(10)
                time.sleep(1.0)
                stack.up(timeout_s=60)
                found = stack.managed_process("redis")
                if found is not None:
                    processes["redis"] = found
                restarted = True
            try:
                outcome = queue.get(timeout=window_s)
            except Exception:  # queue.Empty: the generator is still running
                if not generator.is_alive() and queue.empty():
                    raise RuntimeError("the load generator died") from None
        generator.join(timeout=30)
        samples.append((time.monotonic() - started, _read(processes)))

        # nothing lost: every acknowledged event reaches the log (consumer drains)
        acked = set(outcome["acked"])
        deadline = time.monotonic() + 120
        logged: set[str] = set()
        while time.monotonic() < deadline:
            frame = read_events(bench.event_log_path, columns=["event_id", "ts"])
            logged = set(frame["event_id"])
            if acked <= logged:
                break
            time.sleep(2.0)
        client = redis.Redis.from_url(bench.redis_url)
        dead = {k.decode(): int(v) for k, v in
                client.hgetall(Keys(bench.redis_key_prefix).dlq_counts()).items()}
        client.close()

        windows = outcome["windows"]
        get_errors = sum(w["get_errors"] for w in windows)
        post_errors = sum(w["post_errors"] for w in windows)
        result.add("get_requests", outcome["gets"] + get_errors, "count")
        result.add("get_achieved_rps", outcome["gets"] / max(outcome["elapsed_s"], 1e-9),
                   "req/s")
        result.add("get_p50_ms", outcome["get_p50_ms"], "ms")
        result.add("get_p99_ms", outcome["get_p99_ms"], "ms")
        result.add("get_max_ms", outcome["get_max_ms"], "ms")
        p99s = [w["p99_ms"] for w in windows if w["gets"]]
        result.add("get_p99_ms_first_window", p99s[0] if p99s else None, "ms")
        result.add("get_p99_ms_last_window", p99s[-1] if p99s else None, "ms")
        result.add("get_p99_ms_worst_window", max(p99s) if p99s else None, "ms")
        result.add("get_p99_ms_median_window", float(np.median(p99s)) if p99s else None, "ms")
        result.add("post_p99_ms", outcome["post_p99_ms"], "ms")
        result.add("errors", get_errors + post_errors, "count")
        result.add("degraded_answers", sum(w["degraded"] for w in windows), "count")
        result.add("post_503", sum(w["post_503"] for w in windows), "count")
        result.add("events_acknowledged", len(acked), "count")
        result.add("events_lost", len(acked - logged), "count")
        result.add("dead_letters", sum(dead.values()), "count")
        names = list(processes)
        times = [t for t, _ in samples]
        readings = {name: [s.get(name) for _, s in samples] for name in names}
        minute = min(60.0, times[-1] / 2)
        for name in names:
            series = [r.rss_mb if r else None for r in readings[name]]
            present = [v for v in series if v is not None]
            if not present:
                continue
            result.add(f"rss_start_mb_{name}", present[0], "MB")
            result.add(f"rss_end_mb_{name}", present[-1], "MB")
            result.add(f"rss_growth_mb_{name}", present[-1] - present[0], "MB")
            result.add(f"rss_slope_mb_per_min_{name}", _slope(times, series), "MB/min")
            result.add(f"cpu_cores_first_minute_{name}",
                       cores_used(times, readings[name], 0.0, minute), "cores")
            result.add(f"cpu_cores_last_minute_{name}",
                       cores_used(times, readings[name], times[-1] - minute, times[-1]),
                       "cores")
        if timeline_path is not None:
            timeline_path.parent.mkdir(parents=True, exist_ok=True)
            with open(timeline_path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow([*(windows[0].keys() if windows else ["t_s"]),
                                 *[f"rss_mb_{n}" for n in names],
                                 *[f"cpu_cores_{n}" for n in names]])
                for w in windows:
                    nearest = min(samples, key=lambda s: abs(s[0] - w["t_s"]))[1]
                    window_cores = [cores_used(times, readings[n], w["t_s"] - window_s,
                                               w["t_s"]) for n in names]
                    writer.writerow([f"{v:.2f}" if isinstance(v, float) else v
                                     for v in w.values()]
                                    + [f"{r.rss_mb if (r := nearest.get(n)) else 0:.1f}"
                                       for n in names]
                                    + ["" if c is None else f"{c:.2f}" for c in window_cores])
            result.notes.append(f"timeline (per window, with RSS and CPU) in {timeline_path}")
        result.notes.append("p99 per window: " + ", ".join(
            f"{w['t_s']:.0f}s {w['p99_ms']:.1f}" for w in windows))
    finally:
        stop(consumer)
        stop(server)
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    result.notes.append(load_note(load_before))
    return result



# --- kill-replay -----------------------------------------------------------------------------
def _dump(client: Any, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` (prefix stripped) with its value, in a comparable form."""
    out: dict[str, Any] = {}
    for key, kind, raw in read_keys(client, scan_keys(client, f"{prefix}*")):
        if kind == "set":
            value: Any = sorted(raw)
            if key.endswith("{eng}:active:index"):  # members are full key names
                value = sorted(m.decode()[len(prefix):] for m in raw)
        elif kind == "hash":
            value = sorted(raw.items())
        else:
            value = raw
        out[key[len(prefix):]] = value
    return out


def _canonical_log(root: Path) -> Any:
    from bouquet.core.eventlog import COLUMNS, read_events

    compared = [c for c in COLUMNS if c != "ingested_at"]
    frame = read_events(root, columns=compared)
    return frame.sort_values("event_id").reset_index(drop=True)


def run_kill_replay(settings: Settings, *, events: int = 200_000, kills: int = 30,
                    residents: int = 20_000, seed: int = 21) -> BenchResult:
    """Ingest one stream cleanly and under repeated SIGKILLs; compare log and Redis."""
    import pandas as pd
    import pyarrow.compute as pc
    import redis

    from bouquet.core.eventlog import EventLog, read_table
    from bouquet.streaming.producer import EventProducer
    from bouquet.streaming.synthetic import StreamSpec, encode, stream

    result = BenchResult("kill-replay", params={"events": events, "kills": kills,
                                                "residents": residents, "seed": seed})
    load_before = os.getloadavg()
    base, stack, state = _deployment("kill-replay", catalog_path=settings.catalog_path)
    catalog = load_catalog(base.catalog_path)
    rng = random.Random(seed)
    # each run its own state directory: the erasure register the CLI's hooks write there
    # must not tell the second run about the first run's erasures
    clean = base.model_copy(update={"consumer_group": "clean", "redis_key_prefix": "clean:",
                                    "event_log_dir": state / "clean-log",
                                    "state_dir": state / "clean-state"})
    crashy = base.model_copy(update={"consumer_group": "crashy", "redis_key_prefix": "crash:",
                                     "event_log_dir": state / "crash-log",
                                     "state_dir": state / "crash-state"})
    running: subprocess.Popen[bytes] | None = None
    try:
        stack.up(timeout_s=60)
        ensure_topics(base)
        log.info("producing %d events", events)
        with EventProducer(base, throughput=True) as producer:
            for event in stream(catalog, StreamSpec(events=events, residents=residents,
                                                    seed=seed)):
                key, value = encode(event)
                producer.send_raw(value, key=key)
            producer.flush(120)

        def ingest(target: Settings, *args: str, batch: int = 5000) -> subprocess.Popen[bytes]:
            env = service_env(target, APP_KEY, BOUQUET_INGEST_SESSION_TIMEOUT_MS="3000",
                              BOUQUET_INGEST_HEARTBEAT_INTERVAL_MS="500")
            return start([sys.executable, "-m", "bouquet", "ingest", "--log-every", "5",
                          "--batch-max-events", str(batch), *args], env,
                         state / f"{target.consumer_group}.log")

        began = time.monotonic()
        running = ingest(clean, "--until-idle", "--idle-seconds", "3")
        if running.wait(timeout=900) != 0:
            raise RuntimeError("the clean run failed (see its log)")
        running = None
        result.add("clean_run_s", time.monotonic() - began, "s")

        def unique_logged(target: Settings) -> int:
            return len(pc.unique(read_table(target.event_log_path,
                                            columns=["event_id"])["event_id"]))

        everything = unique_logged(clean)
        crash_log = EventLog(crashy.event_log_path)
        positions = []
        began = time.monotonic()
        for n in range(kills):
            if unique_logged(crashy) >= everything:
                break  # the replay is complete: a further kill would hit an idle consumer
            files = len(crash_log.files())
            running = ingest(crashy, batch=rng.choice((500, 1000, 2000)))
            deadline = time.monotonic() + 120
            while len(crash_log.files()) <= files:  # wait until it wrote a batch
                if running.poll() is not None:
                    raise RuntimeError(f"run {n} exited on its own (see its log)")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {n} wrote nothing in 120 s")
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=10)
            running = None
            done = unique_logged(crashy)
            positions.append(done)
            log.info("kill %d/%d with %d of %d events in the log", n + 1, kills, done,
                     everything)
        running = ingest(crashy, "--until-idle", "--idle-seconds", "3")
        if running.wait(timeout=900) != 0:
            raise RuntimeError("the final run failed (see its log)")
        running = None
        result.add("crash_runs_s", time.monotonic() - began, "s")

        clean_log = _canonical_log(clean.event_log_path)
        crash_log_frame = _canonical_log(crashy.event_log_path)
        try:
            pd.testing.assert_frame_equal(clean_log, crash_log_frame, check_dtype=False)
            logs_equal = True
        except AssertionError as exc:
            logs_equal = False
            result.notes.append(f"event logs differ: {str(exc)[:300]}")
        client = redis.Redis.from_url(base.redis_url)
        clean_state = _dump(client, clean.redis_key_prefix)
        crash_state = _dump(client, crashy.redis_key_prefix)
        client.close()
        differing = sorted(k for k in set(clean_state) | set(crash_state)
                           if clean_state.get(k) != crash_state.get(k))
        if differing:
            result.notes.append(f"{len(differing)} Redis keys differ, e.g. {differing[:5]}")
        raw_rows = read_table(crashy.event_log_path, columns=["event_id"]).num_rows
        result.add("events_produced", events, "count")
        result.add("events_distinct", everything, "count")
        result.add("events_visible", len(clean_log), "count")
        result.add("kills", len(positions), "count")
        result.add("crash_run_raw_rows", raw_rows, "rows")
        result.add("logs_equal", float(logs_equal), "bool")
        result.add("redis_keys_compared", len(clean_state), "count")
        result.add("redis_keys_differing", len(differing), "count")
        result.add("redis_equal", float(not differing), "bool")
        result.notes.append("distinct events in the log at each kill: "
                            + ", ".join(map(str, positions)))
    finally:
        if running is not None and running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=10)
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    result.notes.append(load_note(load_before))
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    """``bench all``: a two-minute soak (``make soak`` runs the long one and kill-replay)."""
    return run_soak(settings, minutes=2.0)


def register(bench_app: typer.Typer) -> None:
    from bouquet.core.settings import get_settings

    @bench_app.command("soak")
    def soak_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here "
                                              "(and the timeline as <name>-timeline.csv)."),
        minutes: float = typer.Option(5.0, min=0.2, help="How long the load lasts."),
        rate: float = typer.Option(200.0, help="Recommendation requests per second."),
        event_rate: float = typer.Option(200.0, help="Events per second via POST /v1/events."),
        batch: int = typer.Option(10, min=1, help="Events per POST."),
        residents: int = typer.Option(20_000, help="Residents published and asked for."),
        window: float = typer.Option(10.0, help="Seconds per reported window."),
        redis_restart_at: float = typer.Option(None, help="SIGKILL and restart Redis this "
                                               "many seconds in."),
    ) -> None:
        """Minutes of steady load with concurrent ingestion: p99 over time, errors, memory
        of every process, nothing lost."""
        timeline = json_path.with_name(json_path.stem + "-timeline.csv") if json_path else None
        result = run_soak(get_settings(), minutes=minutes, rate=rate, event_rate=event_rate,
                          batch=batch, residents=residents, window_s=window,
                          redis_restart_at=redis_restart_at, timeline_path=timeline)
        print_result(result)
        if json_path:
            write_json(result, json_path)

    @bench_app.command("kill-replay")
    def kill_replay_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        events: int = typer.Option(200_000, help="Events in the replayed stream."),
        kills: int = typer.Option(30, help="SIGKILLs of the consumer (at most; none once "
                                  "the replay is complete)."),
        residents: int = typer.Option(20_000, help="Residents in the stream."),
        seed: int = typer.Option(21, help="Stream and kill-time seed."),
    ) -> None:
        """Ingest a stream cleanly and under repeated SIGKILLs; the logs and Redis states must
        be equal."""
        result = run_kill_replay(get_settings(), events=events, kills=kills,
                                 residents=residents, seed=seed)
        print_result(result)
        if json_path:
            write_json(result, json_path)
