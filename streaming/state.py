"""Real-time state in Redis: what the consumer writes, exactly once per event.

Every Redis effect of a batch is applied by a **Lua script** (``apply_batch.lua``, one
call per 1,000 events), which for each event first sets the event's de-duplication marker
(``Keys.seen_event``, ``SET NX EX``) and applies the event's effects only when the marker
was new. A script runs atomically, so the marker and the effects are either both written
or neither: a batch redelivered after a crash, a rebalance, or a client that re-sent an
event, has no second effect — including the counters (``HINCRBY``) that are not idempotent
by construction. One script call per 1,000 events also means one round trip per 1,000
events, and a bounded time (~10-20 ms) during which Redis serves nobody else.

Order matters within a resident (erase, then new contacts; subscribe, then unsubscribe):
the script processes events in the order given, which is partition order, and partitions
are keyed by resident. Holdings and profile updates are additionally *last-writer-wins by
event time* (``holdings_ts`` hash, ``profile_ts``/``consent_ts`` fields), so an old event
arriving late (or re-sent after its marker expired) cannot undo a newer one.

Key names come from :class:`bouquet.core.keys.Keys`; the script receives the fixed parts of
each name and :func:`_templates` checks at start-up that what the script will build is
exactly what ``Keys`` builds. Every key is documented in ``docs/redis-keys.md``.

Redis Cluster: the batch script touches many slots, so it needs a single primary (that is
where the throughput is: one Redis core does well over 100k events/s of these effects); see
``docs/ingestion.md`` for the Cluster plan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bouquet.core.keys import RESIDENT_KINDS, Keys
from bouquet.core.profile import decode_profile
from bouquet.core.scripts import lua_script

log = logging.getLogger(__name__)

#: Event-type → funnel stage credited when the event carries a Bouquet recommendation id.
FUNNEL_STAGES: dict[str, str] = {
    "view": "shown",
    "click": "opened",
    "subscribe": "subscribed",
    "use": "used",
}
#: Active-resident dimensions (``Keys.active`` ``dimension`` values) written per contact.
ACTIVE_DIMENSIONS: tuple[str, ...] = ("all", "nb", "domain", "factor", "channel")
#: Neighbourhood bucket of a resident with no declared neighbourhood.
UNKNOWN_NEIGHBOURHOOD = "_unknown"
#: Number of ARGV slots per event in the batch script.
STRIDE = 10

#: The ingestion scripts (``streaming/*.lua``): apply a batch, erase one resident, count
#: dead letters. The first two share a header (key-name parts, TTLs) and the erase routine.
_APPLY_LUA = lua_script("bouquet.streaming", "ingest_header.lua", "erase_resident_fn.lua",
                        "apply_batch.lua")
_ERASE_LUA = lua_script("bouquet.streaming", "ingest_header.lua", "erase_resident_fn.lua",
                        "erase_resident.lua")
_DLQ_LUA = lua_script("bouquet.streaming", "count_dead_letters.lua")


@dataclass(frozen=True)
class StateConfig:
    """Retention and caps of the real-time state (from ``Settings.ingest_*``)."""

    recent_cap: int = 50
    recent_ttl_s: int = 90 * 86400
    dedup_ttl_s: int = 3 * 86400
    counter_ttl_s: int = 120 * 86400
    #: events per script call: Redis runs one script at a time, so this bounds how long
    #: a serving read can wait behind ingestion (~10-20 ms per 1,000 events here)
    script_chunk_events: int = 1000


class KeyFormatChanged(RuntimeError):
    """``Keys`` builds a name the Lua script would not: the script must be updated."""


def _templates(keys: Keys) -> dict[str, str]:
    """Fixed parts of the key names the Lua script builds, checked against ``Keys``."""
    rid, eid = "R0", "E0"
    sample_resident = keys.recent(rid)
    r_pre = sample_resident[: sample_resident.rindex("{" + rid + "}") + 1]
    r_suf = "}:"
    parts = {
        "seen_pre": keys.seen_event(eid)[: -len(eid)],
        "r_pre": r_pre,
        "r_suf": r_suf,
        "a_pre": keys.active("day", "B", "D", "V")[: -len("day:B:D=V")],
        "c_pre": keys.contacts("day", "B")[: -len("day:B")],
    }
    checks = [
        (keys.seen_event(eid), parts["seen_pre"] + eid),
        (keys.active("week", "2026-W01", "nb", "x"), parts["a_pre"] + "week:2026-W01:nb=x"),
        (keys.contacts("week", "2026-W01"), parts["c_pre"] + "week:2026-W01"),
    ]
    for kind in RESIDENT_KINDS:
        checks.append((getattr(keys, kind)(rid), r_pre + rid + r_suf + kind))
    for built, scripted in checks:
        if built != scripted:
            raise KeyFormatChanged(f"Keys builds {built!r} but the ingest script would "
                                   f"write {scripted!r}")
    return parts


class StateWriter:
    """Applies batches of validated events to Redis through the batch script."""

    def __init__(self, client: redis.Redis, keys: Keys, config: StateConfig | None = None):
        self.redis = client
        self.keys = keys
        self.config = config or StateConfig()
        t = _templates(keys)
        self._header = [
            t["seen_pre"], t["r_pre"], t["r_suf"], t["a_pre"], t["c_pre"],
            keys.last_contact(), keys.active_index(), keys.funnel_index(),
            str(self.config.dedup_ttl_s), str(self.config.recent_cap),
            str(self.config.counter_ttl_s), str(self.config.recent_ttl_s),
            ",".join(RESIDENT_KINDS),
        ]
        self._apply = client.register_script(_APPLY_LUA)
        self._dlq = client.register_script(_DLQ_LUA)

    def apply(self, events: Sequence[str]) -> tuple[int, int, list[str]]:
        """Apply events, each given as its :data:`STRIDE` fields joined by ``\\x1f`` (built
        by :mod:`bouquet.streaming.batch`). Returns (applied, duplicates, erased ids)."""
        applied = dups = 0
        erased: list[str] = []
        step = self.config.script_chunk_events
        # One round trip for all chunks (pipelined), but one script call per chunk, so
        # Redis can serve other clients between chunks.
        pipe = self.redis.pipeline(transaction=False)
        # SCRIPT LOAD in the same pipeline, ahead of the calls (a no-op when the script is
        # cached): every EVALSHA after it finds the script even after a Redis restart, and
        # no separate SCRIPT EXISTS round trip holds Redis idle between two batches
        pipe.script_load(_APPLY_LUA)
        for start in range(0, len(events), step):
            pipe.evalsha(self._apply.sha, 0, *self._header, *events[start:start + step])
        for out in pipe.execute()[1:]:
            applied += int(out[0])
            dups += int(out[1])
            erased += [r.decode() if isinstance(r, bytes) else r for r in out[2:]]
        # No SCAN here: the script deleted every per-resident kind Keys can name (see
        # resident_key_kinds), atomically with the erase event's marker. A sweep of the
        # whole keyspace per erasure cost ~25% of Redis' time in the benchmark, and grows
        # with the keyspace (millions of de-duplication markers in production).
        return applied, dups, erased

    def count_dead_letters(self, letters: Iterable[tuple[str, int, int, str]]) -> int:
        """Count dead letters ``(topic, partition, offset, reason)`` once per position."""
        args: list[Any] = [str(self.config.dedup_ttl_s), self.keys.dlq_counts()]
        for topic, partition, offset, reason in letters:
            args += [self.keys.dlq_seen(topic, partition, offset), reason]
        if len(args) == 2:
            return 0
        return int(self._dlq(args=args))


def erase_resident(client: redis.Redis, keys: Keys, resident_id: str) -> None:
    """Forget a resident in the real-time state: delete all their per-resident keys, take
    them out of every active-resident set and of the last-contact ZSET.

    Idempotent, and safe to call from the admin API as well as from the consumer.
    Aggregate counters (contact counts, funnel) hold no resident id and stay. The consumer's
    erase routine, with no SCAN: every per-resident key is one of
    :data:`bouquet.core.keys.RESIDENT_KINDS` (a test holds ``Keys`` to it), and a sweep of
    the keyspace grows with it (millions of de-duplication markers) and blocks Redis.
    """
    writer_header = StateWriter(client, keys)._header
    client.eval(_ERASE_LUA, 0, *writer_header, resident_id)


def newest_event_times(client: redis.Redis, keys: Keys,
                       resident_ids: Iterable[str]) -> dict[str, float]:
    """Resident id → the newest event time (epoch s) the real-time state has seen for them:
    their last contact, profile and holdings changes (one pipelined round trip). An erasure
    takes the later of its request time and this as its cutoff (see
    :meth:`bouquet.streaming.batch.Batch.extend_erasures`)."""
    rids = list(dict.fromkeys(resident_ids))
    if not rids:
        return {}
    pipe = client.pipeline(transaction=False)
    for rid in rids:
        pipe.zscore(keys.last_contact(), rid)
        pipe.hget(keys.profile(rid), "profile_ts")
        pipe.hvals(keys.holdings_ts(rid))
    replies = pipe.execute()
    out: dict[str, float] = {}
    for i, rid in enumerate(rids):
        contact, profile, holdings = replies[3 * i: 3 * i + 3]
        times = [float(v) for v in (contact, profile, *holdings) if v is not None]
        if times:
            out[rid] = max(times)
    return out


def read_profile(client: redis.Redis, keys: Keys, resident_id: str) -> dict[str, Any]:
    """The resident's profile hash, decoded by :func:`bouquet.core.profile.decode_profile`."""
    return decode_profile(client.hgetall(keys.profile(resident_id)))
