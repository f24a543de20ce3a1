"""Helpers for the ingestion tests: produce, dump Redis state, and an independent reference.

:class:`ReferenceState` recomputes, in plain Python and event by event, what the consumer
must leave in Redis according to docs/redis-keys.md. It shares no code with the Lua
script, so a test that compares the two checks the script, not itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bouquet.core.catalog import Catalog
from bouquet.core.keys import Keys
from bouquet.core.recommendation import development_ids
from bouquet.core.redisdump import read_keys, scan_keys
from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics
from bouquet.streaming.producer import EventProducer

CONTACTS = {"view", "click", "subscribe", "use", "pay", "rate", "dismiss", "unsubscribe"}
STAGES = {"view": "shown", "click": "opened", "subscribe": "subscribed", "use": "used"}
#: ingestion bookkeeping (de-duplication markers, outbox, applied outbox entries), not state
MARKERS = ("ingest:seen:", "ingest:{dlq}:seen:", "ingest:outbox:", "{eng}:applied:")


def produce(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) pairs in order and wait for every acknowledgement."""
    ensure_topics(settings)
    with EventProducer(settings, throughput=True) as producer:
        for key, value in messages:
            producer.send_raw(value, key=key)
        producer.flush()


def _ts(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"]).astimezone(UTC)


def _round(value: float) -> float:
    return round(float(value), 3)


def late_event_ids(events: list[dict[str, Any]]) -> set[str]:
    """Events a consumer with erasure hooks (``bouquet ingest``) drops unwritten: those
    time-stamped at or before an erasure of their resident that came before them (each
    resident's events are in one partition, so stream order is their order)."""
    cutoffs: dict[str, datetime] = {}
    seen: set[str] = set()
    late: set[str] = set()
    for e in events:
        rid, ts = e["resident_id"], _ts(e)
        if e["type"] == "erase":
            cutoffs[rid] = max(ts, cutoffs.get(rid, ts))
        elif e["event_id"] not in seen and rid in cutoffs and ts <= cutoffs[rid]:
            late.add(e["event_id"])
        seen.add(e["event_id"])
    return late


class ReferenceState:
    """What Redis must hold after ``events`` (valid, in partition order) were ingested;
    ``drop_late``: by a consumer with erasure hooks (see :func:`late_event_ids`)."""

    def __init__(self, catalog: Catalog, prefix: str, cap: int = 50,
                 drop_late: bool = False) -> None:
        self.drop_late = drop_late
        self.catalog = catalog
        self.keys = Keys(prefix)
        self.cap = cap
        self.seen: set[str] = set()
        self.recent: dict[str, list[dict]] = defaultdict(list)
        self.profile: dict[str, dict[str, str]] = defaultdict(dict)
        self.holdings: dict[str, set[str]] = defaultdict(set)
        self.holdings_ts: dict[str, dict[str, float]] = defaultdict(dict)
        self.dismissed: dict[str, set[str]] = defaultdict(set)
        self.last: dict[str, float] = {}
        self.active: dict[str, set[str]] = defaultdict(set)
        self.contacts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.funnel: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.funnel_index: set[str] = set()

    def apply_all(self, events: list[dict[str, Any]]) -> ReferenceState:
        late = late_event_ids(events) if self.drop_late else set()
        for event in events:
            if event["event_id"] not in late:
                self.apply(event)
        return self

    def apply(self, e: dict[str, Any]) -> None:
        if e["event_id"] in self.seen:
            return
        self.seen.add(e["event_id"])
        rid, kind, ts = e["resident_id"], e["type"], _ts(e)
        epoch = ts.timestamp()
        if kind == "erase":
            for table in (self.recent, self.profile, self.holdings, self.holdings_ts,
                          self.dismissed):
                table.pop(rid, None)
            self.last.pop(rid, None)
            for members in self.active.values():
                members.discard(rid)
            return
        if kind == "profile":
            prof = self.profile[rid]
            if epoch >= float(prof.get("profile_ts", "-inf")):
                for name, value in e.get("context", {}).items():
                    if value is not None:
                        prof[name] = ("1" if value else "0") if isinstance(value, bool) \
                            else str(value)
                prof["profile_ts"] = epoch
            return
        if kind == "consent":
            # in order of receipt, per purpose: a resident's events are received in stream
            # order (one partition); the receipt times themselves are the broker's (not
            # compared)
            field = "contact" if (e.get("context") or {}).get("purpose") == "contact" \
                else "consent"
            self.profile[rid][field] = "1" if e["value"] == 1 else "0"
            return
        item = {"event_id": e["event_id"], "type": kind, "ts": _round(epoch),
                "channel": e["channel"]}
        for name in ("service_id", "bundle_id", "recommendation_id", "value"):
            if e.get(name) is not None:
                item[name] = float(e[name]) if name == "value" else e[name]
        self.recent[rid] = ([item] + self.recent[rid])[: self.cap]
        self.last[rid] = max(self.last.get(rid, float("-inf")), epoch)
        nb = self.profile.get(rid, {}).get("neighbourhood", "_unknown")
        day = ts.date()
        year, week, _ = day.isocalendar()
        buckets = {"day": day.isoformat(), "week": f"{year}-W{week:02d}"}
        sid, bid = e.get("service_id"), e.get("bundle_id")
        dims = [("all", "all"), ("nb", nb), ("channel", e["channel"])]
        domain = self.catalog.domain_of(sid, bid)
        factor = self.catalog.aggregation_factor_of(sid, bid)
        if domain:
            dims.append(("domain", domain))
        if factor:
            dims.append(("factor", factor))
        for period, bucket in buckets.items():
            for dim, value in dims:
                self.active[self.keys.active(period, bucket, dim, value)].add(rid)
            counts = self.contacts[self.keys.contacts(period, bucket)]
            counts[kind] += 1
            counts["all"] += 1
        if kind in ("subscribe", "unsubscribe"):
            for member in ([f"b:{bid}"] if bid else []) + ([f"s:{sid}"] if sid else []):
                if epoch >= self.holdings_ts[rid].get(member, float("-inf")):
                    self.holdings_ts[rid][member] = epoch
                    if kind == "subscribe":
                        self.holdings[rid].add(member)
                    else:
                        self.holdings[rid].discard(member)
        if kind == "dismiss" and bid:
            self.dismissed[rid].add(bid)
        if kind in STAGES and e.get("recommendation_id"):
            # signed ids credit their arm, any other id the unattributed one
            model_version, variant = development_ids().arm(e["recommendation_id"])
            self.funnel[self.keys.funnel(model_version, variant)][STAGES[kind]] += 1
            self.funnel_index.add(f"{model_version}:{variant}")

    def dump(self) -> dict[str, Any]:
        """The expected state in :func:`dump_state`'s normalised form."""
        k = self.keys
        out: dict[str, Any] = {}
        for rid, items in self.recent.items():
            if items:
                out[k.recent(rid)] = items
        for rid, prof in self.profile.items():
            if prof:
                out[k.profile(rid)] = {f: _round(v) if f.endswith("_ts") else v
                                       for f, v in prof.items()}
        for table, method in ((self.holdings, k.holdings), (self.dismissed, k.dismissed)):
            for rid, members in table.items():
                if members:
                    out[method(rid)] = set(members)
        for rid, stamps in self.holdings_ts.items():
            if stamps:
                out[k.holdings_ts(rid)] = {m: _round(v) for m, v in stamps.items()}
        if self.last:
            out[k.last_contact()] = {r: _round(v) for r, v in self.last.items()}
        index = set()
        for key, members in self.active.items():
            index.add(key)
            if members:
                out[key] = set(members)
        if index:
            out[k.active_index()] = {key[len(k.prefix):] for key in index}
        for table in (self.contacts, self.funnel):
            for key, counts in table.items():
                out[key] = {f: str(n) for f, n in counts.items()}
        if self.funnel_index:
            out[k.funnel_index()] = set(self.funnel_index)
        return {key[len(k.prefix):]: value for key, value in out.items()}


def dump_state(client: redis.Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` except de-duplication markers and the audit stream (its
    records carry their time of writing), normalised for comparison (prefix stripped;
    timestamps rounded to ms; recent items decoded)."""
    audit = Keys(prefix).audit().encode()
    names = [k for k in scan_keys(client, f"{prefix}*")
             if not k.decode()[len(prefix):].startswith(MARKERS) and k != audit]
    out: dict[str, Any] = {}
    for key, kind, raw in read_keys(client, names):
        name = key[len(prefix):]
        if kind == "list":
            value: Any = [json.loads(v) for v in raw]
            for item in value:
                item["ts"] = _round(item["ts"])
        elif kind == "hash":
            value = {f.decode(): v.decode() for f, v in raw.items()
                     if f not in (b"consent_ts", b"contact_ts")}  # receipt times: the
            # broker's clock
            if name.endswith(":holdings_ts") or name.endswith(":profile"):
                value = {f: _round(v) if (f.endswith("_ts") or name.endswith("_ts")) else v
                         for f, v in value.items()}
        elif kind == "set":
            value = {m.decode() for m in raw}
            if name == "{eng}:active:index":  # members are key names: compare without prefix
                value = {m[len(prefix):] for m in value}
        elif kind == "zset":
            value = {m.decode(): _round(sc) for m, sc in raw}
        else:
            value = raw
        out[name] = value
    return out


def ingest_env(settings: Settings, session_timeout_ms: int = 6000) -> dict[str, str]:
    """Environment for a ``bouquet ingest`` subprocess using ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUQUET_")}
    env.update({
        "BOUQUET_ENV": "test",
        "BOUQUET_STATE_DIR": str(settings.state_dir),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": settings.redis_url,
        "BOUQUET_TOPIC_EVENTS": settings.topic_events,
        "BOUQUET_TOPIC_DLQ": settings.topic_dlq,
        "BOUQUET_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "BOUQUET_CONSUMER_GROUP": settings.consumer_group,
        "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "BOUQUET_EVENT_LOG_DIR": str(settings.event_log_path),
        "BOUQUET_INGEST_SESSION_TIMEOUT_MS": str(session_timeout_ms),
        "BOUQUET_INGEST_HEARTBEAT_INTERVAL_MS": str(max(100, session_timeout_ms // 6)),
    })
    if settings.catalog_path is not None:
        env["BOUQUET_CATALOG_PATH"] = str(settings.catalog_path)
    return env


def start_ingest(settings: Settings, log_path: Path, *args: str,
                 batch_max_events: int = 5000,
                 session_timeout_ms: int = 6000) -> subprocess.Popen[bytes]:
    """``bouquet ingest`` as a subprocess, its output in ``log_path``."""
    handle = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(
        [sys.executable, "-m", "bouquet", "ingest", "--log-every", "1",
         "--batch-max-events", str(batch_max_events), *args],
        env=ingest_env(settings, session_timeout_ms), stdout=handle, stderr=subprocess.STDOUT)


def wait_for_text(path: Path, text: str, timeout_s: float = 60, count: int = 1) -> bool:
    """Wait until ``text`` appears ``count`` times in the file at ``path``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return True
        time.sleep(0.05)
    return False
