"""Reasons are true: every reason an answer gives names an event the resident really had,
with its verb, its item and its time frame — never "just" for an old event."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import EventLog
from bouquet.core.keys import Keys
from bouquet.models.reasons import VERBS, ReasonEvent
from bouquet.pipelines.candidates import make_candidate
from bouquet.pipelines.dataset import EventArrays, build_dataset, rule_from_settings
from bouquet.pipelines.publish import Publisher
from bouquet.pipelines.train import popularity_tables
from tests.serving.support import client_for, redis_client, set_profile

pytestmark = pytest.mark.anyio
CATALOG = load_catalog()
NAMES = {**{s.id: s.name for s in CATALOG.services}, **{b.id: b.name for b in CATALOG.bundles}}
NOW = datetime.now(UTC)
TYPES = ("use", "pay", "subscribe", "click", "view", "rate")
ONLY_AN_OLD_SUBSCRIPTION = "old-maas-subscriber"


def city(seed: int = 3, residents: int = 160) -> list[dict]:
    """Random residents: consent, then 3-12 events on random items over the last 300 days;
    one resident whose only activity is a MaaS subscription seven months ago."""
    rng = random.Random(seed)
    events: list[dict] = []

    def add(rid: str, kind: str, when: datetime, **item: str) -> None:
        events.append({"event_id": uuid.uuid4().hex, "resident_id": rid, "type": kind,
                       "ts": when, "channel": "app", "schema_version": 1,
                       "value": 3.0 if kind == "rate" else None, "context": None,
                       "service_id": item.get("service"), "bundle_id": item.get("bundle")})

    for i in range(residents):
        rid = f"t{i:03d}"
        add(rid, "consent", NOW - timedelta(days=320))
        events[-1]["value"] = 1.0
        for _ in range(rng.randint(3, 12)):
            when = NOW - timedelta(days=rng.uniform(0, 300))
            if rng.random() < 0.3:
                add(rid, rng.choice(("subscribe", "click", "view")), when,
                    bundle=rng.choice(CATALOG.bundle_ids))
            else:
                add(rid, rng.choice(TYPES), when, service=rng.choice(CATALOG.service_ids))
    add(ONLY_AN_OLD_SUBSCRIPTION, "consent", NOW - timedelta(days=240))
    events[-1]["value"] = 1.0
    add(ONLY_AN_OLD_SUBSCRIPTION, "subscribe", NOW - timedelta(days=213),
        bundle="maas-unlimited")
    return events


def matches(reason: ReasonEvent, history: list[dict]) -> bool:
    """Some event of the history has the reason's type, item and day (or month)."""
    for e in history:
        item = e["bundle_id"] if reason.kind == "b" else e["service_id"]
        if e["type"] == reason.type and item == reason.item \
                and e["ts"].date().isoformat().startswith(reason.when):
            return True
    return False


@pytest.mark.parametrize("kind", ["als", "crossview"])
async def test_every_reason_names_a_real_event_with_its_verb_and_time(make_settings,
                                                                      tmp_path, kind) -> None:
    # every reason of the model's items is checked: no exploration slot ("something new")
    settings = make_settings(state_dir=tmp_path / "state", serving_explore_share=0.0)
    events = city()
    EventLog(settings.event_log_path).append(events)
    frame = pd.DataFrame(events).sort_values("ts", kind="stable")
    data = build_dataset(EventArrays.from_frame(frame, CATALOG), rule_from_settings(settings))
    model = make_candidate(kind).fit(data).to_deployable(
        data, popularity_tables(data), {"trained_until": NOW.isoformat()})
    Publisher(settings, neighbourhoods=CATALOG.neighbourhood_ids).publish(
        model, model_version="v1")
    by_resident: dict[str, list[dict]] = {}
    for e in events:
        by_resident.setdefault(e["resident_id"], []).append(e)
    # the consumer's recent list: the resident's latest contacts, newest first
    client = redis_client(settings)
    keys_of = Keys(settings.redis_key_prefix)
    for rid, history in by_resident.items():
        set_profile(settings, rid, consent="1")
        contacts = sorted((e for e in history if e["type"] != "consent"), key=lambda e: e["ts"])
        for e in contacts[-5:]:
            client.lpush(keys_of.recent(rid), json.dumps({
                "type": e["type"], "ts": e["ts"].timestamp(), "service_id": e["service_id"],
                "bundle_id": e["bundle_id"]}))
    client.close()

    checked = traced = 0
    today = datetime.now(UTC).date()
    async with client_for(settings) as c:
        for rid, history in by_resident.items():
            for route in ("bundles", "services"):
                for rerank in ("true", "false"):
                    answer = (await c.get(f"/v1/residents/{rid}/{route}",
                                          params={"k": 8, "rerank": rerank})).json()
                    assert answer["personalised"], (rid, answer["notice"])
                    for item in answer[route]:
                        checked += 1
                        reason = ReasonEvent.parse(item["reason_code"])
                        if reason is None:
                            assert item["reason_code"] in ("cf",) or \
                                item["reason_code"].startswith("popular:"), item
                            continue
                        traced += 1
                        assert matches(reason, history), (rid, item["reason_code"])
                        assert VERBS[reason.type] in item["reason"], item
                        assert NAMES[reason.item] in item["reason"], item
                        day = date.fromisoformat(reason.when if len(reason.when) == 10
                                                 else f"{reason.when}-01")
                        if "just" in item["reason"]:
                            assert len(reason.when) == 10 and (today - day).days <= 2, item
                        else:
                            assert day.strftime("%B") in item["reason"], item
    assert checked > 2000 and traced > checked // 2, (checked, traced)

    async with client_for(settings) as c:
        old = (await c.get(f"/v1/residents/{ONLY_AN_OLD_SUBSCRIPTION}/bundles",
                           params={"k": 5})).json()
    month = (NOW - timedelta(days=213)).strftime("%B")
    for item in old["bundles"]:
        if item["reason_code"].startswith("evt:"):
            assert item["reason_code"].startswith("evt:subscribe:b:maas-unlimited:")
            assert "just" not in item["reason"] and month in item["reason"]
            assert item["reason"].startswith(f"Because you subscribed to {NAMES['maas-unlimited']}")
    assert np.isfinite([b["score"] for b in old["bundles"]]).all()
