"""Request dependencies shared by every router: settings, catalog, Redis, roles.

Routes declare what they need with the ``Annotated`` aliases below, so a route reads like
"look up, 404/403, return". The dependencies are ``async def`` although they do not await:
FastAPI runs plain ``def`` dependencies in a thread pool, a thread hop per dependency per
request that cost more than the rest of a recommendation. Objects live on ``app.state``
(built once in :func:`bouquet.serving.app.create_app`), never in module globals, so tests
can build apps with different settings side by side.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Annotated, Any, Literal

import redis
import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from bouquet.core.catalog import Catalog
from bouquet.core.events import ID_RE
from bouquet.core.keys import Keys
from bouquet.core.redisclient import redis_client
from bouquet.core.settings import Settings

if TYPE_CHECKING:
    from bouquet.analytics.tables import Table

Role = Literal["app", "operator", "admin", "gateway", "intake"]
#: Which key roles may call an endpoint that requires a role. Admin may do everything;
#: operators see aggregates only, never one resident's recommendations. ``gateway`` is the
#: city's messaging gateway: it reports outreach outcomes to the intake (``intake``: apps
#: and the gateway), which lets it send only those (``routes_events``).
_ADMITTED: dict[str, frozenset[str]] = {
    "app": frozenset({"app", "admin"}),
    "operator": frozenset({"operator", "admin"}),
    "admin": frozenset({"admin"}),
    "gateway": frozenset({"gateway", "admin"}),
    "intake": frozenset({"app", "gateway", "admin"}),
}

#: Where :class:`bouquet.serving.admission.Admission` leaves the role of the request's key,
#: found before the body was read, for :class:`RoleKey` to check without a second look-up.
ROLE_SCOPE_KEY = "bouquet.role"

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="API key; its role is set in BOUQUET_API_KEYS")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


async def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


async def get_keys(request: Request) -> Keys:
    return request.app.state.keys


def sync_redis(app: Any, name: str, socket_timeout: float) -> redis.Redis:
    """A synchronous Redis client of the app (``app.state.<name>``), made on first use, for
    work that runs in a worker thread with the blocking library code it calls (operator
    figures, erasure, exports). Closed by :func:`close_sync_redis` at shutdown."""
    found = getattr(app.state, name, None)
    if found is None:
        found = redis_client(app.state.settings.redis_url, socket_timeout=socket_timeout,
                             socket_connect_timeout=2)
        setattr(app.state, name, found)
    return found


def close_sync_redis(app: Any, name: str) -> None:
    client = getattr(app.state, name, None)
    if client is not None:
        client.close()


#: A resident id in a route's path: validated (and documented) before any key is built.
ResidentId = Annotated[str, Path(
    pattern=ID_RE, min_length=1, max_length=64,
    description="Pseudonymous resident id: 1–64 characters of A–Z a–z 0–9 _ -",
    examples=["r_5b1d0c8e2f"])]

SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
KeysDep = Annotated[Keys, Depends(get_keys)]


def role_of(settings: Settings, api_key: str | None) -> str | None:
    """The role of a presented key (constant-time comparison), or None."""
    if not api_key:
        return None
    for known, role in settings.api_keys.items():
        if hmac.compare_digest(known.encode(), api_key.encode()):
            return role
    return None


class KeyTable:
    """The configured keys as keyed digests, so that a request's key is found with one hash
    and one dict look-up instead of a comparison with every key.

    The presented key is hashed with a per-process random secret (blake2b) before the
    look-up: how long the look-up takes then depends on a digest the client cannot predict,
    never on how many leading characters of a real key it guessed — the property the
    constant-time comparison of :func:`role_of` gives, at a fraction of its cost."""

    def __init__(self, api_keys: dict[str, str]) -> None:
        self._secret = secrets.token_bytes(32)
        self._roles = {self._digest(known.encode()): role for known, role in api_keys.items()
                       if known}

    def _digest(self, key: bytes) -> bytes:
        return hashlib.blake2b(key, digest_size=32, key=self._secret).digest()

    def role(self, api_key: str | None) -> str | None:
        if not api_key:
            return None
        return self._roles.get(self._digest(api_key.encode()))


def key_table(app: Any) -> KeyTable:
    """The app's :class:`KeyTable`, built from its settings on first use."""
    state = app.state
    table = getattr(state, "api_key_table", None)
    if table is None:
        table = state.api_key_table = KeyTable(state.settings.api_keys)
    return table


class RoleKey(APIKeyHeader):
    """The ``X-API-Key`` security scheme and the role check as **one** dependency.

    Declared with ``Security(...)``, it documents the scheme in OpenAPI exactly as a plain
    :class:`APIKeyHeader` (same scheme name, header and description), but FastAPI resolves
    one dependency per request instead of three (role check → settings + header scheme):
    that chain cost ~30 µs a request, as much as the ranking (docs/serving.md). 401 without
    a valid key, 403 when its role is not admitted (``needed=None``: any valid key)."""

    def __init__(self, needed: Role | None) -> None:
        super().__init__(name="X-API-Key", auto_error=False, scheme_name="APIKeyHeader",
                         description="API key; its role is set in BOUQUET_API_KEYS")
        self.needed = needed
        self.admitted = _ADMITTED[needed] if needed is not None else None

    async def __call__(self, request: HTTPConnection) -> str:  # type: ignore[override]
        role = request.scope.get(ROLE_SCOPE_KEY) or \
            key_table(request.app).role(request.headers.get("x-api-key"))
        if role is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                detail="missing or unknown API key (header X-API-Key)",
                                headers={"WWW-Authenticate": "X-API-Key"})
        if self.admitted is not None and role not in self.admitted:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail=f"this endpoint needs the {self.needed!r} role; "
                                       f"the key has {role!r}")
        return role


def require_role(needed: Role) -> RoleKey:
    """Dependency: 401 without a valid key, 403 when its role is not admitted."""
    return RoleKey(needed)


#: Any valid key (catalog reads): 401 without one.
require_any_role = RoleKey(None)

AnyRole = Annotated[str, Security(require_any_role)]
AppRole = Annotated[str, Security(require_role("app"))]
OperatorRole = Annotated[str, Security(require_role("operator"))]
AdminRole = Annotated[str, Security(require_role("admin"))]
IntakeRole = Annotated[str, Security(require_role("intake"))]


def table_response(table: Table, fmt: str) -> Response:
    """An operator table as JSON, or as a CSV download named after the table: the one
    answer of every operator figure route."""
    if fmt == "csv":
        return Response(table.to_csv(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{table.name}.csv"'})
    return JSONResponse(table.to_json())
