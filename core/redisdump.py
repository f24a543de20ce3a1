"""Reading a whole Redis keyspace back, for comparisons and audits (not on any hot path).

Several checks need "every key and its value": the kill-replay benchmark compares two
runs' real-time state key by key, the ingestion tests compare it with a recomputation,
and the privacy tests search every key and value for an erased id. A keyspace holds
hundreds of thousands of keys (de-duplication markers); two round trips per key take
minutes, so this reads a chunk of keys at a time in two pipelines (types, then values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

#: How each key type is read back: the whole value, in Redis's order.
_READERS: dict[str, Callable[[Any, bytes], Any]] = {
    "string": lambda pipe, key: pipe.get(key),
    "list": lambda pipe, key: pipe.lrange(key, 0, -1),
    "set": lambda pipe, key: pipe.smembers(key),
    "hash": lambda pipe, key: pipe.hgetall(key),
    "zset": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "stream": lambda pipe, key: pipe.xrange(key),
}


def scan_keys(client: Any, match: str | None = None) -> list[bytes]:
    """Every key name (matching ``match``, a SCAN pattern), in large SCAN steps."""
    return list(client.scan_iter(match=match, count=10_000))


def read_keys(client: Any, keys: list[bytes],
              chunk: int = 2000) -> Iterator[tuple[str, str, Any]]:
    """``(key, type, raw value)`` of each of ``keys`` (see :func:`scan_keys`), from a
    synchronous redis-py client without ``decode_responses``. Keys of other types (none
    that Bouquet writes) are yielded with the value ``None``; a key that expired meanwhile
    comes back as ``none`` / ``None``."""
    for start in range(0, len(keys), chunk):
        names = keys[start:start + chunk]
        pipe = client.pipeline(transaction=False)
        for key in names:
            pipe.type(key)
        kinds = [kind.decode() for kind in pipe.execute()]
        pipe = client.pipeline(transaction=False)
        readable = [(key, kind) for key, kind in zip(names, kinds, strict=True)
                    if kind in _READERS]
        for key, kind in readable:
            _READERS[kind](pipe, key)
        values = dict(zip((key for key, _ in readable), pipe.execute(), strict=True))
        for key, kind in zip(names, kinds, strict=True):
            yield key.decode(), kind, values.get(key)
