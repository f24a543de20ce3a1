"""Real-time state in Redis: what the consumer writes, exactly once per event.

A batch's effects are **aggregated per key here**, in the consumer, and written by a few
Lua scripts (``streaming/*.lua``), so that Redis does little per event: one ``LPUSH`` per
resident with all its new contacts, one ``SADD`` per active set with all its new residents,
one ``HINCRBY`` per counter, one ``ZADD`` for every last-contact time, and the events'
de-duplication markers as members of one SET per time bucket (``SADD`` of all the ids).

**Exactly once.** Events are split into *groups*: on a single Redis, runs of whole
residents of up to ``script_chunk_events`` events; on a Redis Cluster, the residents of one
hash slot (their keys share it). For each group one ``apply_group.lua`` call checks the
events' markers and, atomically, either writes every effect of the group together with its
markers, or — if any of its events is marked already (a replay after a crash, a rebalance,
a client's re-send) — writes nothing and names them, and the group is sent again without
them: one round trip per batch, two when it held events applied before. So marker and
effects are written together or not at all, per group, and a replay has no second effect,
counters (``HINCRBY``) included.

**Redis Cluster.** A script may touch one slot only. The per-resident keys, the markers and
the outbox of a group share their slot; the engagement aggregates (active sets, last
contact, contact counters, funnel) share the ``{eng}`` slot. So on a cluster the group
script stores the group's aggregates in its slot's outbox (atomically with the markers)
and ``apply_global.lua`` applies them to ``{eng}``, once per outbox entry (its id is marked
there), after which the entry is deleted. A crash between the two leaves the entry in the
outbox: any later group script on that slot returns it (the replay of the same events
does), as does :meth:`StateWriter.drain` at a consumer's start and every erasure of a
resident of that slot, and it is applied then — once, whoever applies it. Details and the
proof sketch: ``docs/ingestion.md``.

Order matters within a resident (erase, then new contacts; subscribe, then unsubscribe):
a resident's events stay in one group, in partition order, which is per resident. Holdings
and profile updates are additionally *last-writer-wins by event time*.

Key names come from :class:`bouquet.core.keys.Keys`; the scripts receive the fixed parts of
the names they build and :func:`_templates` checks at start-up that they build exactly what
``Keys`` builds. Every key is documented in ``docs/redis-keys.md``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.exceptions import NoScriptError

from bouquet.core.events import CONTACT_TYPES
from bouquet.core.keys import RESIDENT_KINDS, Keys
from bouquet.core.profile import decode_profile
from bouquet.core.redisclient import (
    SLOTS,
    SyncClient,
    hash_slot,
    is_cluster,
    load_scripts,
    slot_tag,
)
from bouquet.core.scripts import lua_script

log = logging.getLogger(__name__)

#: Event-type → funnel stage credited when the event carries a Bouquet recommendation id.
FUNNEL_STAGES: dict[str, str] = {
    "view": "shown",
    "notify": "shown",  # an outreach message delivered
    "click": "opened",
    "open": "opened",  # an outreach message opened
    "subscribe": "subscribed",
    "use": "used",
}
#: Active-resident dimensions (``Keys.active`` ``dimension`` values) written per contact.
ACTIVE_DIMENSIONS: tuple[str, ...] = ("all", "nb", "domain", "factor", "channel")
#: Neighbourhood bucket of a resident with no declared neighbourhood.
UNKNOWN_NEIGHBOURHOOD = "_unknown"
#: The markers' hash tag on a single Redis (one marker SET per time bucket for everyone).
SINGLE_TAG = "all"

#: One event's Redis part, laid out by :mod:`bouquet.streaming.batch`: event id, resident
#: id, type, time (epoch s, text), combination (day, ISO week, channel, domain, factor),
#: payload (the ``recent`` item JSON | profile ``"k\\tv\\t…"`` | consent
#: ``"<consent|contact>\\t<0|1>\\t<receipt epoch s>"``), members (holdings ``"b:x s:y"`` |
#: dismissed bundle id), funnel key,
#: funnel stage, funnel index member.
Slot = tuple[str, str, str, str, tuple[str, str, str, str, str], str, str, str, str, str]

_CONTACTS = frozenset(CONTACT_TYPES)
_ENGINE = ("ingest_header.lua", "aggregates_fn.lua")
_GROUP_LUA = lua_script("bouquet.streaming", *_ENGINE, "apply_group.lua")
_GLOBAL_LUA = lua_script("bouquet.streaming", *_ENGINE, "apply_global.lua")
_DLQ_LUA = lua_script("bouquet.streaming", "count_dead_letters.lua")
_SCRIPTS = (_GROUP_LUA, _GLOBAL_LUA, _DLQ_LUA)


@dataclass(frozen=True)
class StateConfig:
    """Retention and caps of the real-time state (from ``Settings.ingest_*``)."""

    recent_cap: int = 50
    recent_ttl_s: int = 90 * 86400
    dedup_ttl_s: int = 3 * 86400
    counter_ttl_s: int = 120 * 86400
    #: events per script call on a single Redis: Redis runs one script at a time, so this
    #: bounds how long a serving read can wait behind ingestion (a few ms per 1,000 events)
    script_chunk_events: int = 1000


class KeyFormatChanged(RuntimeError):
    """``Keys`` builds a name the Lua scripts would not: the scripts must be updated."""


def marker_width_s(dedup_ttl_s: int) -> int:
    """Width of a marker time bucket: a third of the de-duplication window (a lookup reads
    four buckets, so a marker is kept at least the window, at most a third longer)."""
    return max(1, math.ceil(dedup_ttl_s / 3))


#: Marker buckets a lookup reads: the current one and those before (ingest_header.lua).
MARKER_BUCKETS = 4


def group_tag(resident_id: str, cluster: bool) -> str:
    """The tag of the group a resident's events are applied in, which names its marker
    SETs: the resident's hash slot on a cluster, ``all`` on a single Redis."""
    return slot_tag(hash_slot(resident_id)) if cluster else SINGLE_TAG


def applied_event_ids(client: SyncClient, keys: Keys, events: Iterable[tuple[str, str]],
                      dedup_ttl_s: int, chunk: int = 1000) -> set[str]:
    """Of ``events`` (event id, resident id), the ids whose effects ingestion has applied:
    those whose de-duplication marker is in their group's marker SETs — the current
    bucket by Redis' clock and the three before it, as the scripts look them up."""
    cluster = is_cluster(client)
    by_tag: dict[str, list[str]] = defaultdict(list)
    for event_id, resident_id in events:
        by_tag[group_tag(resident_id, cluster)].append(event_id)
    if not by_tag:
        return set()
    clock = client.time()  # a cluster client asks every primary: any one will do
    seconds = next(iter(clock.values()))[0] if isinstance(clock, dict) else clock[0]
    now_bucket = int(seconds) // marker_width_s(dedup_ttl_s)
    asked: list[list[str]] = []
    pipe = client.pipeline(transaction=False)
    for tag, ids in by_tag.items():
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            for back in range(MARKER_BUCKETS):
                pipe.smismember(keys.seen_events(tag, now_bucket - back), part)
                asked.append(part)
    found: set[str] = set()
    for ids, hits in zip(asked, pipe.execute(), strict=True):
        found.update(event_id for event_id, hit in zip(ids, hits, strict=True) if hit)
    return found


def _templates(keys: Keys) -> dict[str, str]:
    """Fixed parts of the key names the Lua scripts build, checked against ``Keys``."""
    rid = "R0"
    sample_resident = keys.recent(rid)
    r_pre = sample_resident[: sample_resident.rindex("{" + rid + "}") + 1]
    r_suf = "}:"
    parts = {
        "r_pre": r_pre,
        "r_suf": r_suf,
        "a_pre": keys.active("day", "B", "D", "V")[: -len("day:B:D=V")],
        "seen_pre": keys.seen_events("T0", 7)[: -len("T0}:7")],
        "applied_pre": keys.applied_entries(7)[:-1],
    }
    checks = [
        (keys.active("week", "2026-W01", "nb", "x"), parts["a_pre"] + "week:2026-W01:nb=x"),
        (keys.seen_events("abc", 12), parts["seen_pre"] + "abc}:12"),
        (keys.applied_entries(12), parts["applied_pre"] + "12"),
    ]
    for kind in RESIDENT_KINDS:
        checks.append((getattr(keys, kind)(rid), r_pre + rid + r_suf + kind))
    if hash_slot(keys.contactable()) != hash_slot(keys.active_index()):
        raise KeyFormatChanged("the contactable set must share the engagement aggregates' "
                               "hash tag: the aggregate records update it")
    for built, scripted in checks:
        if built != scripted:
            raise KeyFormatChanged(f"Keys builds {built!r} but the ingest scripts would "
                                   f"write {scripted!r}")
    return parts


class _Resident:
    """What one group does to one resident (see :meth:`StateWriter._group_args`)."""

    __slots__ = ("ops", "items", "last", "last_text", "combos", "run")

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self.items: list[str] = []
        self.last = -math.inf
        self.last_text = ""
        self.combos: set[tuple[str, ...]] = set()
        self.run: list[int] | None = None  # bucket indices of the open 'N' op


class StateWriter:
    """Applies batches of validated events to Redis (one server or a cluster)."""

    def __init__(self, client: SyncClient, keys: Keys, config: StateConfig | None = None):
        self.redis = client
        self.keys = keys
        self.config = config or StateConfig()
        self.cluster = is_cluster(client)
        t = _templates(keys)
        #: the scripts' first argument (ingest_header.lua), encoded once
        self._header = _pack([
            t["r_pre"], t["r_suf"], t["a_pre"], keys.last_contact(), keys.active_index(),
            keys.funnel_index(), t["seen_pre"], t["applied_pre"],
            marker_width_s(self.config.dedup_ttl_s), self.config.recent_cap,
            self.config.counter_ttl_s, self.config.recent_ttl_s, list(RESIDENT_KINDS),
            keys.contactable(),
        ])
        self._shas = {name: client.register_script(text).sha for name, text in
                      (("group", _GROUP_LUA), ("global", _GLOBAL_LUA),
                       ("dlq", _DLQ_LUA))}
        #: per combination of a contact: its day/week bucket, its active sets but the
        #: neighbourhood's (day and week key of each dimension), its contact counters
        self._combos: dict[tuple[str, ...],
                           tuple[tuple[str, str], list[tuple[str, str]], str, str]] = {}
        self._tags: dict[str, str] = {}
        load_scripts(client, _SCRIPTS)

    # --- grouping ------------------------------------------------------------------------
    def _tag(self, resident_id: str) -> str:
        """The hash-slot tag of a resident's group (``all`` on a single Redis)."""
        if not self.cluster:
            return SINGLE_TAG
        tag = self._tags.get(resident_id)
        if tag is None:
            if len(self._tags) > 1_000_000:
                self._tags.clear()
            tag = self._tags[resident_id] = group_tag(resident_id, cluster=True)
        return tag

    def _groups(self, slots: Sequence[Slot]) -> list[tuple[str, list[Slot]]]:
        """The events as (tag, events) groups; a resident's events stay in one group, in
        order. A cluster groups by hash slot; a single Redis packs whole residents into
        groups of about ``script_chunk_events`` events."""
        by_resident: dict[str, list[Slot]] = defaultdict(list)
        for s in slots:
            by_resident[s[1]].append(s)
        if self.cluster:
            by_tag: dict[str, list[Slot]] = defaultdict(list)
            for rid, events in by_resident.items():
                by_tag[self._tag(rid)].extend(events)
            return list(by_tag.items())
        step = self.config.script_chunk_events
        groups: list[tuple[str, list[Slot]]] = []
        current: list[Slot] = []
        for events in by_resident.values():
            if current and len(current) + len(events) > step:
                groups.append((SINGLE_TAG, current))
                current = []
            current.extend(events)
        if current:
            groups.append((SINGLE_TAG, current))
        return groups

    # --- one group's arguments -----------------------------------------------------------
    def _combo(self, combo: tuple[str, str, str, str, str]
               ) -> tuple[tuple[str, str], list[tuple[str, str]], str, str]:
        found = self._combos.get(combo)
        if found is None:
            day, week, channel, domain, factor = combo
            k = self.keys
            dims = [("all", "all"), ("channel", channel)]
            if domain:
                dims.append(("domain", domain))
            if factor:
                dims.append(("factor", factor))
            sets = [(k.active("day", day, d, v), k.active("week", week, d, v))
                    for d, v in dims]
            found = ((day, week), sets, k.contacts("day", day), k.contacts("week", week))
            if len(self._combos) > 100_000:
                self._combos.clear()
            self._combos[combo] = found
        return found

    def _group_args(self, tag: str, events: Sequence[Slot], entry: str) -> list[bytes]:
        """The ``apply_group.lua`` arguments of one group: the effects of its events
        aggregated per resident and per key (the script's header comment has the layout)."""
        cap = self.config.recent_cap
        eids: list[str] = []
        residents: dict[str, _Resident] = {}
        members: dict[tuple[str, ...], set[str]] = {}  # combination → its residents
        buckets: dict[tuple[str, str], int] = {}
        counters: dict[tuple[str, str], dict[str, int]] = {}
        funnels: dict[str, dict[str, int]] = {}
        arms: set[str] = set()
        for eid, rid, kind, epoch, combo, payload, held, fkey, stage, arm in events:
            eids.append(eid)
            res = residents.get(rid)
            if res is None:
                res = residents[rid] = _Resident()
            if kind in _CONTACTS:
                res.items.append(payload)
                ts = float(epoch)
                if ts > res.last:
                    res.last, res.last_text = ts, epoch
                bucket, _, day_key, week_key = self._combo(combo)
                who = members.get(combo)
                if who is None:
                    who = members[combo] = set()
                who.add(rid)
                res.combos.add(combo)
                index = buckets.setdefault(bucket, len(buckets) + 1)
                if res.run is None:
                    res.run = [index]
                    res.ops.append(("N", res.run))
                elif index not in res.run:
                    res.run.append(index)
                per_type = counters.get((day_key, week_key))
                if per_type is None:
                    per_type = counters[(day_key, week_key)] = {}
                per_type[kind] = per_type.get(kind, 0) + 1
                if kind == "subscribe" or kind == "unsubscribe":
                    res.ops.append(("S" if kind == "subscribe" else "U", epoch, held))
                elif kind == "dismiss" and held:
                    res.ops.append(("D", held))
                if fkey:
                    stages = funnels.setdefault(fkey, {})
                    stages[stage] = stages.get(stage, 0) + 1
                    arms.add(arm)
            elif kind == "erase":
                # what came before is erased with the resident (counters, which hold no
                # id, keep it): only what follows the erasure is written
                for combo_seen in res.combos:
                    members[combo_seen].discard(rid)
                res.__init__()
                res.ops.append(("E",))
            elif kind == "profile":
                res.ops.append(("P", epoch, payload))
                res.run = None  # the neighbourhood may change: later contacts re-read it
            elif kind == "consent":
                purpose_field, value, received = payload.split("\t")
                res.ops.append(("C", purpose_field, value, received))

        body: list[Any] = ["outbox" if self.cluster else "direct", tag, entry, len(eids), *eids,
                           len(buckets)]
        body += [f"{day}|{week}" for day, week in buckets]
        body.append(len(residents))
        for rid, res in residents.items():
            body += (rid, len(res.ops))
            for op in res.ops:
                if op[0] == "N":
                    body += ("N", len(op[1]), *op[1])
                else:
                    body += op
            items = res.items[-cap:]
            body += (res.last_text, len(items), *items)
        # one SADD per active set (day and week key of a dimension share the members)
        per_set: dict[tuple[str, str], set[str]] = {}
        for combo, who in members.items():
            if who:
                for pair in self._combo(combo)[1]:
                    found = per_set.get(pair)
                    if found is None:
                        per_set[pair] = set(who)
                    else:
                        found |= who
        records: list[Any] = []
        for (day_key, week_key), who in per_set.items():
            records += ("M", 2, day_key, week_key, len(who), *who)
        for (day_key, week_key), per_type in counters.items():
            total = sum(per_type.values())
            for key in (day_key, week_key):
                for kind, n in per_type.items():
                    records += ("I", key, kind, n, 1)
                records += ("I", key, "all", total, 1)
        for fkey, stages in funnels.items():
            for stage, n in stages.items():
                records += ("I", fkey, stage, n, 0)
        for arm in arms:
            records += ("F", arm)
        return [self._header, _pack(body), _pack(records)]

    # --- running scripts -----------------------------------------------------------------
    def _run(self, calls: list[tuple[str, str, list[str]]]) -> list[Any]:
        """Run ``(script name, routing key, args)`` calls in one pipeline (split by node on
        a cluster); scripts a restarted server forgot are loaded again and their calls
        re-run. Any other error is raised."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                name, key, args = calls[i]
                pipe.evalsha(self._shas[name], 1, key, *args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                break
            load_scripts(self.redis, _SCRIPTS)
            todo = missing
        return results

    def apply(self, slots: Sequence[Slot]) -> tuple[int, int, list[str]]:
        """Apply events (:data:`Slot`, built by :mod:`bouquet.streaming.batch`), each once.
        Returns (applied, duplicates, erased resident ids)."""
        if not slots:
            return 0, 0, []
        groups = self._groups(slots)
        k = self.keys
        entries: dict[tuple[str, str], bytes] = {}  # (tag, entry id) → aggregates to apply
        recovered: dict[tuple[str, str], bytes] = {}
        todo = groups
        applied = dups = 0
        erased: list[str] = []
        entry = f"{time.time_ns():016x}{uuid.uuid4().hex[:8]}"
        while todo:
            todo = [(tag, events) for tag, events in todo if events]
            calls = [("group", k.outbox(tag), self._group_args(tag, events, entry))
                     for tag, events in todo]
            again = []
            for (tag, events), reply in zip(todo, self._run(calls), strict=True):
                status = _text(reply[0])
                if status == "dup":
                    late = {_text(eid) for eid in reply[1]}
                    dups += len(late)
                    again.append((tag, [s for s in events if s[0] not in late]))
                    pending = reply[2]
                else:
                    applied += int(reply[1])
                    erased += [_text(rid) for rid in reply[2]]
                    if reply[3]:
                        entries[(tag, entry)] = reply[3]
                    pending = reply[4]
                for i in range(0, len(pending), 2):
                    recovered[(tag, _text(pending[i]))] = pending[i + 1]
            todo = again
        if self.cluster:
            self._apply_entries({**dict(sorted(recovered.items())), **entries})
        return applied, dups, erased

    def _apply_entries(self, entries: dict[tuple[str, str], bytes]) -> int:
        """Apply outbox entries ((tag, id) → aggregates) to the ``{eng}`` slot, each once,
        then delete them from their outboxes. Returns how many were applied now."""
        if not entries:
            return 0
        calls: list[tuple[str, str, list[Any]]] = []
        ids: list[str] = []
        payloads: list[bytes] = []
        for n, ((tag, entry), payload) in enumerate(entries.items(), 1):
            ids.append(f"{tag}:{entry}")
            payloads.append(payload)
            if n % self.config.script_chunk_events == 0 or n == len(entries):
                # bounded calls, like the groups': Redis serves others between them
                calls.append(("global", self.keys.active_index(),
                              [self._header, _pack(ids), *payloads]))
                ids, payloads = [], []
        fresh = sum(int(reply) for reply in self._run(calls))
        pipe = self.redis.pipeline(transaction=False)
        for tag, entry in entries:
            pipe.hdel(self.keys.outbox(tag), entry)
        pipe.execute()
        return fresh

    def drain(self) -> int:
        """Apply what a crashed consumer left in the outboxes (Redis Cluster; nothing to do
        on a single Redis, where groups apply their aggregates themselves). Reads every
        slot's outbox by name — no SCAN. Returns how many entries were applied."""
        if not self.cluster:
            return 0
        tags = [slot_tag(slot) for slot in range(SLOTS)]
        pipe = self.redis.pipeline(transaction=False)
        for tag in tags:
            pipe.hgetall(self.keys.outbox(tag))
        entries = {}
        for tag, found in zip(tags, pipe.execute(), strict=True):
            for entry, payload in found.items():
                entries[(tag, _text(entry))] = payload
        fresh = self._apply_entries(dict(sorted(entries.items())))
        if entries:
            log.info("applied %d of %d outbox entries left by an interrupted write", fresh,
                     len(entries))
        return fresh

    def erase(self, resident_id: str) -> None:
        """Forget a resident in the real-time state (see :func:`erase_resident`)."""
        tag = self._tag(resident_id)
        entry = f"{time.time_ns():016x}{uuid.uuid4().hex[:8]}"
        body = ["outbox" if self.cluster else "direct", tag, entry,
                0, 0, 1, resident_id, 1, "E", "", 0]
        reply = self._run([("group", self.keys.outbox(tag),
                            [self._header, _pack(body), _pack([])])])[0]
        if self.cluster:
            entries = {(tag, _text(reply[4][i])): reply[4][i + 1]
                       for i in range(0, len(reply[4]), 2)}
            entries = dict(sorted(entries.items()))
            entries[(tag, entry)] = reply[3]  # after what was pending there
            self._apply_entries(entries)

    def count_dead_letters(self, letters: Iterable[tuple[str, int, int, str]]) -> int:
        """Count dead letters ``(topic, partition, offset, reason)`` once per position."""
        args: list[Any] = [str(self.config.dedup_ttl_s)]
        for topic, partition, offset, reason in letters:
            args += [self.keys.dlq_seen(topic, partition, offset), reason]
        if len(args) == 1:
            return 0
        return int(self._run([("dlq", self.keys.dlq_counts(), args)])[0])


_pack = msgspec.msgpack.Encoder().encode


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def erase_resident(client: SyncClient, keys: Keys, resident_id: str) -> None:
    """Forget a resident in the real-time state: delete all their per-resident keys, take
    them out of every active-resident set, of the last-contact ZSET and of the contactable set.

    Idempotent, and safe to call from the admin API as well as from the consumer.
    Aggregate counters (contact counts, funnel) hold no resident id and stay. No SCAN:
    every per-resident key is one of :data:`bouquet.core.keys.RESIDENT_KINDS` (a test holds
    ``Keys`` to it), and the active sets are listed in their index. On a cluster, what an
    interrupted write left in the resident's slot's outbox is applied first, so it cannot
    bring the resident back afterwards.
    """
    StateWriter(client, keys).erase(resident_id)


def newest_event_times(client: SyncClient, keys: Keys,
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


def read_profile(client: SyncClient, keys: Keys, resident_id: str) -> dict[str, Any]:
    """The resident's profile hash, decoded by :func:`bouquet.core.profile.decode_profile`."""
    return decode_profile(client.hgetall(keys.profile(resident_id)))
