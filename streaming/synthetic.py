"""Synthetic interaction streams for ingestion tests and the ingestion benchmark.

Not the simulator (that models residents' behaviour, in ``simulation/``): this produces a
seeded stream that exercises every path of the consumer — profiles, consent, contacts
with and without recommendation ids, subscribe/unsubscribe, dismiss, erasure and re-sent
events — as fast as possible, as encoded Kafka ``(key, value)`` pairs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS, Catalog
from bouquet.core.recommendation import RecommendationIds, development_ids

_CONTACTS = ("view", "view", "view", "view", "click", "click", "use", "use", "pay",
             "subscribe", "unsubscribe", "dismiss", "rate")
_CHANNELS = ("app", "app", "app", "web", "web", "kiosk", "desk", "partner")


@dataclass(frozen=True)
class StreamSpec:
    events: int = 10_000
    residents: int = 2_000
    days: int = 3
    seed: int = 7
    #: share of events re-sent with the same event_id (client retries)
    resend_rate: float = 0.01
    #: share of residents who ask to be erased at the end of their stream
    erase_rate: float = 0.002
    #: chance that an erased resident still shows up afterwards with an event time-stamped
    #: before the erasure (an offline kiosk syncing late): data a consumer with erasure
    #: hooks drops (docs/privacy.md)
    late_after_erase: float = 0.25
    end: datetime | None = None  # newest event time; default: now - 1 min


def stream(catalog: Catalog, spec: StreamSpec,
           recommendation_ids: RecommendationIds | None = None) -> Iterator[dict[str, Any]]:
    """Valid events (dicts in the wire format), in production order; recommendation ids are
    minted by ``recommendation_ids`` (default: the development key's)."""
    rng = random.Random(spec.seed)
    minter = recommendation_ids or development_ids()
    end = spec.end or (datetime.now(UTC) - timedelta(minutes=1))
    start = end - timedelta(days=spec.days)
    span = (end - start).total_seconds()
    residents = [f"r{spec.seed}_{i:06d}" for i in range(spec.residents)]
    erased = set(rng.sample(residents, int(spec.residents * spec.erase_rate)))
    gone: set[str] = set()
    services = list(catalog.service_ids)
    bundles = list(catalog.bundle_ids)
    neighbourhoods = list(catalog.neighbourhood_ids)
    emitted = 0
    last: dict[str, Any] | None = None
    counter = 0
    while emitted < spec.events:
        if last is not None and rng.random() < spec.resend_rate:
            yield last
            emitted += 1
            continue
        rid = rng.choice(residents)
        if rid in gone and rng.random() >= spec.late_after_erase:
            continue
        counter += 1
        ts = start + timedelta(seconds=rng.random() * span)
        event: dict[str, Any] = {"schema_version": 1, "event_id": f"s{spec.seed}-{counter:09d}",
                                 "resident_id": rid, "ts": ts.isoformat(),
                                 "channel": rng.choice(_CHANNELS)}
        roll = rng.random()
        if rid in erased and rid not in gone and roll < 0.02:
            event.update(type="erase", channel="system", ts=end.isoformat())
            gone.add(rid)
        elif roll < 0.04:
            event.update(type="profile", context={
                "neighbourhood": rng.choice(neighbourhoods),
                "age_band": rng.choice(AGE_BANDS), "household": rng.choice(HOUSEHOLDS),
                "student": rng.random() < 0.2, "low_income": rng.random() < 0.15})
        elif roll < 0.06:
            event.update(type="consent", value=1 if rng.random() < 0.8 else 0)
        else:
            kind = rng.choice(_CONTACTS)
            event["type"] = kind
            if rng.random() < 0.5:
                event["bundle_id"] = rng.choice(bundles)
            else:
                event["service_id"] = rng.choice(services)
            if kind == "rate":
                event["value"] = float(rng.randint(1, 5))
            elif kind == "pay":
                event["value"] = round(rng.random() * 40, 2)
            if kind in ("view", "click", "subscribe", "use") and rng.random() < 0.6:
                variant = "champion" if rng.random() < 0.8 else "challenger"
                version = rng.choice(("v1", "v2"))
                event["recommendation_id"] = minter.mint(version, variant,
                                                         nonce=rng.getrandbits(48))
            if rng.random() < 0.1:
                event["context"] = {"screen": rng.choice(("home", "map", "offers")),
                                    "position": rng.randint(1, 10)}
        last = event
        emitted += 1
        yield event


def encode(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """Kafka (key, value) of a wire-format event (key = resident id)."""
    return (str(event.get("resident_id", "")).encode(),
            json.dumps(event, separators=(",", ":")).encode())
