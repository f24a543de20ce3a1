"""Helpers for the engagement tests: build event logs, and an independent reference.

:func:`reference` recomputes the engagement definitions of docs/engagement.md in plain
Python, resident by resident and week by week, from a list of event dicts. It shares no
code with :mod:`bouquet.analytics.engagement` (which is vectorised), so a test comparing
the two checks the module, not itself.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bouquet.core.catalog import Catalog
from bouquet.core.eventlog import EventLog

CONTACTS = {"view", "click", "subscribe", "use", "pay", "rate", "dismiss", "unsubscribe"}
DAY0 = date(2024, 1, 1)  # a Monday
_EVENT_IDS = itertools.count()


class Log:
    """Collects events (by day offset from ``base``) and writes them to an event log."""

    def __init__(self, base: date = DAY0) -> None:
        self.base = base
        self.events: list[dict[str, Any]] = []

    def add(self, rid: str, kind: str, day: int | date, *, hour: int = 10,
            **fields: Any) -> dict[str, Any]:
        when = day if isinstance(day, date) else self.base + timedelta(days=day)
        ts = datetime(when.year, when.month, when.day, hour, tzinfo=UTC)
        if kind in CONTACTS and not (fields.get("service_id") or fields.get("bundle_id")):
            fields["service_id"] = "bus"
        event = {"event_id": fields.pop("event_id", f"e{next(_EVENT_IDS):08d}"),
                 "resident_id": rid, "type": kind, "ts": ts,
                 "channel": fields.pop("channel", "app"), "schema_version": 1, **fields}
        if isinstance(event.get("context"), dict):
            event["context"] = json.dumps(event["context"], separators=(",", ":"),
                                          sort_keys=True)
        self.events.append(event)
        return event

    def profile(self, rid: str, day: int | date, neighbourhood: str | None,
                **extra: Any) -> None:
        context = dict(extra)
        if neighbourhood is not None:
            context["neighbourhood"] = neighbourhood
        self.add(rid, "profile", day, hour=6, context=context)

    def write(self, root: Path) -> Path:
        EventLog(root).append(self.events)
        return root


def random_log(catalog: Catalog, *, residents: int = 160, start: date = date(2023, 1, 2),
               end: date = date(2024, 3, 31), seed: int = 3) -> Log:
    """A seeded log with every kind of resident: daily, weekly, monthly, rare, seasonal,
    profile-only, re-profiled, bundle and service contacts over several channels."""
    rng = random.Random(seed)
    log = Log(start)
    span = (end - start).days + 1
    services = list(catalog.service_ids)
    bundles = list(catalog.bundle_ids)
    nbs = list(catalog.neighbourhood_ids)[:4]
    channels = ["app", "web", "kiosk"]
    for i in range(residents):
        rid = f"r{i:04d}"
        kind = rng.random()
        p = 0.8 if kind < 0.1 else 0.35 if kind < 0.3 else 0.08 if kind < 0.6 else 0.01
        first = rng.randrange(span)
        stop = span if rng.random() < 0.7 else rng.randrange(first, span)
        favourite = rng.sample(services, 3)
        if rng.random() < 0.85:
            log.profile(rid, first, rng.choice(nbs))
            if rng.random() < 0.15:
                log.profile(rid, min(first + rng.randrange(60), span - 1), rng.choice(nbs))
            if rng.random() < 0.1:
                log.profile(rid, span - 1, None, age_band="26-40")
        if rng.random() < 0.05:
            continue  # profile only: known, never in contact
        for d in range(first, stop):
            if rng.random() < p:
                for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
                    if rng.random() < 0.25:
                        log.add(rid, rng.choice(["view", "click", "subscribe"]), d,
                                hour=rng.randrange(24), bundle_id=rng.choice(bundles),
                                channel=rng.choice(channels))
                    else:
                        log.add(rid, rng.choice(["use", "view", "pay", "rate"]), d,
                                hour=rng.randrange(24), service_id=rng.choice(favourite),
                                channel=rng.choice(channels))
    for e in log.events:  # a rating needs a value in the real schema; the log does not care
        if e["type"] == "rate":
            e["value"] = 4.0
    return log


# --- the reference -------------------------------------------------------------------------
def _monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _label(monday: date) -> str:
    y, w, _ = monday.isocalendar()
    return f"{y}-W{w:02d}"


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def reference(events: list[dict[str, Any]], catalog: Catalog, *, window_days: int = 28,
              daily_min_days: int = 20, weekly_min_weeks: int = 3,
              yearly_weeks: int = 52) -> dict[str, dict]:
    """Engagement tables keyed by (dimension, value, period) → dict of figures."""
    first_any: dict[str, date] = {}
    profile_nb: dict[str, tuple[datetime, str]] = {}
    contacts: dict[str, list[tuple[date, int, str, str, str]]] = defaultdict(list)
    days_all = []
    for e in events:
        ts = e["ts"].astimezone(UTC)
        d = ts.date()
        days_all.append(d)
        rid = e["resident_id"]
        first_any[rid] = min(first_any.get(rid, d), d)
        if e["type"] == "profile":
            ctx = json.loads(e["context"]) if e.get("context") else {}
            if ctx.get("neighbourhood") and (rid not in profile_nb or
                                             ts >= profile_nb[rid][0]):
                profile_nb[rid] = (ts, ctx["neighbourhood"])
        elif e["type"] in CONTACTS:
            dom = catalog.domain_of(e.get("service_id"), e.get("bundle_id")) or "_unknown"
            fac = catalog.aggregation_factor_of(e.get("service_id"), e.get("bundle_id")) \
                or "_unknown"
            contacts[rid].append((d, 1, dom, fac, e["channel"]))
    d0, d1 = min(days_all), max(days_all)
    nb_of = {rid: profile_nb.get(rid, (None, "_unknown"))[1] for rid in first_any}

    # membership: group → resident → list of contact days; group → resident → first day
    members: dict[tuple[str, str], dict[str, list[date]]] = defaultdict(lambda: defaultdict(list))
    known_from: dict[tuple[str, str], dict[str, date]] = defaultdict(dict)
    for rid, first in first_any.items():
        for g in (("all", "all"), ("neighbourhood", nb_of[rid])):
            known_from[g][rid] = first
            members[g].setdefault(rid, [])
    for rid, items in contacts.items():
        for d, _, dom, fac, ch in items:
            members[("all", "all")][rid].append(d)
            members[("neighbourhood", nb_of[rid])][rid].append(d)
            for g in (("domain", dom), ("factor", fac), ("channel", ch)):
                members[g][rid].append(d)
                known_from[g][rid] = min(known_from[g].get(rid, d), d)

    weeks = []
    m = _monday(d0)
    while m <= d1:
        weeks.append(m)
        m += timedelta(days=7)
    out: dict[str, dict] = {"cadence": {}, "stickiness": {}, "contacts": {}, "monthly": {},
                            "cohorts": {}, "lifetime": {}}
    for g, residents in members.items():
        day_sets = {rid: set(days) for rid, days in residents.items()}
        for monday in weeks:
            end = monday + timedelta(days=6)
            w_lo = end - timedelta(days=window_days - 1)
            y_lo = end - timedelta(days=7 * yearly_weeks - 1)
            counts = dict.fromkeys(["daily", "weekly", "monthly", "yearly", "dormant"], 0)
            known = 0
            per_week: list[int] = []
            wau = 0
            for rid, days in residents.items():
                if known_from[g].get(rid, date.max) > end:
                    continue
                known += 1
                in_window = {d for d in days if w_lo <= d <= end}
                weeks_in = {_monday(d) for d in in_window}
                if len(in_window) >= daily_min_days:
                    counts["daily"] += 1
                elif len(weeks_in) >= weekly_min_weeks:
                    counts["weekly"] += 1
                elif in_window:
                    counts["monthly"] += 1
                elif any(y_lo <= d <= end for d in days):
                    counts["yearly"] += 1
                else:
                    counts["dormant"] += 1
                n_week = sum(1 for d in days if monday <= d <= end)
                if n_week:
                    wau += 1
                    per_week.append(n_week)
            key = (*g, _label(monday))
            out["cadence"][key] = {"known": known, **counts}
            observed = [monday + timedelta(days=i) for i in range(7)
                        if d0 <= monday + timedelta(days=i) <= d1]
            dau = [sum(1 for days in day_sets.values() if day in days) for day in observed]
            mau = counts["daily"] + counts["weekly"] + counts["monthly"]
            out["stickiness"][key] = {"dau_mean": sum(dau) / len(observed), "wau": wau,
                                      "mau": mau}
            hist = {"h0": known - wau, "h1": 0, "h2": 0, "h3_4": 0, "h5_7": 0, "h8_14": 0,
                    "h15_plus": 0}
            for n in per_week:
                name = ("h1" if n == 1 else "h2" if n == 2 else "h3_4" if n <= 4 else
                        "h5_7" if n <= 7 else "h8_14" if n <= 14 else "h15_plus")
                hist[name] += 1
            out["contacts"][key] = {
                "active": wau, "contacts": sum(per_week), **hist,
                "p50": nearest_rank(per_week, 0.5) if per_week else None,
                "p90": nearest_rank(per_week, 0.9) if per_week else None,
            }
        # calendar months and cohorts
        months = sorted({(d.year, d.month) for ds in residents.values() for d in ds})
        all_months = []
        y, mo = d0.year, d0.month
        while (y, mo) <= (d1.year, d1.month):
            all_months.append((y, mo))
            y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
        for y, mo in all_months:
            label = f"{y}-{mo:02d}"
            mau = sum(1 for ds in residents.values() if any((d.year, d.month) == (y, mo)
                                                             for d in ds))
            thursday_weeks = [w for w in weeks if (w + timedelta(days=3)).month == mo
                              and (w + timedelta(days=3)).year == y]
            waus = [out["stickiness"][(*g, _label(w))]["wau"] for w in thursday_weeks]
            out["monthly"][(*g, label)] = {
                "mau": mau, "wau_mean": sum(waus) / len(waus) if waus else None}
        del months
        totals = sorted((len(ds) for ds in residents.values() if ds), reverse=True)
        if totals:
            top = math.ceil(len(totals) / 10)
            out["lifetime"][g] = {
                "residents": len(totals), "contacts": sum(totals),
                "l1": totals.count(1), "l20_plus": sum(t >= 20 for t in totals),
                "p50": nearest_rank(totals, 0.5), "p90": nearest_rank(totals, 0.9),
                "top10_share": sum(totals[:top]) / sum(totals),
            }
        cohort_of = {rid: min(ds) for rid, ds in residents.items() if ds}
        for rid, first in cohort_of.items():
            c = (first.year, first.month)
            active = {(d.year, d.month) for d in residents[rid]}
            for y, mo in active:
                since = (y - c[0]) * 12 + (mo - c[1])
                key = (*g, f"{c[0]}-{c[1]:02d}", since)
                out["cohorts"][key] = out["cohorts"].get(key, 0) + 1
    return out
