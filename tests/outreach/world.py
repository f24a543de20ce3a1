"""A small in-memory city for the planner's property tests: residents whose consent,
erasure, profile and replies change from day to day, planned with the real decision rule
(:func:`bouquet.outreach.decide.decide`) and the real serving filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import numpy as np

from bouquet.core.catalog import load_catalog
from bouquet.core.events import OUTREACH_CHANNELS
from bouquet.core.outreach import ResidentRecord
from bouquet.core.profile import all_segments
from bouquet.models.online import PublishedVersion, pack_list, unpack_list
from bouquet.outreach.candidates import PublishedLists
from bouquet.outreach.decide import (
    DayPlan,
    Knowledge,
    OfferState,
    PlanConfig,
    Residents,
    decide,
    segments_of,
)
from bouquet.outreach.learning import PRIOR_CONVERT, PRIOR_OPEN, fit_cells
from bouquet.serving.ranking import OfferRanker

CATALOG = load_catalog()
RANKER = OfferRanker(CATALOG)
ZONE = "Europe/Paris"
QUIET_CHOICES = (None, "21:00-08:00", "22:30-06:15", "12:00-14:00", "00:00-23:00")


def published(rng: np.random.Generator, reason_vocab: list[str] | None = None
              ) -> PublishedLists:
    lists = PublishedLists("v1-test", "v1", list(CATALOG.bundle_ids),
                           list(CATALOG.service_ids), reason_vocab or ["cf"])
    segments = all_segments(CATALOG.neighbourhood_ids)
    lists.use_rate = {"b": rng.uniform(0.1, 3.0, len(CATALOG.bundle_ids)),
                      "s": rng.uniform(0.1, 3.0, len(CATALOG.service_ids))}
    for kind, ids in (("b", CATALOG.bundle_ids), ("s", CATALOG.service_ids)):
        # every neighbourhood's list and the city's; about half the segments' (the
        # segment cold start of consenting residents without a list of their own)
        for where in ["_all", *CATALOG.neighbourhood_ids,
                      *(seg for seg in segments if rng.random() < 0.5)]:
            order = rng.permutation(len(ids))[: rng.integers(0, len(ids) + 1)]
            lists.popular[(kind, where)] = unpack_list(pack_list(
                order, np.sort(rng.random(len(order)))[::-1]))
    return lists


def serving_view(lists: PublishedLists) -> PublishedVersion:
    """The same lists as a serving process holds them (what ``OfferRanker.rank`` reads)."""
    model = SimpleNamespace(bundle_ids=lists.bundle_ids, service_ids=lists.service_ids)
    version = PublishedVersion(lists.version, lists.model_version, "run", model,  # type: ignore[arg-type]
                               list(lists.reason_vocab), meta=lists.audience.as_meta())
    version.popular = dict(lists.popular)
    return version


def random_profile(rng: np.random.Generator) -> dict:
    profile: dict = {}
    if rng.random() < 0.85:
        profile["neighbourhood"] = str(rng.choice(CATALOG.neighbourhood_ids))
    if rng.random() < 0.7:
        profile["age_band"] = str(rng.choice(["18-25", "26-40", "41-64", "65+"]))
    if rng.random() < 0.5:
        profile["household"] = str(rng.choice(["single", "couple", "family", "shared"]))
    profile["student"] = bool(rng.random() < 0.2)
    profile["low_income"] = bool(rng.random() < 0.2)
    if rng.random() < 0.6:
        k = int(rng.integers(1, 4))
        profile["channels"] = tuple(rng.choice(OUTREACH_CHANNELS, k, replace=False).tolist())
    quiet = QUIET_CHOICES[int(rng.integers(0, len(QUIET_CHOICES)))]
    if quiet:
        profile["quiet_hours"] = quiet
    return profile


def packed_list(rng: np.random.Generator, n_items: int, vocab: int) -> bytes:
    if rng.random() < 0.3:
        return b""
    k = int(rng.integers(1, n_items + 3))
    items = rng.integers(0, n_items + 2, k)  # a few indices beyond the version's ids
    return pack_list(items, rng.random(k), rng.integers(0, vocab + 1, k))


@dataclass
class Person:
    rid: str
    profile: dict
    contact: bool
    consent: bool
    erased: bool = False
    open_rate: float = 0.3
    holdings: str = ""
    dismissed: str = ""
    packed: dict = field(default_factory=dict)
    record: ResidentRecord | None = None


class World:
    """Residents over days; :meth:`plan_day` plans one day and applies what follows."""

    def __init__(self, rng: np.random.Generator, residents: int, config: PlanConfig) -> None:
        self.rng = rng
        self.config = config
        self.lists = published(rng, ["cf", "evt:use:s:bike-share:2026-11"])
        self.people: list[Person] = []
        for i in range(residents):
            p = Person(f"w{i}", random_profile(rng), bool(rng.random() < 0.8),
                       bool(rng.random() < 0.6), open_rate=float(rng.choice([0.0, 0.3, 1.0])))
            p.packed = {"b": packed_list(rng, len(CATALOG.bundle_ids), 2),
                        "s": packed_list(rng, len(CATALOG.service_ids), 2)}
            if rng.random() < 0.3:
                p.holdings = " ".join(f"b:{b}" for b in rng.choice(CATALOG.bundle_ids, 2))
            if rng.random() < 0.2:
                p.dismissed = str(rng.choice(CATALOG.bundle_ids))
            self.people.append(p)
        self.opened: set[str] = set()
        self.nudges: list[dict] = []  # every nudge planned, with what held at plan time
        segments = segments_of(CATALOG)
        shape = (len(segments), len(CATALOG.bundle_ids) + len(CATALOG.service_ids),
                 len(OUTREACH_CHANNELS))
        none = np.zeros(0, np.int64)
        self.open_cells = fit_cells(none, none, none, none, shape, PRIOR_OPEN, 10)
        self.convert_cells = fit_cells(none, none, none, none, shape, PRIOR_CONVERT, 10)

    def residents(self) -> Residents:
        people = self.people
        return Residents.from_rows([p.rid for p in people], [p.contact for p in people],
                                   [p.consent for p in people], [p.erased for p in people],
                                   [p.profile for p in people], [p.record for p in people])

    def offers(self, rows: np.ndarray) -> OfferState:
        people = [self.people[i] for i in rows]
        return OfferState([p.holdings for p in people], [p.dismissed for p in people],
                          {k: [p.packed[k] for p in people] for k in ("b", "s")})

    def plan_day(self, day: date, hour: int) -> DayPlan:
        now = datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(ZONE)).timestamp()
        knowledge = Knowledge(
            hours=self.rng.poisson(0.5, (len(self.people), 24)).astype(np.float32),
            open_cells=self.open_cells, convert_cells=self.convert_cells,
            opened=frozenset(self.opened))
        plan = decide(day, now, self.residents(), self.offers, knowledge, self.lists, CATALOG,
                      RANKER, self.config, self.rng)
        by_id = {p.rid: p for p in self.people}
        for rid, record in plan.records.items():
            by_id[rid].record = record
        for row in plan.nudges.to_dict("records"):
            person = by_id[row["resident_id"]]
            self.nudges.append({**row, "day": day, "now": now, "profile": dict(person.profile),
                                "contact": person.contact, "erased": person.erased})
            if self.rng.random() < person.open_rate:
                self.opened.add(row["recommendation_id"])
        return plan

    def next_day(self) -> None:
        """Residents change their minds, leave, declare other channels."""
        for p in self.people:
            if self.rng.random() < 0.1:
                p.contact = not p.contact
            if self.rng.random() < 0.03:
                p.erased = True
            if self.rng.random() < 0.05:
                p.profile = random_profile(self.rng)


def days_from(start: date, n: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]
