"""Every Redis key Bouquet uses, in one place (documented in docs/redis-keys.md).

Keys are built only through :class:`Keys`, so the prefix (``BOUQUET_REDIS_KEY_PREFIX``)
is applied everywhere and erasure can enumerate what a resident touches. Resident ids
are validated (``[A-Za-z0-9_-]{1,64}``) before any key is built from them, so a crafted
id cannot reach another key.

Hash tags (the part of a name between ``{`` and ``}``) decide the Redis Cluster slot, and a
script may only touch keys of one slot: per-resident keys share the ``{rid}`` tag (one
resident's keys, and the precomputed lists of every version, on one slot); ingestion's
de-duplication markers and outbox carry the tag of their residents' slot (a string from
:func:`bouquet.core.redisclient.slot_tag`, never the id); the engagement aggregates share
``{eng}`` and the dead-letter counters ``{dlq}``, so that each family is updated by one
script on one slot (docs/redis-keys.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SAFE_PART = re.compile(r"^[A-Za-z0-9_.:=-]{1,120}$")


class UnsafeKeyPart(ValueError):
    """A value that must not be used inside a Redis key."""


def _resident(resident_id: str) -> str:
    if not isinstance(resident_id, str) or not _SAFE_ID.match(resident_id):
        raise UnsafeKeyPart(f"resident id {resident_id!r} is not [A-Za-z0-9_-]{{1,64}}")
    return resident_id


def _part(value: str) -> str:
    if not isinstance(value, str) or not _SAFE_PART.match(value):
        raise UnsafeKeyPart(f"key part {value!r} is not allowed")
    return value


#: Every per-resident key kind: each is a :class:`Keys` method of that name taking only a
#: resident id and building ``<prefix>r:{<rid>}:<kind>``. Erasure deletes exactly these
#: (atomically, in the ingestion script); a new per-resident key is added here too.
RESIDENT_KINDS: tuple[str, ...] = ("recent", "profile", "holdings", "holdings_ts",
                                   "dismissed", "outreach")


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix. Methods return ``str``; nothing here talks to Redis."""

    prefix: str = "bq:"

    # --- per resident (real-time state written by the consumer) ------------------------
    def recent(self, resident_id: str) -> str:
        """LIST of the resident's latest contacts, newest first, capped (JSON items)."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:recent"

    def profile(self, resident_id: str) -> str:
        """HASH of declared attributes (neighbourhood, age_band, …, outreach ``channels`` and
        ``quiet_hours``), ``consent`` (personalisation) and ``contact`` (outreach), 0/1."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:profile"

    def holdings(self, resident_id: str) -> str:
        """SET of ``b:<bundle_id>`` / ``s:<service_id>`` the resident subscribes to."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:holdings"

    def dismissed(self, resident_id: str) -> str:
        """SET of bundle ids the resident dismissed (never shown again)."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:dismissed"

    def holdings_ts(self, resident_id: str) -> str:
        """HASH ``b:<id>``/``s:<id>`` → epoch seconds of the latest subscribe/unsubscribe
        applied to ``holdings``, so an older event arriving late cannot undo a newer one."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:holdings_ts"

    def outreach(self, resident_id: str) -> str:
        """HASH of the outreach planner's record of the resident: ``sent`` (send times of
        recent nudges), ``pending`` (nudges whose outcome is not settled yet), ``streak``
        (nudges in a row not opened), ``paused_until``; with a TTL, refreshed on write."""
        return f"{self.prefix}r:{{{_resident(resident_id)}}}:outreach"

    def resident_keys(self, resident_id: str) -> list[str]:
        """Every per-resident key of :data:`RESIDENT_KINDS` for one resident."""
        return [getattr(self, kind)(resident_id) for kind in RESIDENT_KINDS]

    def profiles_pattern(self) -> str:
        """SCAN pattern of every resident's profile hash."""
        return f"{self.prefix}r:{{*}}:profile"

    # --- engagement counters (one hash tag: one cluster slot) ---------------------------
    def last_contact(self) -> str:
        """ZSET resident id → epoch seconds of the resident's latest contact."""
        return f"{self.prefix}{{eng}}:last_contact"

    def active(self, period: str, bucket: str, dimension: str = "all", value: str = "all") -> str:
        """SET of residents with a contact in ``period`` ∈ {day, week} ``bucket``
        (``2026-11-27`` or ``2026-W48``), optionally for one ``dimension`` value
        (``nb``=neighbourhood, ``domain``, ``channel``, ``factor``)."""
        if period not in ("day", "week"):
            raise UnsafeKeyPart(f"period {period!r} is not day or week")
        return (f"{self.prefix}{{eng}}:active:{period}:{_part(bucket)}:"
                f"{_part(dimension)}={_part(value)}")

    def active_index(self) -> str:
        """SET of every ``active`` key written, so erasure and reports need no SCAN."""
        return f"{self.prefix}{{eng}}:active:index"

    def contacts(self, period: str, bucket: str) -> str:
        """HASH of contact counts in a day/week bucket, field = ``type`` or ``all``."""
        return f"{self.prefix}{{eng}}:contacts:{_part(period)}:{_part(bucket)}"

    def funnel(self, model_version: str, variant: str) -> str:
        """HASH of funnel stage → count (shown, opened, subscribed, used) for one model
        version and experiment variant."""
        return f"{self.prefix}{{eng}}:funnel:{_part(model_version)}:{_part(variant)}"

    def funnel_index(self) -> str:
        """SET of ``<model_version>:<variant>`` pairs that have a funnel hash."""
        return f"{self.prefix}{{eng}}:funnel:index"

    def applied_entries(self, bucket: int) -> str:
        """SET of ingestion outbox entries (``<slot tag>:<entry id>``) whose aggregates were
        applied, in the time bucket ``bucket`` (see :meth:`seen_events`)."""
        return f"{self.prefix}{{eng}}:applied:{int(bucket)}"

    # --- ingestion bookkeeping ----------------------------------------------------------
    def seen_events(self, tag: str, bucket: int) -> str:
        """SET of the ids of events whose effects were applied, for the residents of one
        hash-slot tag (``all`` on a single Redis), written during time bucket ``bucket``
        (``floor(epoch s / width)``, width a third of the de-duplication window): a marker
        is kept at least the window."""
        return f"{self.prefix}ingest:seen:{{{_part(tag)}}}:{int(bucket)}"

    def outbox(self, tag: str) -> str:
        """HASH entry id → the engagement aggregates of one applied group of events of a
        hash-slot tag, until they are applied to the ``{eng}`` slot (Redis Cluster only)."""
        return f"{self.prefix}ingest:outbox:{{{_part(tag)}}}"

    def dlq_counts(self) -> str:
        """HASH of dead-letter reason → count."""
        return f"{self.prefix}ingest:{{dlq}}:counts"

    def dlq_seen(self, topic: str, partition: int, offset: int) -> str:
        """STRING marker that a dead letter from this source position was counted, with TTL
        (so a redelivered bad message is not counted twice)."""
        return (f"{self.prefix}ingest:{{dlq}}:seen:{_part(topic)}:{int(partition)}:"
                f"{int(offset)}")

    # --- published recommendations (versioned keyspace) --------------------------------
    def current_version(self) -> str:
        """STRING: the keyspace version serving reads; switched atomically by publish."""
        return f"{self.prefix}rec:current"

    def version_meta(self, version: str) -> str:
        """HASH: model_version, run_id, published_at, residents, … for one keyspace."""
        return f"{self.prefix}rec:{_part(version)}:meta"

    def recs(self, version: str, resident_id: str, kind: str = "b") -> str:
        """STRING (JSON) of a resident's precomputed top list; kind ``b`` bundles, ``s``
        services."""
        return f"{self.prefix}rec:{_part(version)}:{_part(kind)}:{{{_resident(resident_id)}}}"

    def popular(self, version: str, neighbourhood: str = "_all", kind: str = "b") -> str:
        """STRING (JSON) of the popular list for a neighbourhood (``_all`` = city-wide)."""
        return f"{self.prefix}rec:{_part(version)}:pop:{_part(kind)}:{_part(neighbourhood)}"

    def versions(self) -> str:
        """ZSET of published versions by publish time (for expiry and audit)."""
        return f"{self.prefix}rec:versions"

    def version_model(self, version: str) -> str:
        """STRING (npz bytes): what serving needs of the model that produced a keyspace
        (service factors, bundle matrix, Gram matrix), so a serving process loads the model
        and the lists of one version from one place."""
        return f"{self.prefix}rec:{_part(version)}:model"

    def variant_pointer(self, name: str) -> str:
        """STRING: the keyspace version an experiment variant reads (``bouquet publish
        --pointer NAME``); the champion reads :meth:`current_version`."""
        return f"{self.prefix}rec:ptr:{_part(name)}"

    # --- outreach -------------------------------------------------------------------------
    def contactable(self) -> str:
        """SET of residents whose latest contact consent is a grant: where the outreach
        planner starts (it re-checks each one's profile, which is the truth). An index kept
        with the profile's ``contact`` field by ingestion (an aggregate record, so it shares
        the ``{eng}`` slot) and by the consent API; erasure removes the resident."""
        return f"{self.prefix}{{eng}}:out:contactable"

    # --- the HTTP API -------------------------------------------------------------------
    def rate_limit(self, bucket: str, fingerprint: str) -> str:
        """HASH ``tokens``, ``ts``: the token bucket of one API key (by its keyed
        fingerprint, never the key) for one group of routes (``intake``, ``operator``);
        expires once it would be full again."""
        return f"{self.prefix}rl:{_part(bucket)}:{_part(fingerprint)}"

    # --- administration -----------------------------------------------------------------
    def audit(self) -> str:
        """STREAM of admin actions (erasure, export, promotion, rollback)."""
        return f"{self.prefix}audit"
