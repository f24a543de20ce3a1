"""The online store: the Redis reads (and the consent write) of the serving routes, behind one
small class.

Routes never build keys or pipelines themselves (STYLE.md: "Redis access behind a small
store class"). A recommendation request is **one round trip** (one read-only Lua script,
see :meth:`OnlineStore.resident`) fetching the resident's precomputed list of the version
being served together with the real-time state the consumer keeps (profile, holdings,
dismissed, recent events). The per-resident key formats are the consumer's
(docs/redis-keys.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from bouquet.core.keys import Keys
from bouquet.core.profile import CONSENT_FIELDS, decode_profile
from bouquet.core.scripts import lua_script
from bouquet.models.online import PublishedVersion, decode_meta, unpack_list

log = logging.getLogger(__name__)

def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass
class RecentEvent:
    type: str
    service_id: str | None
    bundle_id: str | None
    ts: float | None = None
    #: the answer it followed (a ``view`` with one is an impression Bouquet made)
    recommendation_id: str | None = None


def parse_recent(items: list[Any]) -> list[RecentEvent]:
    """Items of the ``recent`` list (JSON objects, newest first); bad items are skipped.

    Decoded with one ``json.loads`` of the joined items (one call instead of one per item);
    if that fails, item by item, so one corrupt item costs only itself. Accepts the
    consumer's compact field names and the event's own, so the format can grow.
    """
    if not items:
        return []
    try:
        raw = [_text(i) for i in items]
        objects = json.loads("[" + ",".join(raw) + "]")
        if len(objects) != len(raw):
            raise ValueError("item count changed")
    except (ValueError, TypeError):
        objects = []
        for item in items:
            try:
                objects.append(json.loads(item))
            except (ValueError, TypeError):
                continue
    out = []
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type", obj.get("t"))
        service = obj.get("service_id", obj.get("s"))
        bundle = obj.get("bundle_id", obj.get("b"))
        ts = obj.get("ts")
        reference = obj.get("recommendation_id")
        if not isinstance(kind, str):
            continue
        out.append(RecentEvent(kind, service if isinstance(service, str) else None,
                               bundle if isinstance(bundle, str) else None,
                               ts if isinstance(ts, (int, float)) else None,
                               reference if isinstance(reference, str) else None))
    return out


@dataclass
class ResidentState:
    """What one request knows about one resident."""

    precomputed: Any  # packed entries (numpy structured array), maybe empty
    profile: dict[str, Any] = field(default_factory=dict)
    holdings: set[str] = field(default_factory=set)
    dismissed: set[str] = field(default_factory=set)
    recent: list[RecentEvent] = field(default_factory=list)

    @property
    def consent(self) -> bool:
        return self.profile.get("consent") is True

    @property
    def neighbourhood(self) -> str | None:
        return self.profile.get("neighbourhood") or None

    @property
    def known(self) -> bool:
        return bool(len(self.precomputed) or self.profile or self.holdings or self.recent)


_READ_LUA = lua_script("bouquet.serving", "read_resident.lua")
_CONSENT_LUA = lua_script("bouquet.serving", "set_consent.lua")


class OnlineStore:
    """Keyed reads of the published keyspace and the per-resident real-time state."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, recent_n: int = 20) -> None:
        self.redis = redis
        self.keys = keys
        self.recent_n = recent_n
        self._read = redis.register_script(_READ_LUA)
        self._consent = redis.register_script(_CONSENT_LUA)

    async def set_consent(self, resident_id: str, consent: bool, at: datetime,
                          purpose: str = "personalisation") -> bool:
        """Record a consent decision of ``purpose`` received at ``at`` (server time, to the
        millisecond: the Kafka time stamp its event carries) in the real-time profile, the
        later receipt winning (the consumer's rule for consent events); False when a later
        decision already stands. Contact consent also keeps the outreach planner's
        contactable set (``{eng}`` slot), in a second call after the profile write, so that
        the script stays on the resident's own hash slot (a Redis Cluster allows no other).
        A crash between the two leaves the set stale until the consumer applies this
        decision's event (same receipt time: it writes the same decision and updates the
        set); harmless meanwhile, because the set is only an index of the profile's
        ``contact`` field, which the planner re-checks."""
        field = CONSENT_FIELDS[purpose]
        applied = bool(int(await self._consent(
            keys=[self.keys.profile(resident_id)],
            args=[field, "1" if consent else "0", f"{at.timestamp():.3f}"])))
        if applied and purpose == "contact":
            if consent:
                await self.redis.sadd(self.keys.contactable(), resident_id)
            else:
                await self.redis.srem(self.keys.contactable(), resident_id)
        return applied

    async def pointers(self, names: Iterable[str]) -> dict[str, str | None]:
        """Current keyspace version of ``current`` and of each named experiment pointer."""
        names = list(names)
        keys = [self.keys.current_version() if n == "current" else self.keys.variant_pointer(n)
                for n in names]
        # GETs in a pipeline, not one MGET: the pointers need not share a Redis Cluster
        # slot, and a cluster client splits a pipeline by node (one round trip on one Redis)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = await pipe.execute()
        return {n: (_text(v) if v is not None else None) for n, v in zip(names, values,
                                                                         strict=True)}

    async def load_version(self, version: str, neighbourhoods: Iterable[str]) -> PublishedVersion:
        """Load the serving model and popular lists of one published version."""
        neighbourhoods = ["_all", *neighbourhoods]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.version_meta(version))
        pipe.get(self.keys.version_model(version))
        for kind in ("b", "s"):
            for nb in neighbourhoods:
                pipe.get(self.keys.popular(version, nb, kind))
        meta_raw, blob, *popular = await pipe.execute()
        if not meta_raw or blob is None:
            raise LookupError(f"keyspace {version!r} has no meta or model (expired?)")
        meta = decode_meta(meta_raw)
        model = PublishedVersion.from_stored(version, meta, blob)
        self._add_popular(model, neighbourhoods, popular)
        segments = list(model.model.segments)
        if segments:  # named by the model, so read once it is loaded
            pipe = self.redis.pipeline(transaction=False)
            for kind in ("b", "s"):
                for segment in segments:
                    pipe.get(self.keys.popular(version, segment, kind))
            self._add_popular(model, segments, await pipe.execute())
        return model

    @staticmethod
    def _add_popular(model: PublishedVersion, names: list[str], replies: list[Any]) -> None:
        """Popular lists read for ``names``, bundles then services, into ``model``."""
        lists = iter(replies)
        for kind in ("b", "s"):
            for name in names:
                entries = unpack_list(next(lists))
                if len(entries):
                    model.popular[(kind, name)] = entries

    async def resident(self, version: str | None, resident_id: str, kind: str = "b",
                       *, with_recent: bool = True) -> ResidentState:
        """One round trip: precomputed list + profile + holdings + dismissed (+ recent).

        A read-only Lua script rather than a pipeline: one command to encode and one reply
        to parse instead of five, which is most of the client-side cost at these sizes. Every
        key carries the resident's ``{rid}`` hash tag, so on Redis Cluster they share a slot
        and the script stays legal.
        """
        k = self.keys
        keys = [k.profile(resident_id), k.holdings(resident_id), k.dismissed(resident_id),
                k.recent(resident_id)]
        if version is not None:
            keys.append(k.recs(version, resident_id, kind))
        profile, holdings, dismissed, recent, packed = await self._read(
            keys=keys, args=[self.recent_n if with_recent else 0])
        flat = iter(profile)
        return ResidentState(
            precomputed=unpack_list(packed or None),
            profile=decode_profile(dict(zip(flat, flat, strict=False))),
            holdings={_text(h) for h in holdings},
            dismissed={_text(d) for d in dismissed},
            recent=parse_recent(recent),
        )

    async def bare_get(self, version: str, resident_id: str) -> bytes | None:
        """One GET of a precomputed list: the benchmark's floor."""
        return await self.redis.get(self.keys.recs(version, resident_id, "b"))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
