"""The present, from Redis: today's and this week's actives, contacts and the funnel.

The event log is the history; the consumer also keeps real-time counters in Redis
(``streaming/state.py``, documented in ``docs/redis-keys.md``), and this module reads them
so operators see the current day and week without waiting for a log scan:

- ``Keys.active(period, bucket, dimension, value)`` SETs → distinct active residents of a
  UTC day (``2026-11-27``) or ISO week (``2026-W48``), city-wide (``all=all``) and per
  ``nb`` / ``domain`` / ``factor`` / ``channel`` value; every such key is listed in
  ``Keys.active_index`` so no SCAN is needed;
- ``Keys.contacts(period, bucket)`` HASHes → contact events per type and ``all``;
- ``Keys.funnel(model_version, variant)`` HASHes → attributed events per stage since
  ingestion began (listed in ``Keys.funnel_index`` as ``<model_version>:<variant>``);
- ``Keys.last_contact`` ZSET → residents active in the trailing 1 / 7 / 28 days.

The counters hold the same quantities as the history tables (the history/now agreement
test proves it on the overlap): ``active`` day SETs = the ``daily`` table's ``dau``,
week SETs = the ``stickiness`` table's ``wau``, funnel HASHes = the funnel's
``<stage>_events``. One difference is by design: a live neighbourhood is the one the
resident's profile had when the contact was ingested, the history uses the latest profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import redis

from bouquet.analytics.engagement import FUNNEL_STAGES
from bouquet.core.keys import Keys

#: Redis dimension name → the dimension name of the history tables.
DIMENSION_OF: dict[str, str] = {"all": "all", "nb": "neighbourhood", "domain": "domain",
                                "factor": "factor", "channel": "channel"}
ROLLING_DAYS: tuple[int, ...] = (1, 7, 28)


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _active_prefix(keys: Keys) -> str:
    """``<prefix>eng:active:`` — derived from ``Keys`` itself so a change there follows."""
    sample = keys.active("day", "B", "D", "V")
    return sample[: -len("day:B:D=V")]


def parse_active_key(keys: Keys, name: str) -> tuple[str, str, str, str] | None:
    """(period, bucket, dimension, value) of an ``active`` key name, or None."""
    prefix = _active_prefix(keys)
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix):].split(":")
    if len(parts) != 3 or "=" not in parts[2]:
        return None
    dimension, value = parts[2].split("=", 1)
    return parts[0], parts[1], DIMENSION_OF.get(dimension, dimension), value


def active_counts(client: redis.Redis, keys: Keys, buckets: list[tuple[str, str]] | None = None
                  ) -> pd.DataFrame:
    """Distinct active residents per (period, bucket, dimension, value) from the active
    SETs listed in the index; only the given (period, bucket) pairs when ``buckets``."""
    names = sorted(_text(n) for n in client.smembers(keys.active_index()))
    wanted = set(buckets) if buckets is not None else None
    parsed = []
    for name in names:
        found = parse_active_key(keys, name)
        if found and (wanted is None or (found[0], found[1]) in wanted):
            parsed.append((name, found))
    pipe = client.pipeline(transaction=False)
    for name, _ in parsed:
        pipe.scard(name)
    sizes = pipe.execute() if parsed else []
    rows = [{"period": p, "bucket": b, "dimension": d, "value": v, "active": int(n)}
            for (_, (p, b, d, v)), n in zip(parsed, sizes, strict=True) if int(n) > 0]
    return pd.DataFrame(rows, columns=["period", "bucket", "dimension", "value", "active"])


def contact_counts(client: redis.Redis, keys: Keys, buckets: list[tuple[str, str]]
                   ) -> pd.DataFrame:
    """Contact events per type (and ``all``) of each (period, bucket)."""
    pipe = client.pipeline(transaction=False)
    for period, bucket in buckets:
        pipe.hgetall(keys.contacts(period, bucket))
    rows = []
    for (period, bucket), found in zip(buckets, pipe.execute(), strict=True):
        for field_name, n in sorted((_text(f), int(v)) for f, v in found.items()):
            rows.append({"period": period, "bucket": bucket, "type": field_name,
                         "contacts": n})
    return pd.DataFrame(rows, columns=["period", "bucket", "type", "contacts"])


def funnel_counts(client: redis.Redis, keys: Keys) -> pd.DataFrame:
    """Attributed events per stage for every (model version, variant) since ingestion
    began, one row per arm (columns ``<stage>_events``)."""
    members = sorted(_text(m) for m in client.smembers(keys.funnel_index()))
    arms = [m.split(":", 1) for m in members if ":" in m]
    pipe = client.pipeline(transaction=False)
    for model_version, variant in arms:
        pipe.hgetall(keys.funnel(model_version, variant))
    rows = []
    for (model_version, variant), found in zip(arms, pipe.execute() if arms else [],
                                               strict=True):
        counts = {_text(f): int(v) for f, v in found.items()}
        row: dict[str, Any] = {"model_version": model_version, "variant": variant,
                               "arm": f"{model_version}:{variant}"}
        for stage in FUNNEL_STAGES:
            row[f"{stage}_events"] = counts.get(stage, 0)
        rows.append(row)
    return pd.DataFrame(rows, columns=["model_version", "variant", "arm",
                                       *[f"{s}_events" for s in FUNNEL_STAGES]])


def rolling_actives(client: redis.Redis, keys: Keys, now: datetime) -> pd.DataFrame:
    """Residents whose latest contact is within the trailing 1, 7 and 28 days of ``now``."""
    pipe = client.pipeline(transaction=False)
    end = now.timestamp()
    for days in ROLLING_DAYS:
        pipe.zcount(keys.last_contact(), end - days * 86400, "+inf")
    pipe.zcard(keys.last_contact())
    *counts, total = pipe.execute()
    rows = [{"window": f"last_{d}d", "active": int(n)}
            for d, n in zip(ROLLING_DAYS, counts, strict=True)]
    rows.append({"window": "ever", "active": int(total)})
    return pd.DataFrame(rows, columns=["window", "active"])


@dataclass
class LiveSnapshot:
    """What Redis says about today and this week (UTC), read in a few round trips."""

    taken_at: datetime
    day: str
    week: str
    active: pd.DataFrame
    contacts: pd.DataFrame
    funnel: pd.DataFrame
    rolling: pd.DataFrame


def snapshot(client: redis.Redis, keys: Keys, now: datetime | None = None) -> LiveSnapshot:
    now = now or datetime.now(UTC)
    today = now.astimezone(UTC).date()
    buckets = [("day", today.isoformat()), ("week", iso_week(today)),
               ("day", (today - timedelta(days=1)).isoformat())]
    return LiveSnapshot(
        taken_at=now, day=today.isoformat(), week=iso_week(today),
        active=active_counts(client, keys, buckets),
        contacts=contact_counts(client, keys, buckets),
        funnel=funnel_counts(client, keys),
        rolling=rolling_actives(client, keys, now),
    )
