"""The catalog as front ends see it: ``GET /v1/catalog/services`` and ``/v1/catalog/bundles``.

Served from the catalog loaded at start-up (no Redis), answers built once per process.
Any valid API key may read it: the catalog holds no resident data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from bouquet.core.catalog import Bundle, Catalog, Domain, Service, available_in
from bouquet.serving.deps import AnyRole, CatalogDep

router = APIRouter(prefix="/v1/catalog", tags=["catalog"])

Zone = Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
                                   description="Only what is available in this neighbourhood",
                                   examples=["gare"])]


def _check_zone(catalog: Catalog, zone: str | None) -> None:
    if zone is not None and zone not in catalog.neighbourhood_ids:
        raise RequestValidationError([{
            "loc": ("query", "zone"), "type": "value_error",
            "msg": f"unknown neighbourhood {zone!r}; known: " + ", ".join(
                catalog.neighbourhood_ids)}])


def _cached(request: Request, name: str, build) -> list[dict]:
    cache = request.app.state.__dict__.setdefault("_catalog_cache", {})
    if name not in cache:
        cache[name] = build()
    return cache[name]


def _listing(request: Request, catalog: Catalog, name: str, entries: Sequence[Any],
             domain: Domain | None, zone: str | None) -> Response:
    """Catalog entries (services or bundles) of one domain and zone, as JSON. The entries
    are dumped once per app: the catalog does not change while it runs."""
    _check_zone(catalog, zone)
    items = _cached(request, name, lambda: [e.model_dump(mode="json") for e in entries])
    out = [e for e in items if (domain is None or e["domain"] == domain.value)
           and (zone is None or available_in(e["zones"], zone))]
    return Response(json.dumps(out), media_type="application/json")


@router.get("/services", response_model=list[Service], summary="Every service")
async def catalog_services(request: Request, catalog: CatalogDep, _role: AnyRole,
                           domain: Domain | None = None, zone: Zone = None) -> Response:
    """Services of the catalog, optionally of one domain and available in one zone."""
    return _listing(request, catalog, "services", catalog.services, domain, zone)


@router.get("/bundles", response_model=list[Bundle], summary="Every bundle")
async def catalog_bundles(request: Request, catalog: CatalogDep, _role: AnyRole,
                          domain: Domain | None = None, zone: Zone = None) -> Response:
    """Bundles of the catalog (service ids as listed), optionally filtered."""
    return _listing(request, catalog, "bundles", catalog.bundles, domain, zone)
