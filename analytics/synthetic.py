"""A vectorised synthetic event log with a heavy-tailed cadence, for the engagement
benchmark, the dashboard tests and demos of the operator views.

Not the simulator (``simulation/`` models residents' behaviour and answers to
recommendations); this only has to produce millions of plausible events fast, written
straight to the event log: residents at daily / weekly / monthly / rare base rates
(a mix close to a city service's), a weekly rhythm, a slow drift of some residents towards
a higher cadence, a profile event per resident, and recommendation ids from two arms
(``v1.control`` and ``v1.personal``) whose conversion rates differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import EventLog
from bouquet.core.recommendation import RecommendationIds, development_ids

#: (share of residents, probability of a contact on a given day)
CADENCE_MIX: tuple[tuple[float, float], ...] = (
    (0.04, 0.75), (0.16, 0.30), (0.30, 0.06), (0.50, 0.008),
)
_TYPES = np.array(["view", "click", "use", "pay", "subscribe", "rate", "dismiss",
                   "unsubscribe"])
_TYPE_P = np.array([0.40, 0.20, 0.25, 0.06, 0.03, 0.03, 0.02, 0.01])
_CHANNELS = np.array(["app", "web", "kiosk", "desk", "partner"])
_CHANNEL_P = np.array([0.55, 0.25, 0.05, 0.05, 0.10])
_WEEKDAY = np.array([1.1, 1.1, 1.1, 1.1, 1.05, 0.8, 0.75])  # Monday first


@dataclass(frozen=True)
class SyntheticSpec:
    residents: int = 20_000
    days: int = 182
    end: date | None = None  # last day (default: yesterday, UTC)
    seed: int = 11
    #: share of residents whose contact rate grows over the period (personalisation effect)
    drifting_share: float = 0.3
    #: how much a drifting resident's daily rate is multiplied by at the end
    drift: float = 2.5
    #: share of `view` events that carry a recommendation id
    recommended_share: float = 0.5


def generate(catalog: Catalog, spec: SyntheticSpec,
             recommendation_ids: RecommendationIds | None = None) -> pa.Table:
    """The events, as an Arrow table in the event-log layout (not yet written); their
    recommendation ids are minted by ``recommendation_ids`` (default: the development
    key's, which the reports of a test deployment verify)."""
    return pa.concat_tables(generate_chunks(catalog, spec, recommendation_ids))


def generate_chunks(catalog: Catalog, spec: SyntheticSpec,
                    recommendation_ids: RecommendationIds | None = None,
                    days_per_chunk: int | None = None) -> Iterator[pa.Table]:
    """The events of :func:`generate`, ``days_per_chunk`` days at a time (all of them by
    default), so that a log of tens of millions of events is written out of core: the
    residents are drawn once, each chunk's events from a generator seeded by the chunk."""
    rng = np.random.default_rng(spec.seed)
    end = spec.end or (datetime.now(UTC).date() - timedelta(days=1))
    start = end - timedelta(days=spec.days - 1)
    n = spec.residents
    shares = np.array([s for s, _ in CADENCE_MIX])
    rates = np.array([p for _, p in CADENCE_MIX])
    base = rates[rng.choice(len(rates), size=n, p=shares / shares.sum())]
    base = np.clip(base * rng.lognormal(0, 0.35, n), 0, 0.95)
    drifting = rng.random(n) < spec.drifting_share
    first = rng.integers(0, max(spec.days // 2, 1), n)
    personal = rng.random(n) < 0.5  # experiment arm of each resident
    neighbourhoods = list(catalog.neighbourhood_ids)
    contexts = np.array([json.dumps({"neighbourhood": v}, separators=(",", ":"))
                         for v in neighbourhoods])
    profile_context = contexts[rng.zipf(1.4, n) % len(neighbourhoods)]
    step = days_per_chunk or spec.days
    for chunk, low in enumerate(range(0, spec.days, step)):
        days = range(low, min(low + step, spec.days))
        yield _chunk(catalog, spec, np.random.default_rng([spec.seed, chunk]), chunk, days,
                     start, base, drifting, first, personal, profile_context,
                     recommendation_ids or development_ids())


def _chunk(catalog: Catalog, spec: SyntheticSpec, rng: np.random.Generator, chunk: int,
           days: range, start: date, base: np.ndarray, drifting: np.ndarray,
           first: np.ndarray, personal: np.ndarray, profile_context: np.ndarray,
           minter: RecommendationIds) -> pa.Table:
    n = base.size
    res_chunks, day_chunks = [], []
    for d in days:
        weekday = (start + timedelta(days=d)).weekday()
        growth = 1 + (spec.drift - 1) * d / max(spec.days - 1, 1)
        p = base * np.where(drifting, growth, 1.0) * _WEEKDAY[weekday]
        active = np.flatnonzero((rng.random(n) < np.minimum(p, 0.97)) & (first <= d))
        per = 1 + rng.poisson(0.8, active.size)
        res_chunks.append(np.repeat(active, per))
        day_chunks.append(np.full(per.sum(), d, np.int64))
    res = np.concatenate(res_chunks)
    day = np.concatenate(day_chunks)
    m = res.size

    types = _TYPES[rng.choice(len(_TYPES), size=m, p=_TYPE_P)]
    channels = _CHANNELS[rng.choice(len(_CHANNELS), size=m, p=_CHANNEL_P)]
    services = np.array(catalog.service_ids)
    bundles = np.array(catalog.bundle_ids)
    on_bundle = rng.random(m) < 0.3
    service_pick = services[rng.zipf(1.6, m) % services.size]
    bundle_pick = bundles[rng.zipf(1.6, m) % bundles.size]
    service_id = np.where(on_bundle, None, service_pick)
    bundle_id = np.where(on_bundle, bundle_pick, None)
    value = np.full(m, np.nan)
    value[types == "rate"] = rng.integers(1, 6, (types == "rate").sum())
    value[types == "pay"] = np.round(rng.random((types == "pay").sum()) * 40, 2)

    # recommendations: views carry an id; the personalised arm converts more often
    rec = np.full(m, None, dtype=object)
    is_view = (types == "view") & (rng.random(m) < spec.recommended_share)
    variant = np.where(personal[res], "personal", "control")
    token = rng.integers(0, 2**31, m)
    rec[is_view] = [minter.mint("v1", str(v), nonce=int(t))
                    for v, t in zip(variant[is_view], token[is_view], strict=True)]
    convert = np.where(personal[res], 0.22, 0.15)
    follow = is_view & (rng.random(m) < convert)
    follow_types = np.array(["click", "subscribe", "use"])[rng.choice(3, follow.sum(),
                                                                      p=[0.6, 0.15, 0.25])]

    ts0 = datetime(start.year, start.month, start.day, tzinfo=UTC)
    seconds = rng.integers(6 * 3600, 22 * 3600, m)
    ts = np.datetime64(ts0.replace(tzinfo=None), "us") + (
        day * 86_400_000_000 + seconds * 1_000_000).astype("timedelta64[us]")

    f_idx = np.flatnonzero(follow)
    all_res = np.concatenate([res, res[f_idx]])
    all_ts = np.concatenate([ts, ts[f_idx] + np.timedelta64(90, "s")])
    all_types = np.concatenate([types, follow_types])
    all_service = np.concatenate([service_id, service_id[f_idx]])
    all_bundle = np.concatenate([bundle_id, bundle_id[f_idx]])
    all_channel = np.concatenate([channels, channels[f_idx]])
    all_value = np.concatenate([value, np.full(f_idx.size, np.nan)])
    all_rec = np.concatenate([rec, rec[f_idx]])

    # one profile per resident on their first day, before their contacts
    joining = np.flatnonzero((first >= days.start) & (first < days.stop))
    profile_ts = np.datetime64(ts0.replace(tzinfo=None), "us") + (
        first[joining] * 86_400_000_000 + 5 * 3600 * 1_000_000).astype("timedelta64[us]")
    k = joining.size

    total = all_res.size + k
    rid = pa.array(np.concatenate([all_res, joining]))
    resident_id = pc.binary_join_element_wise(
        pa.scalar(f"s{spec.seed}r"), pc.cast(rid, pa.string()), "")
    event_id = pc.binary_join_element_wise(
        pa.scalar(f"s{spec.seed}c{chunk}e"), pc.cast(pa.array(np.arange(total)), pa.string()),
        "")
    tz = pa.timestamp("us", tz="UTC")

    def strings(a: np.ndarray) -> pa.Array:
        return pa.array(a, pa.string(), from_pandas=True)

    return pa.table({
        "event_id": event_id,
        "resident_id": resident_id,
        "type": strings(np.concatenate([all_types, np.full(k, "profile")])),
        "service_id": strings(np.concatenate([all_service, np.full(k, None)])),
        "bundle_id": strings(np.concatenate([all_bundle, np.full(k, None)])),
        "ts": pa.array(np.concatenate([all_ts, profile_ts]), tz),
        "channel": strings(np.concatenate([all_channel, np.full(k, "app")])),
        "value": pa.array(np.concatenate([all_value, np.full(k, np.nan)]), pa.float64(),
                          from_pandas=True),
        "recommendation_id": strings(np.concatenate([all_rec, np.full(k, None)])),
        "context": strings(np.concatenate([np.full(all_res.size, None),
                                           profile_context[joining]])),
        "schema_version": pa.array(np.ones(total, np.int16)),
    })


def write(root: Path, catalog: Catalog, spec: SyntheticSpec,
          days_per_chunk: int | None = None) -> int:
    """Generate and append to the event log at ``root`` (``days_per_chunk`` days at a time:
    one file per event date and chunk); returns the number of events."""
    log = EventLog(root, writer_id="synthetic")
    written = 0
    for table in generate_chunks(catalog, spec, days_per_chunk=days_per_chunk):
        log.append(table)
        written += table.num_rows
    return written
