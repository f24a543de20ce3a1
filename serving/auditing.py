"""The audit trail of the HTTP API: one :class:`~bouquet.privacy.audit.AuditLog` per app,
and who a request acted as.

Routes that change or reveal one resident's data (erasure, export, consent, declared
profiles) audit it; the actor is the calling key's role and keyed fingerprint, never the
key itself.
"""

from __future__ import annotations

import redis
from fastapi import FastAPI, Request

from bouquet.core.events import EventType, InteractionEvent, consent_purpose
from bouquet.privacy.audit import AuditLog, api_actor, entry, resident_ref
from bouquet.serving.deps import api_key_header, close_sync_redis, sync_redis


def privacy_redis(app: FastAPI) -> redis.Redis:
    """A synchronous client for the erasure, export and audit, which run in a worker
    thread."""
    return sync_redis(app, "privacy_redis", socket_timeout=5)


def audit_log(app: FastAPI) -> AuditLog:
    """The app's audit log (file + Redis stream), made on first use."""
    found = getattr(app.state, "audit_log", None)
    if found is None:
        found = AuditLog(app.state.settings, privacy_redis(app))
        app.state.audit_log = found
    return found


def actor(request: Request, role: str) -> str:
    """``api:<role>:key-<fingerprint>`` of the key that made ``request``."""
    return api_actor(role, request.headers.get(api_key_header.model.name),
                     request.app.state.settings.server_secret)


#: Event types that declare something about a resident (consent, attributes): apps may send
#: them, and each one is audited, like the consent API's.
DECLARATIONS = frozenset({EventType.CONSENT, EventType.PROFILE})


def declaration_entries(events: list[InteractionEvent], who: str, secret: str
                        ) -> list[dict]:
    """Audit records of the declarations among ``events``: the resident by keyed
    reference; a consent's value and purpose, a profile's attribute names (not their
    values)."""
    out = []
    for event in events:
        if event.type not in DECLARATIONS:
            continue
        detail = ({"value": int(event.value or 0),
                   "purpose": consent_purpose(event.context) or "personalisation"}
                  if event.type is EventType.CONSENT
                  else {"attributes": sorted(event.context)})
        out.append(entry(event.type.value, actor=who,
                         target=f"resident:{resident_ref(event.resident_id, secret)[:16]}",
                         event_id=event.event_id, channel=event.channel.value, **detail))
    return out


def close(app: FastAPI) -> None:
    close_sync_redis(app, "privacy_redis")
