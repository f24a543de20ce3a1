"""Helpers for the serving tests: a small deterministic model, publishing it, an app client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date

import httpx
import numpy as np
import scipy.sparse as sp

from bouquet.core.catalog import Catalog, load_catalog
from bouquet.core.keys import Keys
from bouquet.core.profile import all_segments
from bouquet.core.redisclient import SyncClient
from bouquet.core.redisclient import redis_client as client_for_url
from bouquet.core.settings import DEFAULT_EVENT_WEIGHTS, Settings
from bouquet.models.confidence import ConfidenceRule
from bouquet.models.factor import FactorModel
from bouquet.models.reasons import EVENT_TYPES, encode_drivers
from bouquet.pipelines.publish import Publisher, PublishReport
from bouquet.serving.app import create_app

APP = {"X-API-Key": "dev-app-key"}
OPERATOR = {"X-API-Key": "dev-operator-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}


def small_model(catalog: Catalog, n: int = 50, factors: int = 16, seed: int = 7,
                prefix: str = "r") -> FactorModel:
    """A seeded factor model over the demo catalog; residents ``r0 … r{n-1}``.

    Services of one domain share a direction (plus noise), as trained factors do, so that
    using a service pulls its domain's bundles up.
    """
    rng = np.random.default_rng(seed)
    sids, bids = list(catalog.service_ids), list(catalog.bundle_ids)
    domains = sorted({s.domain.value for s in catalog.services})
    base = {d: rng.normal(size=factors) for d in domains}
    services = np.stack([base[catalog.service_by_id[s].domain.value]
                         + 0.3 * rng.normal(size=factors) for s in sids])
    services = (services / np.sqrt(factors)).astype(np.float32)
    residents = rng.normal(size=(n, factors)).astype(np.float32) / np.sqrt(factors)
    members = {b: list(catalog.bundle_by_id[b].services) for b in bids}
    index = {s: i for i, s in enumerate(sids)}
    bundles = np.stack([services[[index[s] for s in members[b]]].mean(axis=0) for b in bids])
    n_nb = 1 + len(catalog.neighbourhood_ids)
    # each resident used a few services, each pair driven by a use on some day of 2026
    rows = np.repeat(np.arange(n), 4)
    cols = np.concatenate([rng.choice(len(sids), 4, replace=False) for _ in range(n)])
    history = sp.csr_matrix((rng.uniform(1, 5, len(rows)), (rows, cols)),
                            shape=(n, len(sids)))
    history.sort_indices()
    use = EVENT_TYPES.index("use")
    days = (date(2026, 1, 1) - date(1970, 1, 1)).days + rng.integers(0, 300, history.nnz)
    drivers = sp.csr_matrix((encode_drivers(np.full(history.nnz, use), np.zeros(history.nnz),
                                            history.indices, days),
                             history.indices, history.indptr), shape=history.shape)
    return FactorModel(
        service_ids=sids, bundle_ids=bids, bundle_services=members,
        neighbourhoods=list(catalog.neighbourhood_ids),
        rule=ConfidenceRule(dict(DEFAULT_EVENT_WEIGHTS)),
        popular_services=rng.random((n_nb, len(sids))),
        popular_bundles=rng.random((n_nb, len(bids))),
        resident_ids=np.array([f"{prefix}{i}" for i in range(n)]),
        resident_neighbourhood=np.full(n, -1, np.int16), meta={"model_kind": "test"},
        service_factors=services, bundle_factors=bundles, resident_factors=residents,
        resident_services=history, service_drivers=drivers, regularization=0.05)


def with_segments(model: FactorModel, segment: str, popular_in_segment: str,
                  shown: np.ndarray | None = None, taken: np.ndarray | None = None
                  ) -> FactorModel:
    """``model`` with the demo catalog's segments, of which only ``segment`` has a popular
    bundle (``popular_in_segment``), and exploration counts (zero unless given)."""
    segments = all_segments(model.neighbourhoods)
    table = np.zeros((len(segments), len(model.bundle_ids)))
    table[segments.index(segment), model.bundle_ids.index(popular_in_segment)] = 1.0
    n = (1 + len(segments), len(model.bundle_ids))
    return replace(model, segments=segments, segment_popular_bundles=table,
                   segment_popular_services=np.zeros((len(segments), len(model.service_ids))),
                   bundle_shown=np.zeros(n) if shown is None else shown,
                   bundle_taken=np.zeros(n) if taken is None else taken)


def publish(settings: Settings, model: FactorModel, model_version: str = "v1",
            pointer: str = "current") -> PublishReport:
    catalog = load_catalog(settings.catalog_path)
    client = redis_client(settings)
    try:
        return Publisher(settings, client, catalog.neighbourhood_ids).publish(
            model, model_version=model_version, run_id=f"run-{model_version}", pointer=pointer)
    finally:
        client.close()


def redis_client(settings: Settings) -> SyncClient:
    """A client of the Redis (or Redis Cluster) the settings name."""
    return client_for_url(settings.redis_url)


def all_keys(client: SyncClient) -> set[bytes]:
    """Every key in the suite's shared Redis. Tests that check what a request wrote compare
    these sets before and after: other tests' keys may expire meanwhile, so a count can
    stay the same although a key was added."""
    return set(client.scan_iter(count=10_000))


def set_profile(settings: Settings, rid: str, **fields: str) -> None:
    """Write a profile hash the way the consumer does (booleans as "1"/"0")."""
    r = redis_client(settings)
    r.hset(Keys(settings.redis_key_prefix).profile(rid), mapping=fields)
    r.close()


def push_recent(settings: Settings, rid: str, *events: tuple[str, str]) -> None:
    """Push ``(type, service_id)`` contacts on the resident's recent list (newest first)."""
    r = redis_client(settings)
    key = Keys(settings.redis_key_prefix).recent(rid)
    for kind, service in events:
        r.lpush(key, json.dumps({"event_id": f"e{time.time_ns()}", "type": kind,
                                 "ts": time.time(), "channel": "app", "service_id": service}))
    r.close()


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the ASGI app, with the app's lifespan (model holder) running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bouquet",
                                     headers=APP) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def ids(answer: dict, kind: str = "bundles") -> list[str]:
    key = "bundle_id" if kind == "bundles" else "service_id"
    return [item[key] for item in answer[kind]]
