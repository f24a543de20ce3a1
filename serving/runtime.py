"""The serving runtime of one app: online store, model holder, experiment, ranker,
and the intake's producer — built once per app (``app.state``), never module globals, so
tests can run apps with different settings side by side."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from bouquet.core.recommendation import RecommendationIds
from bouquet.serving.experiments import Experiment
from bouquet.serving.holder import ModelHolder
from bouquet.serving.ranking import OfferRanker
from bouquet.serving.store import OnlineStore

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    store: OnlineStore
    holder: ModelHolder
    experiment: Experiment
    ranker: OfferRanker
    #: mints the recommendation_id of every answer (signed: core/recommendation.py)
    recommendation_ids: RecommendationIds
    rerank_enabled: bool = True
    bench_endpoints: bool = False
    producer: Any = None
    producer_error: str | None = None
    producer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def runtime_of(app: FastAPI) -> Runtime:
    """The app's runtime, built on first use from the app's settings and catalog."""
    runtime = getattr(app.state, "bouquet_runtime", None)
    if runtime is None:
        settings = app.state.settings
        catalog = app.state.catalog
        experiment = Experiment.from_settings(settings.experiments)
        store = OnlineStore(app.state.redis, app.state.keys, settings.serving_recent_n)
        holder = ModelHolder(store, experiment.pointers, catalog.neighbourhood_ids,
                             settings.serving_pointer_poll_ms)
        ranker = OfferRanker.from_settings(catalog, settings)
        runtime = Runtime(store, holder, experiment, ranker,
                          RecommendationIds.for_settings(settings),
                          rerank_enabled=settings.serving_rerank,
                          bench_endpoints=settings.serving_bench_endpoints)
        app.state.bouquet_runtime = runtime
    return runtime


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request.app)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
