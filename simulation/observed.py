"""What a deployment knows of each resident from the events it ingested: the state the
ingestion consumer keeps in Redis (declared profile and consent, holdings, dismissed
bundles, the latest contacts; docs/redis-keys.md), kept in memory from the events the
closed loop hands to a policy.

Every in-process product policy (the trained model's serving, the outreach planner) reads
residents through one :class:`ObservedResidents`, so they see the same residents a
deployment's serving and planner would, and never the simulator's hidden state.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import pyarrow as pa

from bouquet.core.events import CONTACT_TYPES
from bouquet.core.profile import decode_value, profile_payload
from bouquet.serving.store import RecentEvent

#: Columns :meth:`ObservedResidents.apply` reads (the event-log layout).
COLUMNS = ("resident_id", "type", "service_id", "bundle_id", "ts", "value", "context",
           "recommendation_id")


class ObservedResident:
    """What the ingestion consumer keeps in Redis for one resident (docs/redis-keys.md)."""

    __slots__ = ("dismissed", "holdings", "profile", "recent")

    def __init__(self, recent_n: int) -> None:
        self.profile: dict[str, Any] = {}
        self.holdings: set[str] = set()
        self.dismissed: set[str] = set()
        self.recent: deque[RecentEvent] = deque(maxlen=recent_n)  # newest first


class ObservedResidents:
    """Residents by id, updated event by event as ingestion updates Redis; an erasure
    removes the resident."""

    def __init__(self, recent_n: int) -> None:
        self.recent_n = recent_n
        self.residents: dict[str, ObservedResident] = {}
        self.latest = 0.0  # epoch seconds of the latest event seen

    def get(self, resident_id: str) -> ObservedResident | None:
        return self.residents.get(resident_id)

    def __contains__(self, resident_id: str) -> bool:
        return resident_id in self.residents

    def apply(self, table: pa.Table) -> None:
        """Apply a time-sorted batch of events (event-log layout)."""
        columns = table.drop_columns(["ts"]).to_pydict()
        seconds = (table["ts"].cast(pa.int64()).to_numpy() / 1e6).tolist()  # µs → s
        if seconds:
            self.latest = max(self.latest, max(seconds))
        residents = self.residents
        for rid, kind, service, bundle, epoch, value, context, reference in zip(
                columns["resident_id"], columns["type"], columns["service_id"],
                columns["bundle_id"], seconds, columns["value"], columns["context"],
                columns["recommendation_id"], strict=True):
            found = residents.get(rid)
            if found is None:
                found = residents[rid] = ObservedResident(self.recent_n)
            if kind in CONTACT_TYPES:
                found.recent.appendleft(RecentEvent(kind, service, bundle, epoch, reference))
                if kind == "subscribe" or kind == "unsubscribe":
                    members = [m for m in (f"b:{bundle}" if bundle else None,
                                           f"s:{service}" if service else None) if m]
                    if kind == "subscribe":
                        found.holdings.update(members)
                    else:
                        found.holdings.difference_update(members)
                elif kind == "dismiss" and bundle:
                    found.dismissed.add(bundle)
            elif kind == "profile":
                found.profile.update(declared(context))
                found.profile.setdefault("consent", False)
            elif kind == "consent":
                found.profile["consent"] = value == 1
            elif kind == "erase":
                del residents[rid]


def declared(context: str | None) -> dict[str, Any]:
    """A profile event's declared attributes as serving reads them: encoded as the
    ingestion script writes them into the profile hash and decoded as serving reads the
    hash (booleans as bool, lists as tuples, attributes given as null left out)."""
    payload = profile_payload(json.loads(context or "{}"))
    parts = payload.split("\t") if payload else []
    return {name: decode_value(name, value) for name, value in zip(parts[::2], parts[1::2],
                                                                   strict=True)}
