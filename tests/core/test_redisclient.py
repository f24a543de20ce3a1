"""REDIS_URL → client: the scheme selects one Redis or a Redis Cluster; slots and tags."""

from __future__ import annotations

import pytest
import redis

from bouquet.core.redisclient import (
    SLOTS,
    RedisURLError,
    cluster_nodes,
    hash_slot,
    is_cluster,
    is_cluster_url,
    redis_client,
    slot_tag,
)


def test_the_scheme_decides() -> None:
    assert not is_cluster_url("redis://localhost:6379/0")
    assert is_cluster_url("redis+cluster://10.0.0.1:7000")
    assert is_cluster_url("rediss+cluster://u:p@h:7000")
    client = redis_client("redis://127.0.0.1:1/0")  # no connection until a command
    assert isinstance(client, redis.Redis) and not is_cluster(client)


def test_cluster_urls_keep_credentials_options_and_every_entry_node() -> None:
    first, nodes = cluster_nodes("rediss+cluster://u:secret@a:7000,b:7001,c?ssl_cert_reqs=none")
    assert first == "rediss://u:secret@a:7000?ssl_cert_reqs=none"
    assert nodes == [("a", 7000), ("b", 7001), ("c", 6379)]
    assert cluster_nodes("redis+cluster://h:7000/0")[0] == "redis://h:7000"


@pytest.mark.parametrize("url", ["redis+cluster://h:7000/3", "redis://h:7000",
                                 "redis+cluster://:7000"])
def test_urls_a_cluster_cannot_honour_are_refused(url: str) -> None:
    with pytest.raises(RedisURLError):
        cluster_nodes(url)


def test_hash_slots_follow_the_cluster_specification() -> None:
    # the specification's examples: CRC16/XMODEM mod 16384, hash tag between { and }
    assert hash_slot("foo") == 12182
    assert hash_slot("{user1000}.following") == hash_slot("{user1000}.followers")
    assert hash_slot("foo{}{bar}") == hash_slot("foo{}{bar}")  # an empty tag: the whole key
    assert hash_slot("foo{{bar}}zap") == hash_slot("{bar")
    assert hash_slot(b"bq:r:{ana}:recent") == hash_slot("ana")


def test_every_slot_has_a_tag_that_hashes_to_it() -> None:
    for slot in (0, 1, 5461, 10922, SLOTS - 1):
        assert hash_slot("{" + slot_tag(slot) + "}") == slot


def test_resident_chunks_cover_each_resident_once_one_slot_a_chunk_on_a_cluster() -> None:
    """Scripts that build residents' key names get consecutive chunks on one Redis and,
    on a cluster, chunks of one hash slot each (a script may touch one slot)."""
    import numpy as np

    from bouquet.core.redisclient import resident_chunks

    ids = [f"r{i}" for i in range(5000)] + ["r7"] * 4  # one slot with more than `size`
    single = resident_chunks(ids, 1000, cluster=False)
    assert [len(c) for c in single] == [1000] * 5 + [4]
    assert np.concatenate(single).tolist() == list(range(len(ids)))
    chunks = resident_chunks(ids, 3, cluster=True)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(ids)))
    assert all(0 < len(c) <= 3 and len({hash_slot(ids[i]) for i in c}) == 1 for c in chunks)
    assert len(chunks) > len({hash_slot(r) for r in ids})  # the r7 slot was split
    assert resident_chunks([], 10, cluster=True) == []
