"""``bouquet bench outreach``: how long a day's plan takes for a big city, and its memory.

A throw-away deployment (its own Redis on a free port, a temporary state folder) is filled
by a **separate process**, so that this process's peak memory is the planner's alone:

* an event log of ``--history-days`` days of a heavy-tailed city
  (:mod:`bouquet.analytics.synthetic`, ~16 events per resident over 90 days), plus the
  outcomes of earlier nudges (delivered, opened, converted) for a fifth of the residents,
  with outreach recommendation ids, so that the cells' posteriors have data;
* Redis as ingestion and publish leave it: every resident's profile (contact consent for
  all — the worst case: everyone is a candidate —, personalisation consent for 60 %,
  neighbourhood, channels for 70 %, custom quiet hours for 10 %), the contactable set,
  holdings and dismissals for some, a published version (meta, popular lists, and a
  precomputed list of 50 bundles and 50 services for each consenting resident), and the
  planner's records of the residents nudged before (so that caps and the gap bind).

Then one plan of the next day is timed: ``plan_s`` is what ``bouquet outreach plan`` does
before delivery — read the residents (Redis), read the history (event log), decide, and
record (the ledger file, the residents' records) — and ``messages_s`` builds the messages
(JSON) the delivery would send; the Kafka produce itself is not in it (it is the broker's
throughput, measured by ``bench ingest``). ``plan_cpu_s`` is this process's CPU time
during the plan and ``plan_redis_cpu_s`` the Redis server's (``INFO cpu``); the rest of
``plan_s`` is waiting, for the other side or for a CPU of a shared machine.
``peak_rss_mb`` is this process's peak. The machine's load average before and after is in
the notes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import typer

from bouquet.benchmarks.harness import BenchResult, peak_rss_mb, print_result, write_json
from bouquet.benchmarks.processes import load_note
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)
FULL_RESIDENTS = 1_000_000
DEFAULT_RESIDENTS = 100_000


def _bench_settings(state: Path, redis_url: str, key_prefix: str = "bq:") -> Settings:
    return Settings(env="test", state_dir=state, redis_url=redis_url,
                    redis_key_prefix=key_prefix, kafka_bootstrap_servers="127.0.0.1:1")


def fill(state: str, redis_url: str, residents: int, history_days: int, seed: int,
         key_prefix: str = "bq:") -> dict[str, Any]:
    """Build the deployment (runs in a child process; see the module docstring; tests
    fill a small city under their own ``key_prefix``)."""
    import json

    import pyarrow as pa
    import redis

    from bouquet.analytics.synthetic import SyntheticSpec, generate
    from bouquet.core.catalog import load_catalog
    from bouquet.core.eventlog import EventLog
    from bouquet.core.keys import Keys
    from bouquet.core.outreach import OUTREACH_VARIANT, ResidentRecord
    from bouquet.core.recommendation import RecommendationIds
    from bouquet.models.online import Audience, pack_list, pack_rows

    started = time.perf_counter()
    settings = _bench_settings(Path(state), redis_url, key_prefix)
    catalog = load_catalog(None)
    rng = np.random.default_rng(seed)
    today = datetime.now(UTC).date()
    log_root = settings.event_log_path
    table = generate(catalog, SyntheticSpec(residents=residents, days=history_days,
                                            end=today - timedelta(days=1), seed=seed))
    events = table.num_rows
    EventLog(log_root, writer_id="bench").append(table)
    del table
    ids = np.array([f"s{seed}r{i}" for i in range(residents)], dtype=object)
    nb_ids = list(catalog.neighbourhood_ids)
    neighbourhood = np.array(nb_ids, dtype=object)[rng.zipf(1.4, residents) % len(nb_ids)]

    # earlier nudges of a fifth of the residents, and their outcomes in the log
    nudged = rng.choice(residents, residents // 5, replace=False)
    n = len(nudged)
    sent = datetime.now(UTC).timestamp() - rng.uniform(1, 20, n) * 86400
    offers = np.array([*catalog.bundle_ids, *catalog.service_ids], dtype=object)
    offer = rng.integers(0, len(offers), n)
    is_bundle = offer < len(catalog.bundle_ids)
    channel = np.array(["push", "email", "sms"], dtype=object)[rng.integers(0, 3, n)]
    minter = RecommendationIds.for_settings(settings)
    refs = np.array([minter.mint("v1", OUTREACH_VARIANT, nonce=i) for i in range(n)],
                    dtype=object)
    opened = rng.random(n) < 0.25
    converted = opened & (rng.random(n) < 0.3)
    rows: dict[str, list[Any]] = {k: [] for k in ("event_id", "resident_id", "type",
                                                  "service_id", "bundle_id", "ts", "channel",
                                                  "recommendation_id")}
    for kind, mask, delay in (("notify", np.ones(n, bool), 0), ("open", opened, 3600),
                              ("use", converted, 7200)):
        pick = np.flatnonzero(mask)
        rows["event_id"] += [f"bo-{kind}-{i}" for i in pick]
        rows["resident_id"] += ids[nudged[pick]].tolist()
        rows["type"] += [kind] * len(pick)
        rows["service_id"] += [None if is_bundle[i] else offers[offer[i]] for i in pick]
        rows["bundle_id"] += [offers[offer[i]] if is_bundle[i] else None for i in pick]
        rows["ts"] += [datetime.fromtimestamp(sent[i] + delay, UTC) for i in pick]
        rows["channel"] += ([channel[i] for i in pick] if kind != "use" else ["app"] * len(pick))
        rows["recommendation_id"] += refs[pick].tolist()
    outcome = pa.table({**{k: pa.array(v, pa.string()) for k, v in rows.items() if k != "ts"},
                        "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                        "value": pa.nulls(len(rows["ts"]), pa.float64()),
                        "context": pa.nulls(len(rows["ts"]), pa.string()),
                        "schema_version": pa.array(np.ones(len(rows["ts"]), np.int16))})
    EventLog(log_root, writer_id="bench-outcomes").append(outcome)
    events += outcome.num_rows
    del outcome, rows

    client = redis.Redis.from_url(redis_url)
    keys = Keys(settings.redis_key_prefix)
    consent = rng.random(residents) < 0.6
    channel_sets = [["push"], ["push", "email"], ["email"], ["sms"], ["push", "sms"]]
    quiet = ["22:00-07:30", "20:00-09:00", "23:00-06:00"]
    records = {int(r): ResidentRecord(sent=[float(t)], pending=[(float(t), ref)])
               for r, t, ref in zip(nudged, sent, refs, strict=True)}
    version = "v1-bench"
    pipe = client.pipeline(transaction=False)
    for i in range(residents):
        rid = ids[i]
        fields = {"contact": "1", "contact_ts": "1", "consent": "1" if consent[i] else "0",
                  "neighbourhood": neighbourhood[i]}
        roll = rng.random()
        if roll < 0.7:
            fields["channels"] = ",".join(channel_sets[int(roll * 10) % len(channel_sets)])
        if roll < 0.1:
            fields["quiet_hours"] = quiet[int(roll * 100) % len(quiet)]
        pipe.hset(keys.profile(rid), mapping=fields)
        if roll > 0.8:
            pipe.sadd(keys.holdings(rid), f"b:{catalog.bundle_ids[i % len(catalog.bundle_ids)]}")
        if roll > 0.95:
            pipe.sadd(keys.dismissed(rid), catalog.bundle_ids[(i + 1) % len(catalog.bundle_ids)])
        record = records.get(i)
        if record is not None:
            pipe.hset(keys.outreach(rid), mapping=record.encode())
        if len(pipe) >= 20_000:
            pipe.execute()
    pipe.execute()
    for start in range(0, residents, 50_000):
        client.sadd(keys.contactable(), *ids[start:start + 50_000].tolist())
    # the published version: meta, popular lists, a list of 50 each per consenting resident
    client.hset(keys.version_meta(version), mapping={
        "model_version": "v1", "bundle_ids": json.dumps(list(catalog.bundle_ids)),
        "service_ids": json.dumps(list(catalog.service_ids)), **Audience().as_meta(),
        "reason_vocab": json.dumps(["cf"]), "state": "ready"})
    for kind, size in (("b", len(catalog.bundle_ids)), ("s", len(catalog.service_ids))):
        for nb in ["_all", *nb_ids]:
            order = rng.permutation(size)
            client.set(keys.popular(version, nb, kind),
                       pack_list(order, np.linspace(1, 0, size)))
    who = np.flatnonzero(consent)
    top = 50
    for start in range(0, len(who), 20_000):
        chunk = who[start:start + 20_000]
        pipe = client.pipeline(transaction=False)
        for kind, size in (("b", len(catalog.bundle_ids)), ("s", len(catalog.service_ids))):
            k = min(top, size)
            items = np.argsort(rng.random((len(chunk), size)), axis=1)[:, :k]
            scores = np.sort(rng.random((len(chunk), k)), axis=1)[:, ::-1]
            for rid, packed in zip(ids[chunk], pack_rows(items, scores, np.zeros_like(items)),
                                   strict=True):
                pipe.set(keys.recs(version, rid, kind), packed)
        pipe.execute()
    client.set(keys.current_version(), version)
    used = client.info("memory")["used_memory"] / 2**20
    client.close()
    return {"events": events, "earlier_nudges": n, "consenting": int(consent.sum()),
            "redis_used_memory_mb": used, "fill_s": time.perf_counter() - started}


def run_benchmark(*, residents: int = DEFAULT_RESIDENTS, history_days: int = 90,
                  seed: int = 7) -> BenchResult:
    from bouquet.core.catalog import load_catalog
    from bouquet.core.redisclient import cpu_seconds
    from bouquet.localstack import LocalStack, free_port
    from bouquet.outreach.planner import Planner
    from bouquet.serving.ranking import OfferRanker

    result = BenchResult("outreach", params={"residents": residents,
                                             "history_days": history_days, "seed": seed,
                                             "contact_consent_share": 1.0,
                                             "personalisation_consent_share": 0.6})
    load_before = os.getloadavg()
    state = Path(tempfile.mkdtemp(prefix="bouquet-bench-outreach-"))
    stack_settings = Settings(env="test", state_dir=state,
                              kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                              redis_url=f"redis://127.0.0.1:{free_port()}/0")
    stack = LocalStack(stack_settings)
    try:
        stack.up(timeout_s=60)
        log.info("filling a city of %d residents (child process)", residents)
        with mp.get_context("spawn").Pool(1) as pool:
            filled = pool.apply(fill, (str(state), stack_settings.redis_url, residents,
                                       history_days, seed))
        for name in ("events", "earlier_nudges", "redis_used_memory_mb", "fill_s"):
            result.add(name, filled[name], {"events": "events", "earlier_nudges": "nudges",
                                            "redis_used_memory_mb": "MB",
                                            "fill_s": "s"}[name])
        settings = _bench_settings(state, stack_settings.redis_url)
        catalog = load_catalog(None)
        planner = Planner(settings, catalog, OfferRanker(catalog))
        day = planner.today() + timedelta(days=1)
        log.info("planning %s for %d residents", day, residents)
        started = time.perf_counter()
        cpu = time.process_time()
        redis_cpu = cpu_seconds(planner.redis)
        report, plan = planner.plan(day, now=planner.plan_instant(day), deliver=False)
        result.add("plan_s", time.perf_counter() - started, "s")
        result.add("plan_cpu_s", time.process_time() - cpu, "s")
        result.add("plan_redis_cpu_s", cpu_seconds(planner.redis) - redis_cpu, "s")
        started = time.perf_counter()
        messages = planner.messages(plan)
        result.add("messages_s", time.perf_counter() - started, "s")
        result.add("residents", report.residents, "residents")
        result.add("planned", report.planned, "nudges")
        result.add("message_bytes_mean", np.mean([len(v) for _, v in messages])
                   if messages else 0, "bytes")
        for name, value in report.seconds.items():
            if name != "total_s":
                result.add(name, value, "s")
        result.add("events_read", report.events_read, "events")
        result.add("peak_rss_mb", peak_rss_mb(), "MB")
        result.notes.append("plan_s: read residents (Redis) + history (event log) + decide + "
                            "record (ledger, Redis records); Kafka delivery excluded; "
                            "plan_cpu_s is this process's CPU, plan_redis_cpu_s the Redis "
                            "server's during the plan")
        result.notes.append("excluded: " + ", ".join(f"{k} {v}" for k, v in
                                                     report.excluded.items()))
    finally:
        stack.down()
        shutil.rmtree(state, ignore_errors=True)
    result.notes.append(load_note(load_before, "the planner and its Redis"))
    return result


def DEFAULT(settings: Settings) -> BenchResult:  # noqa: N802 - the harness contract name
    return run_benchmark()


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("outreach")
    def outreach_command(
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        residents: int = typer.Option(DEFAULT_RESIDENTS, help=f"Residents, all with contact "
                                      f"consent ({FULL_RESIDENTS:,} for the scale claim)."),
        history_days: int = typer.Option(90, help="Days of event-log history."),
        seed: int = typer.Option(7),
    ) -> None:
        """Time one day's outreach plan (read, decide, record) for a synthetic city and
        report its peak memory."""
        result = run_benchmark(residents=residents, history_days=history_days, seed=seed)
        print_result(result)
        if json_path is not None:
            write_json(result, json_path)
