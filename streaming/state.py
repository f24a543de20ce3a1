"""Real-time state in Redis: what the consumer writes, exactly once per event.

Every Redis effect of a batch is applied by a **Lua script** (:data:`_APPLY_LUA`, one call
per 1,000 events), which
for each event first sets the event's de-duplication marker (``Keys.seen_event``, ``SET NX
EX``) and applies the event's effects only when the marker was new. A script runs
atomically, so the marker and the effects are either both written or neither: a batch
redelivered after a crash, a rebalance, or a client that re-sent an event, has no second
effect — including the counters (``HINCRBY``) that are not idempotent by construction.
One script call per 1,000 events also means one round trip per 1,000 events, and a
bounded time (~10-20 ms) during which Redis serves nobody else.

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

import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bouquet.core.keys import Keys

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
#: Per-resident key kinds the consumer writes (``Keys`` method names).
RESIDENT_KEY_KINDS: tuple[str, ...] = ("recent", "profile", "holdings", "holdings_ts",
                                       "dismissed")
#: Number of ARGV slots per event in the batch script.
STRIDE = 10
#: Keys examined per SCAN step when sweeping an erased resident's other keys.
SWEEP_SCAN_COUNT = 20_000
#: Fields of the profile hash that hold booleans, stored as "1"/"0".
PROFILE_BOOLEANS = ("student", "low_income")

# The erasure routine shared by the batch script and :func:`erase_resident`: delete the
# resident's own keys, take them out of every active-resident set (listed in the index,
# so no SCAN is needed) and out of the last-contact ZSET. Index entries whose set has
# expired are pruned on the way.
_ERASE_FN = """
local function erase(rid)
  local base = R_PRE .. rid .. R_SUF
  for _, kind in ipairs(KINDS) do redis.call('DEL', base .. kind) end
  redis.call('ZREM', LAST, rid)
  for _, k in ipairs(redis.call('SMEMBERS', AIDX)) do
    if redis.call('SREM', k, rid) == 0 and redis.call('EXISTS', k) == 0 then
      redis.call('SREM', AIDX, k)
    end
  end
end
"""

_HEADER = """
local SEEN_PRE, R_PRE, R_SUF, A_PRE, C_PRE = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local LAST, AIDX, FIDX = ARGV[6], ARGV[7], ARGV[8]
local SEEN_TTL, CAP, COUNTER_TTL = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local RECENT_TTL = tonumber(ARGV[12])
local KINDS = {}
for kind in string.gmatch(ARGV[13], '[^,]+') do KINDS[#KINDS + 1] = kind end
local FIRST = 14
"""

#: Apply a batch of events. ARGV: the header above, then one argument per event, its
#: :data:`STRIDE` fields joined by ``\x1f``: event_id, resident_id, type, ts (epoch s),
#: combination "day|week|channel|domain|factor", payload (recent item JSON | profile
#: "k\tv\t…" | consent "0"/"1"), members (holdings "b:x s:y" | dismissed bundle id),
#: funnel key, funnel stage, funnel index member ("<model_version>:<variant>").
#: Returns {applied, duplicates, erased resident ids...}.
#:
#: Effects that are set unions, sums or maxima (recent pushes, last contact, active sets,
#: counters) are gathered in Lua tables and written once per key at the end, which cuts
#: the Redis calls to ~4 per event (marker, neighbourhood look-up, recent push and TTL);
#: an erasure in the middle of the batch drops what was gathered for that resident before
#: it, so order is kept. Per contact, the resident goes into the *day* sets of its
#: dimensions only: a week set is the union of its days', so each day set's members are
#: written to the week set as well (half the Lua work per event of gathering both).
_APPLY_LUA = _HEADER + _ERASE_FN + """local applied, dups = 0, 0
local erased = {}
local nb_cache = {}
local recent, recent_order = {}, {}  -- rid -> items oldest→newest (at most CAP)
local lastc, lastc_text = {}, {}       -- rid -> max contact ts (number, as given)
local day_sets = {}                    -- day active key -> {rid -> true}
local day_keys = {}                    -- day active keys, in creation order
local week_of = {}                     -- day active key -> the week key of the same dimension
local combos = {}                      -- "day|week|channel|domain|factor" -> names (below)
local counts = {}                      -- "day|week" -> {type -> n}
local count_keys = {}                  -- "day|week" -> {contacts day key, contacts week key}
local funnels = {}                     -- funnel key -> {stage -> n}
local funnel_members = {}

local PATTERN = '^' .. string.rep('([^\\31]*)\\31', 9) .. '([^\\31]*)$'

-- the key names of one combination, built once per script call
local function names_of(combo0)
  local day, week, channel, domain, factor =
    string.match(combo0, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  local dims = {'all=all', 'channel=' .. channel}
  if domain ~= '' then dims[#dims + 1] = 'domain=' .. domain end
  if factor ~= '' then dims[#dims + 1] = 'factor=' .. factor end
  local dayp, weekp = A_PRE .. 'day:' .. day .. ':', A_PRE .. 'week:' .. week .. ':'
  local sets = {}
  for _, d in ipairs(dims) do
    local k = dayp .. d
    local s = day_sets[k]
    if not s then
      s = {}; day_sets[k] = s; day_keys[#day_keys + 1] = k; week_of[k] = weekp .. d
    end
    sets[#sets + 1] = s
  end
  local dw = day .. '|' .. week
  if not counts[dw] then
    counts[dw] = {}; count_keys[dw] = {C_PRE .. 'day:' .. day, C_PRE .. 'week:' .. week}
  end
  local names = {sets = sets, dayp = dayp .. 'nb=', weekp = weekp .. 'nb=', nb = {},
                 counts = counts[dw]}
  combos[combo0] = names
  return names
end

-- the neighbourhood set of a combination (created on first use)
local function nb_set(names, nb)
  local s = names.nb[nb]
  if not s then
    local k = names.dayp .. nb
    s = day_sets[k]
    if not s then
      s = {}; day_sets[k] = s; day_keys[#day_keys + 1] = k; week_of[k] = names.weekp .. nb
    end
    names.nb[nb] = s
  end
  return s
end

for a = FIRST, #ARGV do
  local eid, rid, typ, tstext, combo0, payload, members, fkey, stage, fmember =
    string.match(ARGV[a], PATTERN)
  if redis.call('SET', SEEN_PRE .. eid, '1', 'NX', 'EX', SEEN_TTL) then
    applied = applied + 1
    if typ == 'erase' then
      erase(rid)
      nb_cache[rid] = nil
      if recent[rid] then recent[rid] = {} end  -- keeps its single place in recent_order
      lastc[rid] = nil
      lastc_text[rid] = nil
      for _, s in pairs(day_sets) do s[rid] = nil end
      erased[#erased + 1] = rid
    elseif typ == 'profile' then
      local pk = R_PRE .. rid .. R_SUF .. 'profile'
      local ts = tonumber(tstext)
      local cur = tonumber(redis.call('HGET', pk, 'profile_ts') or '-1e300')
      if ts >= cur then
        local args = {}
        for part in string.gmatch(payload, '[^\\t]+') do args[#args + 1] = part end
        args[#args + 1] = 'profile_ts'; args[#args + 1] = tstext
        redis.call('HSET', pk, unpack(args))
        nb_cache[rid] = nil
      end
    elseif typ == 'consent' then
      local pk = R_PRE .. rid .. R_SUF .. 'profile'
      local cur = tonumber(redis.call('HGET', pk, 'consent_ts') or '-1e300')
      if tonumber(tstext) >= cur then
        redis.call('HSET', pk, 'consent', payload, 'consent_ts', tstext)
      end
    else
      -- a contact
      local ts = tonumber(tstext)
      local items = recent[rid]
      if not items then
        items = {}; recent[rid] = items; recent_order[#recent_order + 1] = rid
      end
      items[#items + 1] = payload
      if #items > CAP then table.remove(items, 1) end
      local lc = lastc[rid]
      if not lc or lc < ts then lastc[rid] = ts; lastc_text[rid] = tstext end
      local nb = nb_cache[rid]
      if not nb then
        nb = redis.call('HGET', R_PRE .. rid .. R_SUF .. 'profile', 'neighbourhood')
          or '_unknown'
        nb_cache[rid] = nb
      end
      local names = combos[combo0] or names_of(combo0)
      local sets = names.sets
      for j = 1, #sets do sets[j][rid] = true end
      nb_set(names, nb)[rid] = true
      local c = names.counts
      c[typ] = (c[typ] or 0) + 1
      if typ == 'subscribe' or typ == 'unsubscribe' then
        local base = R_PRE .. rid .. R_SUF
        local hk, htk = base .. 'holdings', base .. 'holdings_ts'
        for m in string.gmatch(members, '%S+') do
          local cur = tonumber(redis.call('HGET', htk, m) or '-1e300')
          if ts >= cur then
            redis.call('HSET', htk, m, tstext)
            if typ == 'subscribe' then redis.call('SADD', hk, m)
            else redis.call('SREM', hk, m) end
          end
        end
      elseif typ == 'dismiss' and members ~= '' then
        redis.call('SADD', R_PRE .. rid .. R_SUF .. 'dismissed', members)
      end
      if fkey ~= '' then
        local f = funnels[fkey]
        if not f then f = {}; funnels[fkey] = f end
        f[stage] = (f[stage] or 0) + 1
        funnel_members[fmember] = true
      end
    end
  else
    dups = dups + 1
  end
end

-- gathered writes, in chunks that stay far below Lua's unpack limit
local CHUNK = 1000
local function sadd_all(key, list)
  for i = 1, #list, CHUNK do
    redis.call('SADD', key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end
for _, rid in ipairs(recent_order) do
  local items = recent[rid]
  if #items > 0 then
    local rk = R_PRE .. rid .. R_SUF .. 'recent'
    if redis.call('LPUSH', rk, unpack(items)) > CAP then redis.call('LTRIM', rk, 0, CAP - 1) end
    redis.call('EXPIRE', rk, RECENT_TTL)
  end
end
local zargs = {}
for rid, text in pairs(lastc_text) do
  zargs[#zargs + 1] = text; zargs[#zargs + 1] = rid
  if #zargs >= 2 * CHUNK then redis.call('ZADD', LAST, 'GT', unpack(zargs)); zargs = {} end
end
if #zargs > 0 then redis.call('ZADD', LAST, 'GT', unpack(zargs)) end
-- each day set, then the same members into its week set (a week's set is the union of
-- its days'); every key written goes into the index once, and gets its TTL once
local written, seen_week = {}, {}
for _, key in ipairs(day_keys) do
  local m = {}
  for rid, _ in pairs(day_sets[key]) do m[#m + 1] = rid end
  local wk = week_of[key]
  if #m > 0 then sadd_all(key, m); sadd_all(wk, m) end
  written[#written + 1] = key
  if not seen_week[wk] then seen_week[wk] = true; written[#written + 1] = wk end
end
if #written > 0 then sadd_all(AIDX, written) end
for _, key in ipairs(written) do redis.call('EXPIRE', key, COUNTER_TTL) end
for dw, fields in pairs(counts) do
  local total = 0
  local cd, cw = count_keys[dw][1], count_keys[dw][2]
  for field, n in pairs(fields) do
    redis.call('HINCRBY', cd, field, n); redis.call('HINCRBY', cw, field, n)
    total = total + n
  end
  if total > 0 then
    redis.call('HINCRBY', cd, 'all', total); redis.call('HINCRBY', cw, 'all', total)
    redis.call('EXPIRE', cd, COUNTER_TTL); redis.call('EXPIRE', cw, COUNTER_TTL)
  end
end
for key, stages in pairs(funnels) do
  for field, n in pairs(stages) do redis.call('HINCRBY', key, field, n) end
end
local fm = {}
for member, _ in pairs(funnel_members) do fm[#fm + 1] = member end
if #fm > 0 then sadd_all(FIDX, fm) end
local out = {applied, dups}
for _, rid in ipairs(erased) do out[#out + 1] = rid end
return out
"""

#: Erase one resident (ARGV: header, then the resident id).
_ERASE_LUA = _HEADER + _ERASE_FN + """
erase(ARGV[FIRST])
return 1
"""

#: Count each dead letter once per source position (ARGV: ttl, dlq-counts key, then pairs
#: of marker key, reason).
_DLQ_LUA = """
local ttl, hk = tonumber(ARGV[1]), ARGV[2]
local counted = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    redis.call('HINCRBY', hk, ARGV[i + 1], 1)
    counted = counted + 1
  end
end
return counted
"""


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


def resident_key_kinds(keys: Keys) -> tuple[str, ...]:
    """Every per-resident key kind ``keys`` can name: the consumer's own
    (:data:`RESIDENT_KEY_KINDS`) and those of any other ``Keys`` method that takes only a
    resident id and builds ``<p>r:{<rid>}:<kind>``, so a component that adds one is covered
    by the erasure in the batch script without touching the consumer.

    Keys built otherwise (more parameters, or by hand, which docs/redis-keys.md forbids)
    are not found here; :func:`erase_resident` (the admin path) also SCANs for them.
    """
    probe = "R0"
    own = keys.recent(probe)
    base = own[: -len("recent")]  # <p>r:{R0}:
    found = list(RESIDENT_KEY_KINDS)
    for name in sorted(dir(keys)):
        method = getattr(keys, name, None)
        if name.startswith("_") or name == "resident_pattern" or not callable(method):
            continue
        try:
            params = list(inspect.signature(method).parameters)
        except (TypeError, ValueError):
            continue
        if params != ["resident_id"]:
            continue
        built = method(probe)
        if isinstance(built, str) and built.startswith(base) \
                and _KIND.fullmatch(built[len(base):]) and built[len(base):] not in found:
            found.append(built[len(base):])
    return tuple(found)


_KIND = re.compile(r"[A-Za-z0-9_]+")


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
    for kind in RESIDENT_KEY_KINDS:
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
            ",".join(resident_key_kinds(keys)),
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


def sweep_resident_keys(client: redis.Redis, keys: Keys, resident_id: str,
                        keep: Iterable[str] = ()) -> int:
    """Delete every ``r:{rid}:*`` key except the kinds in ``keep`` (SCAN; for keys other
    components add per resident). Returns how many were deleted."""
    pattern = keys.resident_pattern(resident_id)
    kept = {getattr(keys, kind)(resident_id) for kind in keep}
    # SCAN walks the whole keyspace (de-duplication markers included: millions of keys);
    # large steps keep the round trips few (each step blocks Redis ~1-2 ms, less than one
    # script chunk)
    doomed = [k for k in client.scan_iter(match=pattern, count=SWEEP_SCAN_COUNT)
              if (k.decode() if isinstance(k, bytes) else k) not in kept]
    if doomed:
        client.delete(*doomed)
    return len(doomed)


def erase_resident(client: redis.Redis, keys: Keys, resident_id: str) -> None:
    """Forget a resident in the real-time state: delete all their per-resident keys, take
    them out of every active-resident set and of the last-contact ZSET.

    Idempotent, and safe to call from the admin API (issue 8) as well as from the
    consumer. Aggregate counters (contact counts, funnel) hold no resident id and stay.
    Reuses the consumer's erase routine, then sweeps ``Keys.resident_pattern`` for
    per-resident keys written by other components.
    """
    writer_header = StateWriter(client, keys)._header
    client.eval(_ERASE_LUA, 0, *writer_header, resident_id)
    sweep_resident_keys(client, keys, resident_id)


def read_profile(client: redis.Redis, keys: Keys, resident_id: str) -> dict[str, Any]:
    """The resident's profile hash decoded for :func:`bouquet.core.catalog.eligibility_failure`:
    booleans as bool, ``consent`` as bool (False when never given), bookkeeping fields
    (``*_ts``) dropped."""
    raw = client.hgetall(keys.profile(resident_id))
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else k
        value = v.decode() if isinstance(v, bytes) else v
        if key.endswith("_ts"):
            continue
        out[key] = value == "1" if key in (*PROFILE_BOOLEANS, "consent") else value
    out.setdefault("consent", False)
    return out
