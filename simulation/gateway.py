"""Outreach in a simulated city answered by a running deployment: Bouquet's own planner
against the real stack, and the loop as the city's messaging gateway.

``bouquet simulate run --api-url URL --outreach`` (what ``bouquet demo`` runs) shows the
residents what the serving API answers, as without ``--outreach``, and every simulated day:

1. the residents who accept messages (the simulator's contact consent,
   :class:`~bouquet.simulation.nudges.Recipients`) declare it in the app the day before
   the first plan — a ``consent`` event with purpose ``contact``, sent to the interactions
   topic as the simulation sends all residents' events — and those who opted out since are
   reported by the gateway (a contact-consent withdrawal, with the ``gateway`` key), as a
   messaging gateway relays an SMS "STOP";
2. once ingestion has applied those events, the deployment's
   :class:`~bouquet.outreach.planner.Planner` — the object ``bouquet outreach plan`` runs,
   reading Redis, the event log and the published lists — plans the day at its planning
   hour and puts the nudges on the outreach topic;
3. the gateway reads them from the topic (every partition, from where it ended when the
   run started: no consumer group to wait for), delivers them (a ``notify`` event each,
   at its send time) and hands them to the simulated residents, who open some
   (:mod:`bouquet.simulation.nudges`); each open is reported (``open``), and an opened
   bundle is shown to its resident within the week with the nudge's recommendation id,
   so what follows is attributed to it.

So the plans, the ledger, the operators' outreach figures and the lift against the holdout
come from the production code, on events that went through the API, Kafka and ingestion.
Residents answer bundle nudges only (the simulator shows bundles); a nudge offering a
single service is delivered and never opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd

from bouquet.core.settings import Settings
from bouquet.simulation.policies import CityView, Policy, WithPull
from bouquet.simulation.sinks import wait_until_applied

log = logging.getLogger(__name__)

#: Columns of the nudges handed to the loop (``closed_loop._nudge_week`` reads these).
NUDGE_COLUMNS = ["resident_id", "send_at", "offer_kind", "offer_id", "recommendation_id",
                 "channel"]
#: How long a day's messages may take to reach the gateway's consumer.
MESSAGES_TIMEOUT_S = 120.0


class GatewayOutreach(WithPull):
    """``pull`` (the serving API) plus the deployment's outreach planner, this object being
    the messaging gateway (see the module docstring)."""

    def __init__(self, pull: Policy, settings: Settings, api_url: str, *, gateway_key: str,
                 open_delay_s: int = 120) -> None:
        super().__init__(pull)
        self.name = f"{pull.name}+outreach"
        self.settings = settings
        self.open_delay_s = open_delay_s
        # every post is the gateway's: its key on every request
        self._client = httpx.Client(base_url=api_url, timeout=60,
                                    headers={"X-API-Key": gateway_key})
        self._contact: np.ndarray | None = None  # consent as last reported, per row
        self._last_sent: dict[str, tuple[float, str]] = {}  # send instant, channel
        self._pending: list[tuple[str, str]] = []  # posted, not yet seen applied
        self.days_planned = self.planned = self.delivered = self.opened = 0
        self.days_skipped: list[str] = []

    def start(self, city: CityView) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from bouquet.localstack import ensure_topics
        from bouquet.outreach.planner import Planner
        from bouquet.serving.ranking import OfferRanker

        super().start(city)
        self.ids = city.residents["resident_id"].to_numpy(zero_copy_only=False).astype(str)
        ensure_topics(self.settings)
        # the planner `bouquet outreach plan` builds, with serving's filters
        self.planner = Planner(self.settings, city.catalog,
                               OfferRanker.from_settings(city.catalog, self.settings))
        # every partition assigned, from its end now: the messages of this run, without
        # the seconds a consumer group takes to form
        topic = self.settings.topic_outreach
        self._consumer = KafkaConsumer(**self.settings.kafka_client_options(),
                                       enable_auto_commit=False)
        numbers = self._consumer.partitions_for_topic(topic)
        if not numbers:
            raise RuntimeError(f"the outreach topic {topic!r} has no partitions")
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            self._consumer.position(partition)  # resolve "the end" before any plan

    def run_notes(self) -> dict[str, Any]:
        notes = super().run_notes()
        notes["outreach"] = {"days_planned": self.days_planned, "planned": self.planned,
                             "delivered": self.delivered, "opened": self.opened,
                             "days_skipped": self.days_skipped}
        return notes

    def close(self) -> None:
        consumer = getattr(self, "_consumer", None)
        if consumer is not None:
            consumer.close()
        self._client.close()
        super().close()

    # --- the loop's hooks ---------------------------------------------------------------
    def plan_day(self, day: date, contact: np.ndarray) -> pd.DataFrame:
        """Report consent changes, let the deployment plan ``day``, deliver its nudges."""
        from bouquet.core.outreach import PlanExists
        from bouquet.outreach.planner import NothingPublished

        at = self.planner.plan_instant(day, now=0.0)  # its planning hour: the day is past
        clock = time.perf_counter()
        self._report_consent(contact, at)
        reported_s = time.perf_counter() - clock
        waited = len(self._pending)
        wait_until_applied(self.settings, self._pending)
        self._pending = []
        log.debug("outreach gateway %s: consent reported in %.1f s; %d events applied by "
                  "ingestion after %.1f s", day.isoformat(), reported_s, waited,
                  time.perf_counter() - clock - reported_s)
        self.days_planned += 1
        try:
            report, _ = self.planner.plan(day, now=at)
        except (PlanExists, NothingPublished) as exc:
            log.warning("outreach: %s: %s", day.isoformat(), exc)
            self.days_skipped.append(day.isoformat())
            return pd.DataFrame(columns=NUDGE_COLUMNS)
        self.planned += report.planned
        clock = time.perf_counter()
        nudges = self._messages(day, report.delivered)
        read_s = time.perf_counter() - clock
        self.delivered += len(nudges)
        self._post([self._outcome(row, "notify", row.send_at)
                    for row in nudges.itertuples()])
        log.debug("outreach gateway %s: %d messages read in %.1f s, delivered in %.1f s",
                  day.isoformat(), len(nudges), read_s, time.perf_counter() - clock - read_s)
        for row in nudges.itertuples():
            self._last_sent[row.resident_id] = (row.send_at, row.channel)
        return nudges

    def outcomes(self, nudges: pd.DataFrame, opened: np.ndarray) -> None:
        """Report the nudges the residents opened."""
        opens = nudges[opened]
        self.opened += len(opens)
        self._post([self._outcome(row, "open", row.send_at + self.open_delay_s)
                    for row in opens.itertuples()])

    # --- the gateway's side ---------------------------------------------------------------
    def _report_consent(self, contact: np.ndarray, at: float) -> None:
        """Grants the day before the first plan (the city asked in the app before it sent
        anything), then the withdrawals since the last day (a little after the nudge that
        prompted them)."""
        if self._contact is None:
            self._produce([_event(rid, "consent", at - 86400, "app", value=1,
                                  context={"purpose": "contact"}) for rid in self.ids[contact]])
        else:
            gone = self.ids[self._contact & ~contact]
            self._post([
                _event(rid, "consent", self._last_sent[rid][0] + self.open_delay_s,
                       self._last_sent[rid][1], value=0, context={"purpose": "contact"})
                for rid in gone if rid in self._last_sent])
        self._contact = contact.copy()

    def _messages(self, day: date, expected: int) -> pd.DataFrame:
        """The day's nudges as read from the outreach topic (each once: the planner's
        producer may deliver a message twice after a retry)."""
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + MESSAGES_TIMEOUT_S
        wanted = day.isoformat()
        while len(found) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"outreach: {len(found)} of {expected} messages of "
                                   f"{wanted} reached the gateway in {MESSAGES_TIMEOUT_S:.0f} s")
            for records in self._consumer.poll(timeout_ms=1000).values():
                for record in records:
                    body = json.loads(record.value)
                    if body.get("plan_date") == wanted:
                        found[body["message_id"]] = body
        return _nudge_frame(list(found.values()))

    def _outcome(self, nudge: Any, kind: str, at: float) -> dict[str, Any]:
        offer = {"bundle_id" if nudge.offer_kind == "bundle" else "service_id": nudge.offer_id}
        return _event(nudge.resident_id, kind, at, nudge.channel,
                      recommendation_id=nudge.recommendation_id, **offer)

    def _produce(self, events: list[dict[str, Any]]) -> None:
        """Send residents' own events to the interactions topic, as the simulation sends all
        of theirs (the API would audit each consent one by one: thousands of grants at once
        are the residents' app sessions, not a request)."""
        from bouquet.streaming.producer import EventProducer

        with EventProducer(self.settings, throughput=True) as producer:
            producer.send_and_wait(events, timeout_s=120)
        self._pending += [(e["event_id"], e["resident_id"]) for e in events]

    def _post(self, events: list[dict[str, Any]]) -> None:
        """POST ``events`` in batches with the gateway key, again after ``Retry-After`` when
        the API asks (rate limit, broker slow), with the same event ids."""
        size = self.settings.serving_max_batch
        for lo in range(0, len(events), size):
            batch = events[lo:lo + size]
            for _ in range(10):
                answer = self._client.post("/v1/events", json=batch)
                if answer.status_code not in (429, 503):
                    break
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            if answer.status_code != 202:
                raise RuntimeError(f"POST /v1/events (gateway): HTTP {answer.status_code} "
                                   f"{answer.text[:500]}")
            self._pending += [(e["event_id"], e["resident_id"]) for e in batch]


def _nudge_frame(messages: list[dict[str, Any]]) -> pd.DataFrame:
    """The loop's view of outreach messages (their JSON bodies)."""
    return pd.DataFrame({
        "resident_id": [m["resident_id"] for m in messages],
        "send_at": [datetime.fromisoformat(m["send_at"]).timestamp() for m in messages],
        "offer_kind": [m["offer"]["kind"] for m in messages],
        "offer_id": [m["offer"]["id"] for m in messages],
        "recommendation_id": [m["recommendation_id"] for m in messages],
        "channel": [m["channel"] for m in messages]}, columns=NUDGE_COLUMNS)


def _event(resident_id: str, kind: str, at: float, channel: str, **fields: Any
           ) -> dict[str, Any]:
    """An event of the gateway or the app; its id is derived from what it reports, so a
    batch sent again is de-duplicated by ingestion."""
    digest = hashlib.blake2b(f"{resident_id}|{kind}|{at}|{fields}".encode(),
                             digest_size=12).hexdigest()
    when = datetime.fromtimestamp(0, UTC) + timedelta(seconds=at)
    return {"schema_version": 1, "event_id": f"gw-{digest}", "resident_id": resident_id,
            "type": kind, "ts": when.isoformat(), "channel": channel, **fields}
