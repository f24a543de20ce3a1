"""Every Redis client Bouquet builds, from ``REDIS_URL``: one Redis or a Redis Cluster.

``redis://`` / ``rediss://`` name one Redis server (database 0 unless the path says
otherwise); ``redis+cluster://`` / ``rediss+cluster://`` name **any node of a Redis
Cluster**, and select redis-py's cluster client, which learns the slot map from that node
and routes each command to the primary of its key's hash slot. The scheme decides, not a
probe: a client never pays a round trip to find out what it talks to, and a cluster URL
that reaches a single server fails at once with a clear message instead of later with
``MOVED`` replies. Several entry nodes may be listed, comma-separated
(``redis+cluster://10.0.0.1:6379,10.0.0.2:6379``): the first that answers is asked for the
slot map.

What differs on a cluster is only what a command may touch at once: all the keys of one
command, script or ``MULTI`` must hash to one slot (the part of a key between the first
``{`` and ``}`` — its hash tag — decides; ``docs/redis-keys.md`` says which keys share a
tag). Pipelines may mix slots (the cluster client splits them by node). Code that works
on both goes through the helpers here: :func:`is_cluster`, :func:`load_scripts`,
:func:`slot_tag`, :func:`cpu_seconds`.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

#: Number of hash slots of a Redis Cluster (fixed by the protocol).
SLOTS = 16384
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: Synchronous client of either kind (what the helpers here accept).
SyncClient = redis.Redis | RedisCluster
AsyncClient = aioredis.Redis | AsyncRedisCluster


class RedisURLError(ValueError):
    """A ``REDIS_URL`` that cannot name what it claims to."""


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(plain URL of the first node, every entry node as (host, port)) of a cluster URL.

    The plain URL keeps the credentials and query options (``redis-py``'s ``from_url``
    reads them); the path must name database 0 or nothing: a cluster has one database."""
    scheme, rest = url.split("://", 1)
    plain_scheme = CLUSTER_SCHEMES.get(scheme.lower())
    if plain_scheme is None:
        raise RedisURLError(f"not a cluster URL (redis+cluster://…): {scheme}://…")
    auth, _, hosts_and_more = rest.rpartition("@")
    hosts, sep, tail = hosts_and_more.partition("/")
    if not sep:
        hosts, sep, tail = hosts_and_more.partition("?")
        tail = "?" + tail if sep else ""
    else:
        tail = "/" + tail
    nodes = []
    for part in hosts.split(","):
        parsed = urlsplit(f"{plain_scheme}://{part}")
        if not parsed.hostname:
            raise RedisURLError("a cluster URL needs host:port of at least one node")
        nodes.append((parsed.hostname, parsed.port or 6379))
    first = urlsplit(f"{plain_scheme}://{(auth + '@') if auth else ''}{hosts.split(',')[0]}"
                     f"{tail}")
    database = first.path.strip("/")
    if database not in ("", "0"):
        raise RedisURLError(f"a Redis Cluster has only database 0; the URL names {database!r}")
    return urlunsplit((first.scheme, first.netloc, "", first.query, "")), nodes


def redis_client(url: str, **options: Any) -> SyncClient:
    """A synchronous client for ``url`` (see the module docstring); ``options`` go to
    redis-py (``socket_timeout``, ``decode_responses``, …)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **options)
    first, nodes = cluster_nodes(url)
    options.pop("health_check_interval", None)  # per-connection checks: not a cluster option
    # the URL's own node is the first entry; the others are fallbacks for discovery
    return RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in nodes[1:]],
                                 **options)


def async_redis_client(url: str, **options: Any) -> AsyncClient:
    """An asyncio client for ``url`` (the serving app's); like :func:`redis_client`."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, **options)
    from redis.asyncio.cluster import ClusterNode as AsyncClusterNode

    first, nodes = cluster_nodes(url)
    options.pop("health_check_interval", None)
    # the asyncio cluster client sizes its pools per node
    if "max_connections" in options:
        options["max_connections"] = max(options["max_connections"], len(nodes))
    return AsyncRedisCluster.from_url(
        first, startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes[1:]], **options)


def is_cluster(client: Any) -> bool:
    """True for a cluster client (sync or asyncio) or one of its pipelines."""
    from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
    from redis.cluster import ClusterPipeline

    return isinstance(client, (RedisCluster, AsyncRedisCluster, ClusterPipeline,
                               AsyncClusterPipeline))


def load_scripts(client: SyncClient, scripts: Iterable[str]) -> None:
    """Load Lua scripts into the script cache of every primary (one node when not a
    cluster), so that ``EVALSHA`` finds them from any pipeline — a cluster pipeline cannot
    send ``SCRIPT LOAD`` itself. Call again after ``NoScriptError`` (a restarted node
    forgot its cache)."""
    for text in scripts:
        client.script_load(text)


def hash_slot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key``: CRC16 (XMODEM) of its hash tag — the part
    between the first ``{`` and the next ``}`` when non-empty — or of the whole key."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return binascii.crc_hqx(raw, 0) % SLOTS


def resident_chunks(resident_ids: Sequence[str], size: int, cluster: bool
                    ) -> list[np.ndarray]:
    """Positions in ``resident_ids`` grouped for scripts that build per-resident key names
    themselves: chunks of at most ``size`` residents, consecutive on one Redis; on a
    cluster, the residents of one hash slot per chunk (every per-resident key carries the
    ``{rid}`` tag, so the id's slot is its keys' slot, and a script may touch one slot).
    Each chunk's first resident's key routes the call to its slot's primary."""
    n = len(resident_ids)
    if not cluster:
        return [np.arange(start, min(start + size, n)) for start in range(0, n, size)]
    slots = np.fromiter((hash_slot(rid) for rid in resident_ids), dtype=np.int64, count=n)
    order = np.argsort(slots, kind="stable")
    starts = np.flatnonzero(np.diff(slots[order], prepend=-1))
    chunks = []
    for same_slot in np.split(order, starts[1:]):
        chunks += [same_slot[i:i + size] for i in range(0, len(same_slot), size)]
    return chunks


@cache
def _slot_tags() -> tuple[str, ...]:
    """For each slot, the shortest base-36 string that hashes to it (found once per process
    in ~0.1 s: 16,384 slots need ~180,000 candidates)."""
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    n = 0
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    while missing:
        value, text = n, ""
        while True:
            value, r = divmod(value, 36)
            text = digits[r] + text
            if not value:
                break
        slot = binascii.crc_hqx(text.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """A hash tag for ``slot``: a key containing ``{<tag>}`` lives in that slot. Keys that
    must sit beside a resident's keys but not name the resident use it (docs/redis-keys.md)."""
    return _slot_tags()[slot]


def primaries(client: SyncClient) -> list[Any]:
    """One synchronous single-node client per primary (just ``client`` when not a
    cluster): for per-server commands such as ``INFO``."""
    if not isinstance(client, RedisCluster):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def cpu_seconds(client: SyncClient) -> float:
    """CPU seconds (user + system, all threads) the Redis server(s) used so far, summed
    over every primary: ``INFO cpu``."""
    total = 0.0
    for node in primaries(client):
        info = node.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total
