"""The closed loop's residents are answered by the API's own code: for the same state, a
resident gets the same list from the running API (real Redis) and from the simulator's
model policy.

The simulated city's events go through the ingestion consumer's code (the batch builder
and the Redis script: profile, consent, holdings, dismissed, recent contacts), the policy's
model goes through ``bouquet publish`` into a Redis keyspace, and each resident is asked
both ways at the same moment."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import NamedTuple

import anyio
import pytest
import redis

from bouquet.core.catalog import Catalog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import development_ids
from bouquet.models.online import Audience
from bouquet.pipelines.publish import Publisher, publish_in_memory
from bouquet.simulation.closed_loop import run_policy
from bouquet.simulation.columns import table_to_payloads
from bouquet.simulation.model_policy import ModelPolicy
from bouquet.simulation.sinks import MemorySink
from bouquet.streaming.batch import Batch, BatchBuilder
from bouquet.streaming.consumer import state_config
from bouquet.streaming.state import StateWriter
from tests.serving.support import client_for


class Record(NamedTuple):
    """What the consumer reads of a Kafka record."""

    topic: str
    partition: int
    offset: int
    value: bytes
    timestamp: int | None = None


def ingest(settings, catalog: Catalog, table) -> None:
    """Apply events to Redis exactly as ``bouquet ingest`` does (minus Kafka)."""
    keys = Keys(settings.redis_key_prefix)
    client = redis.Redis.from_url(settings.redis_url)
    builder = BatchBuilder(catalog, keys)
    writer = StateWriter(client, keys, state_config(settings))
    records = [Record("t", 0, offset, json.dumps(p).encode())
               for offset, p in enumerate(table_to_payloads(table))]
    start = 0
    while start < len(records):  # a batch holds a bounded number of event dates
        batch = Batch()
        start += builder.add_records(batch, records[start:start + 5000], now=datetime.now(UTC))
        assert not batch.dead_letters, batch.dead_letters[:3]
        writer.apply(batch.slots)
    client.close()


def test_a_resident_gets_the_same_answer_from_the_api_and_the_simulator(
        make_settings, catalog: Catalog) -> None:
    # one slot in three explored, rotation on (defaults), a small city's promotion forced
    settings = make_settings(train_min_eval_residents=10, train_bootstrap_samples=200,
                             serving_explore_share=1 / 3)
    policy = ModelPolicy(settings, force=True)
    sink = MemorySink()
    # the simulated weeks end yesterday: recent events are recent for the API's clock too
    run_policy(policy, catalog, residents=1200, weeks=3, seed=11, sink=sink)
    ingest(settings, catalog, sink.table())
    client = redis.Redis.from_url(settings.redis_url)
    Publisher(settings, client, catalog.neighbourhood_ids).publish(
        policy.model, model_version=policy.version.model_version)
    client.close()

    residents = sorted(policy.observed.residents)[:250]
    seen = compare(settings, policy, residents)
    # every rule took part in the comparison
    assert all(seen.values()), seen

    # a version published without a champion whose segment lists earned their place
    audience = Audience(personalised=False, segment_lists=True)
    client = redis.Redis.from_url(settings.redis_url)
    Publisher(settings, client, catalog.neighbourhood_ids).publish(
        policy.model, model_version="v-segments", audience=audience)
    client.close()
    policy.version, policy.lists = publish_in_memory(
        policy.model, model_version="v-segments", top=settings.publish_top_n,
        audience=audience)
    seen = compare(settings, policy, residents)
    assert seen["personalised"] == 0 and seen["segment"] and seen["explored"], seen


def compare(settings, policy: ModelPolicy, residents: list[str]) -> dict[str, int]:
    """Ask the API and the policy about each resident at the same moment; the answers must
    agree item by item. Returns how often each rule took part."""

    async def both() -> list[tuple[dict, object]]:
        out = []
        async with client_for(settings) as c:
            for rid in residents:
                api = (await c.get(f"/v1/residents/{rid}/bundles", params={"k": 3})).json()
                out.append((api, policy.serve(rid, 3, time.time())))
        return out

    seen = {"personalised": 0, "segment": 0, "explored": 0, "rotated": 0, "fallback": 0}
    for api, sim in anyio.run(both):
        ranked = sim.ranked
        assert api["model_version"] == policy.version.model_version
        assert [b["bundle_id"] for b in api["bundles"]] == sim.bundle_ids(), api["resident_id"]
        assert [(b["source"], b["reason_code"]) for b in api["bundles"]] == \
            [(p.source, p.reason_code) for p in ranked.items]
        for item, pick in zip(api["bundles"], ranked.items, strict=True):
            assert item["score"] == pytest.approx(pick.score, abs=2e-6)
            variant = development_ids().verify(item["recommendation_id"]).variant
            assert variant == ("champion-explore" if pick.source == "explore" else "champion")
        assert (api["personalised"], api["fallback"]) == (ranked.personalised, ranked.fallback)
        seen["personalised"] += ranked.personalised
        seen["segment"] += ranked.fallback == "popular_segment"
        seen["explored"] += ranked.explored
        seen["rotated"] += bool(ranked.rotated)
        seen["fallback"] += ranked.fallback == "popular_neighbourhood"
    return seen
