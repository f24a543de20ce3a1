"""Request dependencies shared by every router: settings, catalog, Redis, roles.

Routes declare what they need with the ``Annotated`` aliases below, so a route reads like
"look up, 404/403, return". The dependencies are ``async def`` although they do not await:
FastAPI runs plain ``def`` dependencies in a thread pool, a thread hop per dependency per
request that cost more than the rest of a recommendation. Objects live on ``app.state``
(built once in :func:`bouquet.serving.app.create_app`), never in module globals, so tests
can build apps with different settings side by side.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from bouquet.core.catalog import Catalog
from bouquet.core.keys import Keys
from bouquet.core.settings import Settings

Role = Literal["app", "operator", "admin"]
#: Which key roles may call an endpoint that requires a role. Admin may do everything;
#: operators see aggregates only, never one resident's recommendations.
_ADMITTED: dict[str, frozenset[str]] = {
    "app": frozenset({"app", "admin"}),
    "operator": frozenset({"operator", "admin"}),
    "admin": frozenset({"admin"}),
}

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


def require_role(needed: Role):
    """Dependency factory: 401 without a valid key, 403 when its role is not admitted."""

    async def check(settings: SettingsDep,
                    api_key: Annotated[str | None, Security(api_key_header)] = None) -> str:
        role = role_of(settings, api_key)
        if role is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                detail="missing or unknown API key (header X-API-Key)",
                                headers={"WWW-Authenticate": "X-API-Key"})
        if role not in _ADMITTED[needed]:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail=f"this endpoint needs the {needed!r} role; "
                                       f"the key has {role!r}")
        return role

    return check


async def require_any_role(settings: SettingsDep,
                           api_key: Annotated[str | None, Security(api_key_header)] = None
                           ) -> str:
    """Any valid key (catalog reads): 401 without one."""
    role = role_of(settings, api_key)
    if role is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            detail="missing or unknown API key (header X-API-Key)",
                            headers={"WWW-Authenticate": "X-API-Key"})
    return role


AnyRole = Annotated[str, Depends(require_any_role)]
AppRole = Annotated[str, Depends(require_role("app"))]
OperatorRole = Annotated[str, Depends(require_role("operator"))]
AdminRole = Annotated[str, Depends(require_role("admin"))]
