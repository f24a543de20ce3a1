"""Right of access: everything Bouquet holds about one resident, as one JSON document.

What is gathered (and from where):

* ``events`` — the resident's events in the event log, each once (first ingested copy, as
  :func:`~bouquet.core.eventlog.read_events`), with erasures applied (an erased resident's
  events up to the erasure are not "held" any more: they are hidden from every reader and
  removed by the next compaction). The scan reads only the rows of this resident
  (Parquet predicate push-down), not the whole log into memory.
* ``realtime`` — the Redis state the consumer keeps: profile (declared attributes and
  consent), holdings, dismissed bundles, the recent-contacts list, last contact, and which
  day/week activity sets currently count the resident.
* ``recommendations`` — the precomputed lists of every published version a pointer names,
  decoded into item ids, scores and reasons.
* ``consent`` — current personalisation consent and its history (consent events).
* ``outreach`` — contact consent and its history, the channels and quiet hours declared,
  holdout membership, the planner's record of the resident (recent send times, nudges
  awaiting their outcome, the streak of nudges not opened, a pause), and every nudge of the
  plan ledger whose recommendation id the resident's record or events hold.
* ``erasure`` — whether (and when) the resident was erased.
* ``stores_not_listed`` — what else may hold data derived from the resident and is not
  exported item by item (the factor vector inside registered models, Kafka topic retention),
  so the answer is complete about its own limits.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bouquet.core.eventlog import COLUMNS, DECLARED_COLUMNS, SCHEMA, EventLog, merge_declared
from bouquet.core.events import consent_purpose
from bouquet.core.keys import Keys
from bouquet.core.outreach import NudgeLedger, decode_record, in_holdout, outreach_references
from bouquet.core.recommendation import RecommendationIds
from bouquet.core.settings import Settings
from bouquet.privacy.erasure import ErasureRegister, pointer_keys

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def resident_events(settings: Settings, resident_id: str,
                    register: ErasureRegister | None = None) -> list[dict[str, Any]]:
    """The resident's events as ``read_events`` would show them, oldest first."""
    files = EventLog(settings.event_log_path).files()
    if not files:
        return []
    dataset = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet")
    table = dataset.to_table(columns=list(COLUMNS),
                             filter=pc.field("resident_id") == resident_id)
    if table.num_rows == 0:
        return []
    frame = table.to_pandas().sort_values("ingested_at", kind="stable")
    frame = frame.drop_duplicates("event_id", keep="first")
    cutoffs = frame.loc[frame["type"] == "erase", "ts"]
    if len(cutoffs):
        frame = frame[frame["ts"] > cutoffs.max()]
    register = register or ErasureRegister.for_settings(settings)
    cutoff = register.cutoff(resident_id)
    if cutoff is not None:
        frame = frame[frame["ts"].map(lambda t: t.timestamp()) > cutoff]
    frame = frame.sort_values("ts", kind="stable")
    frame = frame.assign(context=merge_declared(frame)).drop(columns=list(DECLARED_COLUMNS))
    out = []
    for row in frame.to_dict("records"):
        event = {k: v for k, v in row.items() if v is not None and not
                 (isinstance(v, float) and np.isnan(v))}
        for key in ("ts", "ingested_at"):
            if key in event:
                event[key] = event[key].isoformat()
        if "context" in event:
            event["context"] = json.loads(event["context"])
        if "schema_version" in event:
            event["schema_version"] = int(event["schema_version"])
        out.append(event)
    return out


def realtime_state(client: Any, keys: Keys, resident_id: str) -> dict[str, Any]:
    """The resident's real-time state in Redis, decoded."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.profile(resident_id))
    pipe.smembers(keys.holdings(resident_id))
    pipe.hgetall(keys.holdings_ts(resident_id))
    pipe.smembers(keys.dismissed(resident_id))
    pipe.lrange(keys.recent(resident_id), 0, -1)
    pipe.zscore(keys.last_contact(), resident_id)
    pipe.smembers(keys.active_index())
    profile, holdings, holdings_ts, dismissed, recent, last, index = pipe.execute()
    active_keys = sorted(_text(k) for k in index)
    memberships = []
    if active_keys:
        pipe = client.pipeline(transaction=False)
        for key in active_keys:
            pipe.sismember(key, resident_id)
        memberships = [k[len(keys.prefix):] for k, member in
                       zip(active_keys, pipe.execute(), strict=True) if member]
    names = keys.resident_keys(resident_id)  # every per-resident key: no SCAN needed
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    other = sorted(name for name, found in zip(names, pipe.execute(), strict=True) if found)
    return {
        "profile": {_text(k): _text(v) for k, v in profile.items()},
        "holdings": sorted(_text(h) for h in holdings),
        "holdings_ts": {_text(k): float(_text(v)) for k, v in holdings_ts.items()},
        "dismissed": sorted(_text(d) for d in dismissed),
        "recent": [json.loads(_text(item)) for item in recent],
        "last_contact": None if last is None else float(last),
        "counted_active_in": memberships,
        "keys": other,
    }


def published_lists(client: Any, keys: Keys, resident_id: str) -> list[dict[str, Any]]:
    """The resident's precomputed lists in every version a pointer names, decoded."""
    from bouquet.models.online import decode_meta, unpack_list

    pointers = pointer_keys(client, keys)
    out = []
    for pointer, key in sorted(pointers.items()):
        version = client.get(key)
        if not version:
            continue
        version = _text(version)
        meta = decode_meta(client.hgetall(keys.version_meta(version)))
        vocab = json.loads(meta.get("reason_vocab", "[]"))
        entry: dict[str, Any] = {"pointer": pointer, "keyspace_version": version,
                                 "model_version": meta.get("model_version")}
        for kind, label, ids_field in (("b", "bundles", "bundle_ids"),
                                       ("s", "services", "service_ids")):
            ids = json.loads(meta.get(ids_field, "[]"))
            items = []
            for i, r, s in unpack_list(client.get(keys.recs(version, resident_id, kind))
                                       ).tolist():
                items.append({"id": ids[i] if i < len(ids) else None, "score": float(s),
                              "reason": vocab[r] if r < len(vocab) else None})
            entry[label] = items
        out.append(entry)
    return out


def outreach_state(settings: Settings, client: Any, keys: Keys, resident_id: str,
                   events: list[dict[str, Any]], profile: dict[str, str]) -> dict[str, Any]:
    """What outreach holds about the resident (see the module docstring)."""
    record = decode_record(client.hgetall(keys.outreach(resident_id)))
    references = {r for _, r in record.pending}
    echoed = [e.get("recommendation_id") for e in events]
    verified = outreach_references(echoed, RecommendationIds.for_settings(settings))
    references.update(r for r, ours in zip(echoed, verified, strict=True) if ours)
    nudges = []
    if references:
        rows = NudgeLedger(settings.outreach_ledger_path).read(
            recommendation_ids=sorted(references)).to_pylist()
        for row in sorted(rows, key=lambda r: r["send_at"]):
            nudges.append({k: (v.isoformat() if hasattr(v, "isoformat") else v)
                           for k, v in row.items()})
    return {
        "contact": profile.get("contact") == "1",
        "contact_history": [{"ts": e["ts"], "value": e.get("value"),
                             "channel": e.get("channel")} for e in events
                            if e["type"] == "consent"
                            and consent_purpose(e.get("context")) == "contact"],
        "channels": profile.get("channels"),
        "quiet_hours": profile.get("quiet_hours"),
        "in_contactable_set": bool(client.sismember(keys.contactable(), resident_id)),
        "in_holdout": bool(in_holdout([resident_id], settings.outreach_holdout_salt,
                                      settings.outreach_holdout_share)[0]),
        "record": record.as_dict(),
        "nudges": nudges,
    }


def export_resident(settings: Settings, client: Any, resident_id: str) -> dict[str, Any]:
    """Everything held about ``resident_id`` (see the module docstring)."""
    keys = Keys(settings.redis_key_prefix)
    keys.profile(resident_id)  # validates the id before anything is read
    register = ErasureRegister.for_settings(settings)
    events = resident_events(settings, resident_id, register)
    realtime = realtime_state(client, keys, resident_id)
    consent_events = [{"ts": e["ts"], "value": e.get("value"), "channel": e.get("channel")}
                      for e in events if e["type"] == "consent"
                      and consent_purpose(e.get("context")) == "personalisation"]
    consent_field = realtime["profile"].get("consent")
    cutoff = register.cutoff(resident_id)
    return {
        "resident_id": resident_id,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "consent": {
            "personalisation": consent_field == "1",
            "source": "real-time profile" if consent_field is not None else
                      "none given (personalisation is opt-in)",
            "history": consent_events,
        },
        "erasure": {"erased": cutoff is not None,
                    "erased_at": None if cutoff is None else
                    datetime.fromtimestamp(cutoff, UTC).isoformat()},
        "outreach": outreach_state(settings, client, keys, resident_id, events,
                                   realtime["profile"]),
        "events": events,
        "realtime": realtime,
        "recommendations": published_lists(client, keys, resident_id),
        "stores_not_listed": [
            "Registered models hold a factor vector (a few dozen numbers learned from the "
            "events above) for residents who consented and had events when they were "
            "trained; it is replaced at each retraining and removed by "
            "`bouquet compact --models` after an erasure.",
            "The Kafka interactions topic keeps raw events for its retention period "
            "(BOUQUET deployments set retention.ms; the local broker keeps topics in memory).",
            "Aggregate counters (contacts per day/week, recommendation funnel) hold counts, "
            "never resident ids.",
            "Outreach messages handed to the city's messaging gateway stay in the outreach "
            "topic for its retention period and in the gateway's own records.",
        ],
    }
