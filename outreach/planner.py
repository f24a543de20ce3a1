"""``bouquet outreach plan``: gather the inputs, decide, record, deliver.

1. **Inputs.** The contactable set and each resident's profile and record (Redis, chunked
   scripts, :mod:`bouquet.outreach.store`); the erasure register; the version the
   ``current`` pointer names (ids, popular lists); the event log's last
   ``BOUQUET_OUTREACH_HISTORY_DAYS`` (hours, outcomes, usage: :mod:`bouquet.outreach.history`),
   turned into the cells' posteriors (:mod:`bouquet.outreach.learning`).
2. **Decision**: :func:`bouquet.outreach.decide.decide`, with a random generator seeded from
   the holdout salt and the day, so the same inputs give the same plan.
3. **Last checks, record, then deliver.** The erasure register is re-read, and the
   residents' records (caps, pending outcomes, pauses) are written by a script that reads
   each nudged resident's contact consent again, atomically with the write: a withdrawal or
   an erasure that arrived while the plan was made drops the nudge. Then the ledger file of
   the day (a day is planned once), then one message per nudge on the outreach topic.
   Recording first means a delivery that fails costs the resident a nudge, never a second
   one on the same day.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pyarrow as pa
import redis

from bouquet.core.catalog import Catalog
from bouquet.core.events import OUTREACH_CHANNELS
from bouquet.core.keys import Keys
from bouquet.core.outreach import (
    MESSAGE_SCHEMA_VERSION,
    OUTREACH_VARIANT,
    NudgeLedger,
    PlanExists,
)
from bouquet.core.redisclient import redis_client
from bouquet.core.settings import Settings
from bouquet.outreach.candidates import OfferFilters, PublishedLists
from bouquet.outreach.decide import (
    DayPlan,
    Knowledge,
    PlanConfig,
    Residents,
    decide,
    segments_of,
)
from bouquet.outreach.history import History, read_history
from bouquet.outreach.learning import PRIOR_CONVERT, PRIOR_OPEN, BetaCells, fit_cells
from bouquet.outreach.store import OutreachStore
from bouquet.outreach.timing import DayClock
from bouquet.privacy.erasure import ErasureRegister

log = logging.getLogger(__name__)


class NothingPublished(RuntimeError):
    """No version is published: there is nothing to offer."""


@dataclass
class PlanReport:
    """What a plan did (``bouquet outreach plan`` prints it as JSON)."""

    day: str
    dry_run: bool
    residents: int
    planned: int
    by_channel: dict[str, int]
    excluded: dict[str, int]
    paused_now: int
    delivered: int = 0
    model_version: str = ""
    events_read: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan_seed(salt: str, day: date) -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}|{day.isoformat()}".encode(),
                                          digest_size=8).digest(), "big")


class Planner:
    """One deployment's outreach planner (see the module docstring)."""

    def __init__(self, settings: Settings, catalog: Catalog, filters: OfferFilters,
                 client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.filters = filters
        self.config = PlanConfig.from_settings(settings)
        self.keys = Keys(settings.redis_key_prefix)
        self.redis = client or redis_client(settings.redis_url, socket_timeout=60)
        self.store = OutreachStore(self.redis, self.keys)
        self.ledger = NudgeLedger(settings.outreach_ledger_path)

    # --- the day -------------------------------------------------------------------------
    def today(self, now: float | None = None) -> date:
        zone = ZoneInfo(self.settings.outreach_timezone)
        return datetime.fromtimestamp(time.time() if now is None else now, zone).date()

    def plan_instant(self, day: date, now: float | None = None) -> float:
        """When ``bouquet outreach run`` plans ``day``: its planning hour (local), or now if
        that has passed."""
        zone = ZoneInfo(self.settings.outreach_timezone)
        at = datetime(day.year, day.month, day.day, self.settings.outreach_plan_hour,
                      tzinfo=zone).timestamp()
        return max(at, time.time() if now is None else now)

    def plan(self, day: date | None = None, *, now: float | None = None,
             dry_run: bool = False, deliver: bool = True) -> tuple[PlanReport, DayPlan]:
        """Plan ``day`` (default: today, local) at instant ``now`` (default: the clock).
        ``dry_run``: decide only (the operators' preview); ``deliver=False``: record but put
        nothing on the outreach topic (benchmarks)."""
        # A plan allocates millions of small objects and creates no reference cycles worth
        # collecting meanwhile: the cyclic collector, which would walk all of them again and
        # again, waits until the plan is done.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._plan(day, now=now, dry_run=dry_run, deliver=deliver)
        finally:
            if collecting:
                gc.enable()

    def _plan(self, day: date | None, *, now: float | None, dry_run: bool, deliver: bool
              ) -> tuple[PlanReport, DayPlan]:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        now = time.time() if now is None else float(now)
        day = day or self.today(now)
        if abs((day - self.today(now)).days) > 366:
            raise ValueError(f"{day.isoformat()} is more than a year from "
                             f"{self.today(now).isoformat()}: a plan is for a day near now")
        if not dry_run and self.ledger.has(day):
            raise PlanExists(f"{day.isoformat()} is already planned "
                             f"({self.ledger.path(day)})")
        lists = self.store.published(self.catalog.neighbourhood_ids)
        if lists is None:
            raise NothingPublished("nothing is published yet (`bouquet publish`): outreach "
                                   "offers what serving would answer")
        ids = self.store.contactable()
        residents = self._residents(ids)
        timings["read_residents_s"] = time.perf_counter() - clock
        step = time.perf_counter()
        history = read_history(self.settings.event_log_path, self.catalog, ids, now,
                               self.settings.outreach_history_days,
                               self.settings.outreach_timezone,
                               recommendation_ids=self.config.recommendation_ids)
        knowledge = self._knowledge(history, residents, now)
        timings["read_history_s"] = time.perf_counter() - step
        step = time.perf_counter()
        rng = np.random.default_rng(plan_seed(self.settings.outreach_holdout_salt, day))
        id_array = residents.ids

        def offers(rows: np.ndarray):  # type: ignore[no-untyped-def]
            return self.store.offers(list(id_array[rows]), lists.version)

        plan = decide(day, now, residents, offers, knowledge, lists, self.catalog,
                      self.filters, self.config, rng)
        timings["decide_s"] = time.perf_counter() - step
        report = PlanReport(
            day=day.isoformat(), dry_run=dry_run, residents=plan.residents,
            planned=plan.planned, by_channel=_by_channel(plan), excluded=plan.excluded,
            paused_now=plan.paused_now, model_version=lists.model_version,
            events_read=history.events, seconds=timings)
        if dry_run:
            timings["total_s"] = time.perf_counter() - clock
            return report, plan
        step = time.perf_counter()
        self._record(plan, day, lists)
        report.planned = plan.planned
        report.by_channel = _by_channel(plan)
        timings["record_s"] = time.perf_counter() - step
        if deliver and plan.planned:
            step = time.perf_counter()
            try:
                report.delivered = self._deliver(plan)
            except Exception as exc:  # ProduceFailed, or the broker unreachable
                report.problems.append(f"delivery failed: {exc}")
                log.error("outreach %s: %d nudges recorded but not delivered: %s",
                          day.isoformat(), plan.planned, exc)
            timings["deliver_s"] = time.perf_counter() - step
        timings["total_s"] = time.perf_counter() - clock
        log.info("outreach %s: %d nudges for %d contactable residents (%s)", day.isoformat(),
                 plan.planned, plan.residents, ", ".join(f"{k} {v}" for k, v in
                                                         plan.excluded.items() if v))
        return report, plan

    # --- inputs --------------------------------------------------------------------------
    def _residents(self, ids: list[str]) -> Residents:
        register = ErasureRegister.for_settings(self.settings)
        residents, contact_ts = self.store.resident_table(ids)
        residents.erased = self._erased(register, ids, contact_ts)
        return residents

    @staticmethod
    def _erased(register: ErasureRegister, ids: list[str], contact_ts: np.ndarray
                ) -> np.ndarray:
        """On the register with an erasure at or after the contact consent they hold (a
        resident who came back and consented after an erasure is a new relationship)."""
        cutoffs = register.erased_among(ids)
        if not cutoffs:
            return np.zeros(len(ids), dtype=bool)
        cut = np.array([cutoffs.get(r, -np.inf) for r in ids])
        return np.isfinite(cut) & ~(np.nan_to_num(contact_ts, nan=-np.inf) > cut)

    def _knowledge(self, history: History, residents: Residents, now: float) -> Knowledge:
        segments = segments_of(self.catalog)
        index = {s: i for i, s in enumerate(segments)}
        unknown = index[segments[-1]]
        known = {rid: nb for rid, nb in zip(residents.ids, residents.profile["neighbourhood"],
                                            strict=True) if nb}
        outcomes = history.outcomes
        people = set(outcomes.delivered["resident_id"]) | set(outcomes.opened["resident_id"])
        missing = sorted(people - set(residents.ids))
        if missing:
            known.update(self.store.neighbourhoods(missing))
        window = self.config.rules.response_window_s
        matured = int((now - window) * 1e6)  # outcome times are µs since the epoch
        shape = (len(segments), len(self.catalog.bundle_ids) + len(self.catalog.service_ids),
                 len(OUTREACH_CHANNELS))
        strength = self.settings.outreach_prior_strength

        def cells(rows: Any, wins: frozenset[str], prior: float) -> BetaCells:
            rows = rows[rows["ts"].to_numpy(np.int64) <= matured]
            seg = np.array([index.get(known.get(r, ""), unknown) for r in rows["resident_id"]],
                           dtype=np.int64)
            return fit_cells(seg, rows["offer"].to_numpy(np.int64),
                             rows["channel"].to_numpy(np.int64),
                             rows["recommendation_id"].isin(wins).to_numpy(), shape, prior,
                             strength)

        return Knowledge(hours=history.hours,
                         open_cells=cells(outcomes.delivered, outcomes.opened_ids, PRIOR_OPEN),
                         convert_cells=cells(outcomes.opened, outcomes.converted,
                                             PRIOR_CONVERT),
                         opened=outcomes.opened_ids)

    # --- carrying the plan out -------------------------------------------------------------
    def _record(self, plan: DayPlan, day: date, lists: PublishedLists) -> None:
        """The last checks, then the records and the ledger: a resident erased while the
        plan was made loses their nudge, and so does one whose profile no longer says
        contact consent (checked by the records' script, atomically with their write)."""
        ids = plan.nudges["resident_id"].to_numpy(dtype=object)
        erased = ErasureRegister.for_settings(self.settings).erased_among(ids.tolist())
        for rid in erased:
            plan.records.pop(rid, None)
        rules = self.config.rules
        keep_s = max(rules.keep_s, rules.pause_s) + rules.response_window_s + 86400
        withdrawn = self.store.write_records(plan.records, set(ids.tolist()) - set(erased),
                                             int(keep_s))
        dropped = set(erased) | set(withdrawn)
        if dropped:
            plan.nudges = plan.nudges[~np.isin(ids, list(dropped))].reset_index(drop=True)
            plan.excluded["no_contact_consent"] += len(set(withdrawn))
            plan.excluded["erased"] += len(erased)
            log.info("outreach: %d nudge(s) dropped at the last check (consent withdrawn or "
                     "erased while planning)", len(dropped))
        self.ledger.write(day, self._ledger_rows(plan, lists))

    def _ledger_rows(self, plan: DayPlan, lists: PublishedLists) -> pa.Table:
        frame = plan.nudges
        n = len(frame)
        planned_at = datetime.fromtimestamp(plan.now, UTC)
        return pa.table({
            "plan_date": pa.array([plan.day] * n, pa.date32()),
            "message_id": pa.array(frame["message_id"].tolist(), pa.string()),
            "recommendation_id": pa.array(frame["recommendation_id"].tolist(), pa.string()),
            "model_version": pa.array([lists.model_version] * n, pa.string()),
            "segment": pa.array(frame["segment"].tolist(), pa.string()),
            "offer_kind": pa.array(frame["offer_kind"].tolist(), pa.string()),
            "offer_id": pa.array(frame["offer_id"].tolist(), pa.string()),
            "domain": pa.array(frame["domain"].tolist(), pa.string()),
            "channel": pa.array(frame["channel"].tolist(), pa.string()),
            "send_at": pa.array((frame["send_at"].to_numpy(np.float64) * 1e6).astype(np.int64),
                                pa.timestamp("us", tz="UTC")),
            "reason_code": pa.array(frame["reason_code"].tolist(), pa.string()),
            "p_open": pa.array(frame["p_open"].to_numpy(np.float32)),
            "p_convert": pa.array(frame["p_convert"].to_numpy(np.float32)),
            "frequency": pa.array(frame["frequency"].to_numpy(np.float32)),
            "gain": pa.array(frame["gain"].to_numpy(np.float32)),
            "planned_at": pa.array([planned_at] * n, pa.timestamp("us", tz="UTC")),
        })

    def messages(self, plan: DayPlan) -> list[tuple[bytes, bytes]]:
        """(key, value) of each nudge's message on the outreach topic."""
        names = {**{b.id: b.name for b in self.catalog.bundles},
                 **{s.id: s.name for s in self.catalog.services}}
        frame = plan.nudges
        if not len(frame):
            return []
        clock = DayClock.of(plan.day, self.settings.outreach_timezone)
        minutes = clock.minute_of(frame["send_at"].to_numpy(np.float64))
        local = {int(m): clock.iso(float(clock.epochs[m])) for m in np.unique(minutes)}
        encode = msgspec.json.Encoder().encode
        day = plan.day.isoformat()
        columns = [frame[c].to_numpy(dtype=object) for c in (
            "resident_id", "message_id", "recommendation_id", "channel", "offer_kind",
            "offer_id", "reason")]
        out = []
        for (rid, message_id, reference, channel, kind, offer, reason), minute in zip(
                zip(*columns, strict=True), minutes.tolist(), strict=True):
            body = {"schema_version": MESSAGE_SCHEMA_VERSION, "message_id": message_id,
                    "resident_id": rid, "recommendation_id": reference, "channel": channel,
                    "send_at": local[minute],
                    "offer": {"kind": kind, "id": offer, "name": names.get(offer, offer)},
                    "reason": reason, "variant": OUTREACH_VARIANT, "plan_date": day}
            out.append((rid.encode(), encode(body)))
        return out

    def _deliver(self, plan: DayPlan) -> int:
        from bouquet.streaming.producer import EventProducer

        producer = EventProducer(self.settings, throughput=True)
        try:
            return producer.send_raw_and_wait(self.messages(plan),
                                              self.settings.topic_outreach, timeout_s=120)
        finally:
            producer.close(10)

    # --- every day -------------------------------------------------------------------------
    def next_run(self, now: float) -> tuple[date, float]:
        """The next day to plan and when: today at the planning hour (local) if that is
        still ahead or today is not planned yet, else tomorrow at that hour."""
        zone = ZoneInfo(self.settings.outreach_timezone)
        local = datetime.fromtimestamp(now, zone)
        hour = self.settings.outreach_plan_hour
        today = local.date()
        at = datetime(today.year, today.month, today.day, hour, tzinfo=zone)
        if not self.ledger.has(today):
            return today, max(at.timestamp(), now)
        tomorrow = today + timedelta(days=1)
        at = datetime(tomorrow.year, tomorrow.month, tomorrow.day, hour, tzinfo=zone)
        return tomorrow, at.timestamp()

    def run(self, stop: threading.Event) -> int:
        """Plan every day at the planning hour until ``stop`` is set; returns the days
        planned. A failed day is logged and retried after a few minutes."""
        planned = 0
        while not stop.is_set():
            day, at = self.next_run(time.time())
            log.info("outreach: next plan %s at %s", day.isoformat(),
                     datetime.fromtimestamp(at, ZoneInfo(self.settings.outreach_timezone)))
            if stop.wait(max(0.0, at - time.time())):
                break
            try:
                report, _ = self.plan(day)
                planned += 1
                log.info("outreach: %s", json.dumps(report.as_dict()))
            except PlanExists:
                continue
            except Exception:  # Redis or the log unavailable: try again soon
                log.exception("outreach: planning %s failed; retrying in 5 minutes",
                              day.isoformat())
                stop.wait(300)
        return planned


def _by_channel(plan: DayPlan) -> dict[str, int]:
    counts = plan.nudges["channel"].value_counts().to_dict() if plan.planned else {}
    return {c: int(counts.get(c, 0)) for c in OUTREACH_CHANNELS}
