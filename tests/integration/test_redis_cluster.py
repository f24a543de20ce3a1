"""Bouquet on a real Redis Cluster (three primaries, started by the code behind ``bouquet
stack up --redis-cluster``): ingestion, erasure, serving, publish and rollback, export,
compaction, the live counters and the outreach planner's store.

The single-Redis contract of the real-time state (``tests/streaming/test_ingest_state.py``)
runs again here unchanged, through a ``redis+cluster://`` URL: on a cluster every script
touches one hash slot, so the group scripts write the residents' slots and the engagement
aggregates reach the ``{eng}`` slot through each slot's outbox. The tests below add what
only a cluster has: a crash between those two steps, recovered without loss or double
count.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.streaming.test_ingest_state as single
from bouquet.core.keys import Keys
from bouquet.core.redisclient import (
    SyncClient,
    async_redis_client,
    hash_slot,
    is_cluster,
    redis_client,
)
from bouquet.core.settings import Settings
from bouquet.privacy.erasure import delete_published, published_versions
from bouquet.serving.store import OnlineStore
from bouquet.streaming.state import StateWriter, erase_resident
from bouquet.streaming.synthetic import StreamSpec, stream
from tests.integration.cluster_stack import started_cluster
from tests.streaming.ingest_helpers import ReferenceState, dump_state

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-primary cluster for this module, started and stopped by the code behind
    ``bouquet stack up --redis-cluster`` / ``stack down``."""
    yield from started_cluster(tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture
def cluster_settings(cluster_url: str, tmp_path: Path) -> Settings:
    """Settings that point at the cluster, with a key prefix of the test's own."""
    return Settings(env="test", state_dir=tmp_path / "state", redis_url=cluster_url,
                    redis_key_prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
def client(cluster_settings: Settings) -> Iterator[SyncClient]:
    c = redis_client(cluster_settings.redis_url)
    assert is_cluster(c)
    yield c
    c.close()


SINGLE_REDIS_CONTRACT: list[Callable[[Settings, Any], None]] = [
    single.test_state_matches_the_reference_and_a_replay_changes_nothing,
    single.test_semantics_of_one_resident,
    single.test_erase_in_the_middle_of_a_batch_keeps_what_follows,
    single.test_erase_resident_forgets_everything_personal,
    single.test_dead_letters_are_counted_once_per_position,
    single.test_an_erase_event_deletes_every_per_resident_kind,
    single.test_contact_consent_is_its_own_purpose_and_keeps_the_contactable_set,
    single.test_contact_decisions_and_erasures_in_one_batch_keep_their_order,
]


@pytest.mark.parametrize("contract", SINGLE_REDIS_CONTRACT, ids=lambda f: f.__name__[5:])
def test_the_single_redis_contract_holds_on_a_cluster(
        contract: Callable[[Settings, Any], None], cluster_settings: Settings,
        client: SyncClient) -> None:
    contract(cluster_settings, client)


def test_the_cluster_spreads_residents_over_every_primary(cluster_settings: Settings,
                                                          client: SyncClient) -> None:
    """Not a cluster in name only: residents' keys land on all three primaries."""
    keys = Keys(cluster_settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    events = list(stream(single.CATALOG, StreamSpec(events=600, residents=60, seed=3)))
    single.apply(writer, keys, events)
    owners = {client.nodes_manager.get_node_from_slot(hash_slot(keys.recent(e["resident_id"])))
              .name for e in events}
    assert len(owners) == 3


class _Crash(RuntimeError):
    """Stands for the consumer process dying at that point."""


def _crash_before_the_aggregates(writer: StateWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``writer`` die after its group scripts ran, before the ``{eng}`` step."""

    def die(entries: dict[Any, bytes]) -> int:
        raise _Crash(f"{len(entries)} outbox entries not applied")

    monkeypatch.setattr(writer, "_apply_entries", die)


@pytest.mark.parametrize("recovery", ["replay", "drain", "erasure"])
def test_a_crash_between_the_two_steps_loses_and_doubles_nothing(
        recovery: str, cluster_settings: Settings, client: SyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The group scripts wrote the residents' keys and markers, then the process died
    before the aggregates reached ``{eng}``. Whatever comes next — the batch delivered
    again, a new consumer starting (``drain``), or an erasure in one of the slots — applies
    each outbox entry exactly once, and the state equals the reference."""
    prefix = cluster_settings.redis_key_prefix
    keys = Keys(prefix)
    events = list(stream(single.CATALOG, StreamSpec(events=1500, residents=120, seed=5,
                                                    erase_rate=0.03)))
    crashing = StateWriter(client, keys)
    _crash_before_the_aggregates(crashing, monkeypatch)
    with pytest.raises(_Crash):
        single.apply(crashing, keys, events[:900])
    assert dump_state(client, prefix) != \
        ReferenceState(single.CATALOG, prefix).apply_all(events[:900]).dump()

    fresh = StateWriter(client, keys)
    if recovery == "replay":  # the uncommitted batch comes back, then the rest
        applied, dups, _ = single.apply(fresh, keys, events[:900])
        assert applied == 0 and dups > 0
        single.apply(fresh, keys, events[900:])
        expected = ReferenceState(single.CATALOG, prefix).apply_all(events).dump()
    elif recovery == "drain":
        assert fresh.drain() > 0
        assert fresh.drain() == 0  # applied once: the outboxes are empty
        expected = ReferenceState(single.CATALOG, prefix).apply_all(events[:900]).dump()
    else:
        rid = events[0]["resident_id"]
        erase_resident(client, keys, rid)
        erasure = {"schema_version": 1, "event_id": "erase-now", "resident_id": rid,
                   "type": "erase", "ts": events[899]["ts"], "channel": "app"}
        fresh.drain()  # the other slots' entries
        expected = ReferenceState(single.CATALOG, prefix).apply_all(
            [*events[:900], erasure]).dump()
    assert dump_state(client, prefix) == expected


def test_contact_consent_reaches_the_contactable_set_once_after_a_crash(
        cluster_settings: Settings, client: SyncClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A contact decision is written to the profile in the resident's slot and reaches the
    contactable set (``{eng}``) through the outbox: after a crash between the two steps the
    profile already says it, the set does not yet, and a drain completes it once."""
    keys = Keys(cluster_settings.redis_key_prefix)
    contact = {"purpose": "contact"}
    residents = [f"c{i}" for i in range(12)]
    events = [single.ev(i, rid, "consent", i, value=1, context=contact)
              for i, rid in enumerate(residents)]
    events.append(single.ev(99, "c0", "consent", 99, value=0, context=contact))
    crashing = StateWriter(client, keys)
    _crash_before_the_aggregates(crashing, monkeypatch)
    with pytest.raises(_Crash):
        single.apply(crashing, keys, events)
    assert single.read_profile(client, keys, "c1")["contact"] is True
    assert client.smembers(keys.contactable()) == set()
    fresh = StateWriter(client, keys)
    assert fresh.drain() > 0
    assert fresh.drain() == 0
    assert client.smembers(keys.contactable()) == {r.encode() for r in residents[1:]}
    applied, dups, _ = single.apply(fresh, keys, events)  # a replay changes nothing
    assert applied == 0 and dups == len(events)
    assert client.smembers(keys.contactable()) == {r.encode() for r in residents[1:]}


def test_the_consent_api_writes_contact_consent_on_the_cluster(
        cluster_settings: Settings, client: SyncClient) -> None:
    """The consent API's profile write (one slot) then its contactable-set update
    (``{eng}``), through the asyncio cluster client; a decision received earlier than the
    one standing changes neither."""
    from datetime import UTC, datetime, timedelta

    keys = Keys(cluster_settings.redis_key_prefix)
    now = datetime.now(UTC)

    async def decide() -> list[bool]:
        store = OnlineStore(async_redis_client(cluster_settings.redis_url), keys)
        try:
            return [await store.set_consent("ana", True, now, "contact"),
                    await store.set_consent("bob", True, now, "contact"),
                    await store.set_consent("bob", False, now + timedelta(seconds=1),
                                            "contact"),
                    await store.set_consent("bob", True, now, "contact")]
        finally:
            await store.redis.aclose()

    assert asyncio.run(decide()) == [True, True, True, False]
    assert client.smembers(keys.contactable()) == {b"ana"}
    assert single.read_profile(client, keys, "bob")["contact"] is False
    assert hash_slot(keys.contactable()) == hash_slot(keys.active_index())


def test_the_planners_records_script_holds_on_a_cluster(cluster_settings: Settings) -> None:
    """The planner's write (one script call per hash slot of residents on a cluster) keeps
    its single-Redis contract: the last consent check drops withdrawn and erased nudges."""
    import tests.outreach.test_gateway_and_consent as outreach

    outreach.test_the_records_script_drops_the_nudge_of_a_resident_who_withdrew_meanwhile(
        cluster_settings)


def test_the_planners_chunked_reads_on_a_cluster_match_each_residents_keys(
        cluster_settings: Settings, client: SyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner's reads (one script call per slot's residents, replies put back in the
    order asked, groups of calls read one ahead of their decoding) against what each
    resident's own keys hold: profile, contact consent, holdings and published lists, for
    residents spread over all three primaries."""
    from bouquet.core.catalog import load_catalog
    from bouquet.outreach import store as store_module
    from bouquet.outreach.store import OutreachStore
    from tests.serving.support import publish, small_model

    # groups of 8 residents: several groups, each read while the previous is decoded
    monkeypatch.setattr(store_module, "CHUNK", 4)
    monkeypatch.setattr(store_module, "PIPELINED_CALLS", 2)

    catalog = load_catalog()
    keys = Keys(cluster_settings.redis_key_prefix)
    residents = [f"r{i}" for i in range(60)]
    events = []
    for i, rid in enumerate(residents):
        nb = catalog.neighbourhood_ids[i % len(catalog.neighbourhood_ids)]
        events.append(single.ev(3 * i, rid, "profile", i, context={"neighbourhood": nb}))
        events.append(single.ev(3 * i + 1, rid, "consent", i, value=i % 3 != 0,
                                context={"purpose": "contact"}))
        if i % 2:
            events.append(single.ev(3 * i + 2, rid, "subscribe", i,
                                    bundle_id=catalog.bundle_ids[i % 5]))
    single.apply(StateWriter(client, keys), keys, events)
    version = publish(cluster_settings, small_model(catalog, n=60), "v1").version
    asked = [*reversed(residents), "nobody"]  # an order the slots do not follow
    store = OutreachStore(client, keys)
    table, _ = store.resident_table(asked)
    offers = store.offers(asked, version)
    contact = store.contact(asked)
    assert table.ids.tolist() == asked
    for n, rid in enumerate(asked):
        profile = single.read_profile(client, keys, rid)
        assert table.profile["neighbourhood"][n] == profile.get("neighbourhood")
        assert contact[n] == table.contact[n] == bool(profile.get("contact"))
        held = {m.decode() for m in client.smembers(keys.holdings(rid))}
        assert set(offers.holdings[n].split()) == held
        assert offers.packed["b"][n] == (client.get(keys.recs(version, rid, "b")) or b"")
    assert contact.sum() == 40 and sum(bool(h) for h in offers.holdings) == 30


def test_serving_reads_what_ingestion_wrote_on_the_cluster(cluster_settings: Settings,
                                                          client: SyncClient) -> None:
    """The serving store's reads through the asyncio cluster client: the per-resident read
    script (one slot: every key carries ``{rid}``) and the pointers (several slots)."""
    keys = Keys(cluster_settings.redis_key_prefix)
    writer = StateWriter(client, keys)
    events = list(stream(single.CATALOG, StreamSpec(events=400, residents=40, seed=13,
                                                    erase_rate=0.0)))
    single.apply(writer, keys, events)
    residents = sorted({e["resident_id"] for e in events})

    async def read() -> tuple[dict[str, str | None], list[Any]]:
        store = OnlineStore(async_redis_client(cluster_settings.redis_url), keys)
        try:
            pointers = await store.pointers(["current", "challenger"])
            states = [await store.resident(None, rid) for rid in residents]
        finally:
            await store.redis.aclose()
        return pointers, states

    pointers, states = asyncio.run(read())
    assert pointers == {"current": None, "challenger": None}  # nothing published
    for rid, state in zip(residents, states, strict=True):
        newest_first = [item.decode() for item in client.lrange(keys.recent(rid), 0, 19)]
        assert len(state.recent) == len(newest_first) > 0
        assert state.holdings == {m.decode() for m in client.smembers(keys.holdings(rid))}
        assert state.profile.get("consent") == single.read_profile(client, keys,
                                                                   rid).get("consent")


def test_erasure_finds_and_deletes_published_lists_across_pointers(
        cluster_settings: Settings, client: SyncClient) -> None:
    """The erasure cascade's Redis part: versions on record, named by pointers (keys in
    several slots) or kept as a previous version, and the resident's lists in each."""
    keys = Keys(cluster_settings.redis_key_prefix)
    client.zadd(keys.versions(), {"v1-a": 1, "v2-b": 2})
    client.hset(keys.version_meta("v2-b"), mapping={"previous": "v0-z", "pointer": "current"})
    client.hset(keys.version_meta("v3-c"), mapping={"pointer": "challenger"})
    client.zadd(keys.versions(), {"v3-c": 3})
    client.set(keys.current_version(), "v2-b")
    client.set(keys.variant_pointer("challenger"), "v4-d")  # moved on since v3-c
    versions = published_versions(client, keys)
    assert versions == {"v0-z", "v1-a", "v2-b", "v3-c", "v4-d"}
    for version in versions:
        for rid in ("ana", "bob"):
            client.set(keys.recs(version, rid, "b"), b"x")
    assert delete_published(client, keys, ["ana"]) == len(versions)
    assert not any(client.exists(keys.recs(v, "ana", "b")) for v in versions)
    assert all(client.exists(keys.recs(v, "bob", "b")) for v in versions)


def test_a_cluster_url_that_reaches_one_server_fails_at_once(cluster_url: str) -> None:
    """The scheme selects the client: a cluster URL must not quietly talk to one node of a
    non-cluster server (or the reverse) and fail later with MOVED replies."""
    from redis.exceptions import RedisClusterException, RedisError

    from bouquet.localstack import free_port

    with pytest.raises((RedisClusterException, RedisError)):
        redis_client(f"redis+cluster://127.0.0.1:{free_port()}", socket_connect_timeout=1)


def test_stack_up_redis_cluster_prints_the_url_and_down_stops_every_node(
        tmp_path: Path) -> None:
    """The CLI end to end: ``stack up --redis-cluster`` starts the nodes (on the ports a
    cluster ``REDIS_URL`` names), forms the cluster and prints the URL to export; ``stack
    down`` stops every node."""
    import json
    import subprocess
    import sys

    import psutil

    from bouquet.localcluster import cluster_ports, cluster_url
    from bouquet.localstack import free_port

    url = cluster_url(cluster_ports())
    env = {"BOUQUET_STATE_DIR": str(tmp_path), "REDIS_URL": url, "PATH": "/usr/bin:/bin",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    cli = [sys.executable, "-m", "bouquet", "stack"]
    try:
        up = subprocess.run([*cli, "up", "--redis-cluster"], env=env, capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export REDIS_URL={url}" in up.stdout
        assert up.stdout.count("healthy") == 3
        pids = [json.loads(p.read_text())["pid"]
                for p in (tmp_path / "stack").glob("redis-cluster-*.pid.json")]
        assert len(pids) == 3
        client = redis_client(url)
        assert len(client.get_primaries()) == 3
        client.close()
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert "redis-cluster" in down.stdout
    assert not [p for p in pids if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_the_stack_cluster_keeps_its_data_across_down_and_up(tmp_path: Path) -> None:
    """Started again on the same state folder, the nodes read their ``nodes.conf`` (the
    slots are not assigned twice, which ``redis-cli`` would refuse) and their AOF."""
    from tests.integration.cluster_stack import cluster_stack

    stack = cluster_stack(tmp_path)
    try:
        stack.start_redis()
        client = redis_client(stack.settings.redis_url)
        client.set("survives:{a}", "1")
        client.close()
        stack.down()
        stack.start_redis()
        client = redis_client(stack.settings.redis_url)
        assert client.get("survives:{a}") == b"1"
        client.close()
    finally:
        stack.down()


def test_redis_cluster_flag_picks_the_default_ports_for_a_plain_url(tmp_path: Path) -> None:
    """Without a cluster URL the flag names the conventional ports; a cluster URL is kept."""
    from bouquet.localcluster import DEFAULT_PORTS, local_ports
    from bouquet.localstack import LocalStack

    plain = LocalStack(Settings(env="test", state_dir=tmp_path,
                                redis_url="redis://127.0.0.1:6390/0"))
    assert local_ports(plain.with_redis_cluster().settings.redis_url) == list(DEFAULT_PORTS)
    assert local_ports("redis+cluster://127.0.0.1:7100") == [7100, 7101, 7102]
    assert local_ports("redis+cluster://10.0.0.1:7000") is None
    named = LocalStack(Settings(env="test", state_dir=tmp_path,
                                redis_url="redis+cluster://127.0.0.1:7100"))
    assert named.with_redis_cluster() is named


def test_publish_serve_publish_again_and_roll_back_on_the_cluster(
        cluster_settings: Settings, client: SyncClient) -> None:
    """The versioned keyspace and its pointer on a cluster: each publish's lists spread
    over the primaries, serving follows the one-key switch, a third publish expires the
    first version, and rollback restores the one before."""
    import anyio

    from bouquet.core.catalog import load_catalog
    from bouquet.pipelines.publish import Publisher
    from tests.serving.support import client_for, publish, set_profile, small_model

    catalog = load_catalog()
    keys = Keys(cluster_settings.redis_key_prefix)
    settings = cluster_settings.model_copy(update={"publish_chunk": 25})
    set_profile(settings, "r3", consent="1", neighbourhood="centre")

    async def served() -> str:
        async with client_for(settings) as app:
            answer = await app.get("/v1/residents/r3/bundles")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["personalised"] and body["bundles"]
            return body["keyspace_version"]

    first = publish(settings, small_model(catalog, n=60, seed=1), "v1")
    owners = {client.nodes_manager.get_node_from_slot(
        hash_slot(keys.recs(first.version, f"r{i}", "b"))).name for i in range(60)}
    assert len(owners) == 3
    assert anyio.run(served) == first.version
    second = publish(settings, small_model(catalog, n=60, seed=2), "v2")
    assert second.previous == first.version
    assert anyio.run(served) == second.version
    third = publish(settings, small_model(catalog, n=60, seed=3), "v3")
    assert third.expired == [first.version]
    assert 0 < client.ttl(keys.recs(first.version, "r7", "s")) \
        <= settings.publish_old_version_ttl_s
    assert client.ttl(keys.recs(second.version, "r7", "s")) == -1
    assert Publisher(settings, client).rollback() == (third.version, second.version)
    assert anyio.run(served) == second.version
    assert client.hget(keys.version_meta(third.version), "state") == b"rolled-back"
    assert client.hget(keys.version_meta(second.version), "state") == b"live"


def test_live_engagement_counters_read_back_on_the_cluster(cluster_settings: Settings,
                                                           client: SyncClient) -> None:
    """The operator's live figures (``analytics.live.snapshot``) from a cluster: today's
    active residents and contacts, and the trailing windows, as counted from the events."""
    from datetime import UTC, datetime

    from bouquet.analytics.live import snapshot
    from bouquet.core.events import CONTACT_TYPES

    keys = Keys(cluster_settings.redis_key_prefix)
    now = datetime.now(UTC)
    events = list(stream(single.CATALOG, StreamSpec(events=900, residents=80, seed=17,
                                                    erase_rate=0.0, days=2, end=now)))
    single.apply(StateWriter(client, keys), keys, events)
    contacts = {e["event_id"]: e for e in events if e["type"] in CONTACT_TYPES}
    today = [e for e in contacts.values()
             if datetime.fromisoformat(e["ts"]).astimezone(UTC).date() == now.date()]
    live = snapshot(client, keys, now)
    day = live.active[(live.active.period == "day") & (live.active.bucket == live.day)
                      & (live.active.dimension == "all")]
    assert day.active.tolist() == [len({e["resident_id"] for e in today})] != [0]
    counted = live.contacts[(live.contacts.bucket == live.day)
                            & (live.contacts.type == "all")].contacts.tolist()
    assert counted == [len(today)]
    rolling = dict(zip(live.rolling.window, live.rolling.active, strict=True))
    assert rolling["ever"] == rolling["last_7d"] == len({e["resident_id"]
                                                          for e in contacts.values()})


def test_export_reads_a_residents_state_and_lists_from_the_cluster(
        cluster_settings: Settings, client: SyncClient) -> None:
    """``bouquet privacy export``'s document: real-time state from the resident's slot,
    activity sets from ``{eng}``, and the published lists of each pointer's version."""
    from bouquet.core.catalog import load_catalog
    from bouquet.privacy.export import export_resident
    from tests.serving.support import publish, small_model

    keys = Keys(cluster_settings.redis_key_prefix)
    single.apply(StateWriter(client, keys), keys,
                 [single.ev(1, "r5", "use", 1, service_id="bike-share"),
                  single.ev(2, "r5", "subscribe", 2, bundle_id="compte-mobilite"),
                  single.ev(3, "r6", "use", 3, service_id="bike-share")])
    published = publish(cluster_settings, small_model(load_catalog(), n=10), "v1")
    document = export_resident(cluster_settings, client, "r5")
    realtime = document["realtime"]
    assert [e["event_id"] for e in realtime["recent"]] == ["e2", "e1"]
    assert realtime["holdings"] == ["b:compte-mobilite"]
    assert realtime["counted_active_in"] and realtime["last_contact"] is not None
    [lists] = document["recommendations"]
    assert lists["keyspace_version"] == published.version and lists["bundles"]


def test_compaction_deletes_erased_residents_lists_and_rewrites_every_aof(
        cluster_settings: Settings, client: SyncClient) -> None:
    """``bouquet compact`` on a cluster: an ``erase`` event in the log deletes the
    resident's published lists (in their own slots), and the AOF rewrite reaches every
    primary, not the one node a keyless command would go to."""
    from datetime import UTC, datetime

    from bouquet.core.catalog import load_catalog
    from bouquet.core.eventlog import EventLog
    from bouquet.core.redisclient import primaries
    from bouquet.privacy.compaction import compact, rewrite_redis_aof
    from tests.serving.support import publish, small_model

    keys = Keys(cluster_settings.redis_key_prefix)
    published = publish(cluster_settings, small_model(load_catalog(), n=10), "v1")
    EventLog(cluster_settings.event_log_path, writer_id="test").append(
        [{"event_id": "x1", "resident_id": "r4", "type": "erase", "channel": "system",
          "ts": datetime.now(UTC), "schema_version": 1}])
    report = compact(cluster_settings, redis_client=client)
    assert report.published_lists_deleted == 2  # bundles and services
    assert not client.exists(keys.recs(published.version, "r4", "b"),
                             keys.recs(published.version, "r4", "s"))
    assert client.exists(keys.recs(published.version, "r3", "b"))
    nodes = primaries(client)  # the stack's cluster keeps an AOF on each primary
    before = [int(node.info("persistence")["aof_rewrites"]) for node in nodes]
    assert rewrite_redis_aof(client) == "rewritten"
    after = [int(node.info("persistence")["aof_rewrites"]) for node in nodes]
    assert all(a > b for a, b in zip(after, before, strict=True)) and len(nodes) == 3
