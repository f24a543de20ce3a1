"""One day's plan from the residents' state: pure logic on arrays, no I/O.

:func:`decide` is the whole decision rule of docs/outreach.md, in order:

1. **who**: residents whose profile says contact consent, not erased, not in the holdout,
   not paused (after settling their past nudges, :mod:`bouquet.outreach.rules`);
2. **when at the earliest**: the caps, the minimum gap and "not before now" as one instant;
   a resident with no allowed minute left in the day after it (quiet hours) is not planned;
3. **what and how**: the candidates (:mod:`bouquet.outreach.candidates`) × the channels the
   resident accepts, each with a Thompson draw of P(open) and P(convert) for its cell and the
   offer's weekly use (the published version's rates, serving's cadence measure); the nudge
   is the best expected cadence gain ``P(open) × P(convert) × uses per week``; a channel
   over its daily budget keeps its best gains and the others move to their next channel;
4. **at what time**: the open hour of most weight in the resident's hour profile, a minute
   in it spread by a stable hash (:mod:`bouquet.outreach.timing`).

:class:`bouquet.outreach.planner.Planner` gathers the inputs from Redis and the event log
and carries the plan out; the property tests drive :func:`decide` over random histories.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from bouquet.core.catalog import Catalog
from bouquet.core.events import OUTREACH_CHANNELS
from bouquet.core.outreach import OUTREACH_VARIANT, ResidentRecord, holdout_points, in_holdout
from bouquet.core.profile import SEGMENT_FIELDS, segment_of
from bouquet.core.recommendation import RecommendationIds, development_ids
from bouquet.core.settings import Settings
from bouquet.outreach.candidates import KINDS, CandidateBuilder, OfferFilters, PublishedLists
from bouquet.outreach.learning import BetaCells
from bouquet.outreach.overlap import one_ahead
from bouquet.outreach.rules import ContactRules, earliest_send, settle, with_nudge
from bouquet.outreach.timing import DayClock, QuietTables, choose_send_minutes, hour_profile

UNKNOWN_SEGMENT = "_unknown"
#: Message ids only need to be distinct (the gateway de-duplicates on them): a PRNG seeded
#: from the OS, reseeded in forked children, rather than a system call per message.
_message_ids = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _message_ids.seed(secrets.randbits(128)))
#: Why a contactable resident got no nudge (the plan's ``excluded`` counts).
EXCLUSIONS: tuple[str, ...] = ("no_contact_consent", "erased", "holdout", "paused",
                               "no_time_today", "no_offer", "budget")


@dataclass(frozen=True)
class PlanConfig:
    """The settings :func:`decide` needs (``BOUQUET_OUTREACH_*``)."""

    rules: ContactRules = ContactRules()
    timezone: str = "Europe/Paris"
    channel_budget: dict[str, int] = field(default_factory=dict)
    holdout_share: float = 0.10
    holdout_salt: str = "bouquet-outreach"
    quiet_hours: str = "21:00-08:00"
    default_channels: tuple[str, ...] = ("push",)
    candidates: int = 5
    hour_prior_events: float = 10.0
    chunk: int = 50_000
    #: Mints the nudges' recommendation ids with the deployment's key, so the funnel and
    #: the outreach figures credit what follows a nudge (unsigned ids credit nothing).
    recommendation_ids: RecommendationIds = field(default_factory=development_ids)

    @classmethod
    def from_settings(cls, settings: Settings) -> PlanConfig:
        return cls(
            rules=ContactRules(max_per_week=settings.outreach_max_per_week,
                               min_gap_s=settings.outreach_min_gap_h * 3600.0,
                               pause_after=settings.outreach_pause_after,
                               pause_s=settings.outreach_pause_weeks * 7 * 86400.0,
                               response_window_s=settings.outreach_response_window_h * 3600.0),
            timezone=settings.outreach_timezone,
            channel_budget=dict(settings.outreach_channel_budget),
            holdout_share=settings.outreach_holdout_share,
            holdout_salt=settings.outreach_holdout_salt,
            quiet_hours=settings.outreach_quiet_hours,
            default_channels=tuple(settings.outreach_default_channels),
            candidates=settings.outreach_candidates,
            hour_prior_events=settings.outreach_hour_prior_events,
            recommendation_ids=RecommendationIds.for_settings(settings),
        )


#: Profile attributes :func:`decide` reads, as columns of :class:`Residents`.
PROFILE_COLUMNS: tuple[str, ...] = ("neighbourhood", "age_band", "household", "student",
                                    "low_income", "channels", "quiet_hours")


@dataclass
class Residents:
    """The contactable residents as read for one plan, one entry each (length n): consent
    flags, profile attributes as columns (:data:`PROFILE_COLUMNS`; None when undeclared) and
    the planner's record of each (None when empty)."""

    ids: np.ndarray  # str
    contact: np.ndarray  # bool: the profile's contact consent
    consent: np.ndarray  # bool: personalisation consent
    erased: np.ndarray  # bool: on the erasure register
    profile: dict[str, np.ndarray]  # PROFILE_COLUMNS -> object arrays
    records: list[ResidentRecord | None]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, ids: list[str], contact: list[bool], consent: list[bool],
                  erased: list[bool], profiles: list[dict[str, Any]],
                  records: list[ResidentRecord | None]) -> Residents:
        """From one profile dict per resident (tests and small callers)."""
        columns = {name: np.array([p.get(name) for p in profiles] + [None],
                                  dtype=object)[:-1] for name in PROFILE_COLUMNS}
        return cls(np.array(ids, dtype=object), np.array(contact, dtype=bool),
                   np.array(consent, dtype=bool), np.array(erased, dtype=bool), columns,
                   list(records))


@dataclass
class OfferState:
    """What the candidates need of some residents (aligned with the indices asked)."""

    holdings: list[str]  # "b:x s:y …"
    dismissed: list[str]  # "bundle-id s:service-id …"
    packed: dict[str, list[bytes]]  # kind -> the resident's precomputed list (b"" none)


@dataclass
class Knowledge:
    """What the event log taught: hour counts of the residents (aligned with
    :class:`Residents`), the cells' posteriors, opened nudges. (The offers' weekly use is
    the published version's: :meth:`PublishedLists.use_frequency`.)"""

    hours: np.ndarray  # (n, 24)
    open_cells: BetaCells
    convert_cells: BetaCells
    opened: frozenset[str] = frozenset()


@dataclass
class DayPlan:
    """A plan: its nudges (one row each), the residents' updated records, and counts."""

    day: date
    now: float
    nudges: pd.DataFrame
    records: dict[str, ResidentRecord]
    excluded: dict[str, int]
    residents: int
    paused_now: int = 0
    model_version: str = ""

    @property
    def planned(self) -> int:
        return len(self.nudges)


NUDGE_COLUMNS = ["resident_id", "message_id", "recommendation_id", "offer_kind", "offer_id",
                 "domain", "channel", "send_at", "segment", "p_open", "p_convert",
                 "frequency", "gain", "reason_code", "reason"]


def segments_of(catalog: Catalog) -> list[str]:
    """Learning segments: the catalog's neighbourhoods, then residents with none known."""
    return [*catalog.neighbourhood_ids, UNKNOWN_SEGMENT]


def decide(day: date, now: float, residents: Residents, offers: Callable[[np.ndarray],
           OfferState], knowledge: Knowledge, lists: PublishedLists, catalog: Catalog,
           filters: OfferFilters, config: PlanConfig, rng: np.random.Generator) -> DayPlan:
    """The plan of ``day`` made at instant ``now`` (see the module docstring)."""
    n = len(residents)
    rules = config.rules
    excluded = dict.fromkeys(EXCLUSIONS, 0)
    ids = residents.ids.astype(str) if n else np.empty(0, dtype=str)
    column = residents.profile
    segments = segments_of(catalog)
    seg_index = {s: i for i, s in enumerate(segments)}
    unknown = seg_index[UNKNOWN_SEGMENT]
    neighbourhood = np.array([seg_index.get(nb or "", unknown) for nb in
                              column["neighbourhood"]], dtype=np.int64)

    # 1. who: consent, erasure, holdout, then the records' pauses
    contact = residents.contact.astype(bool)
    erased = residents.erased.astype(bool)
    holdout = in_holdout(ids, config.holdout_salt, config.holdout_share)
    excluded["no_contact_consent"] = int((~contact).sum())
    excluded["erased"] = int((contact & erased).sum())
    excluded["holdout"] = int((contact & ~erased & holdout).sum())
    who = contact & ~erased & ~holdout
    records = list(residents.records)
    changed: dict[str, ResidentRecord] = {}
    paused_now = 0
    for i, record in enumerate(records):
        if record is None:
            continue
        settled, was_changed, paused = settle(record, knowledge.opened, now, rules)
        records[i] = settled
        paused_now += paused
        if was_changed:
            changed[ids[i]] = settled
    paused_until = np.array([r.paused_until if r is not None else 0.0 for r in records],
                            dtype=np.float64)
    paused_mask = who & (paused_until > now)
    excluded["paused"] = int(paused_mask.sum())
    who &= ~paused_mask

    # 2. the earliest instant, and whether the day has an allowed minute after it
    clock = DayClock.of(day, config.timezone)
    quiet_text = [q or config.quiet_hours for q in column["quiet_hours"]]
    windows = sorted(set(quiet_text)) or [config.quiet_hours]
    window_index = {w: i for i, w in enumerate(windows)}
    window = np.array([window_index[w] for w in quiet_text], dtype=np.int64)
    tables = QuietTables(windows)
    earliest = earliest_send(records, now, rules)
    earliest_minute = clock.first_minute_at_or_after(earliest)
    feasible = np.zeros(n, dtype=bool)
    if who.any():
        idx = np.flatnonzero(who)
        feasible[idx] = tables.hour_open(window[idx], earliest_minute[idx]).any(axis=1)
    excluded["no_time_today"] = int((who & ~feasible).sum())
    who &= feasible

    # 3. what and how: candidates × accepted channels, Thompson draws, best gain
    channels = list(OUTREACH_CHANNELS)
    declared, which = _distinct(column["channels"])
    accepted = np.array([[c in (d or config.default_channels) for c in channels]
                         for d in declared], dtype=bool).reshape(-1, len(channels))[which]
    # the filters' "permitted" depends on few profile attributes: one row per distinct
    # combination (serving caches it the same way)
    profiles, profile_of = _distinct_rows([column[name] for name in SIGNATURE_COLUMNS])
    builder = CandidateBuilder(catalog, lists, filters, list(catalog.neighbourhood_ids),
                               config.candidates)
    # serving's segment (core.profile.segment_of) of each resident, as builder.segments index
    segment_index = {seg: i for i, seg in enumerate(builder.segments)}
    keys, key_of = _distinct_rows([column[name] for name in SEGMENT_FIELDS])
    resident_segment = np.array(
        [segment_index.get(segment_of(dict(zip(SEGMENT_FIELDS, key, strict=True))) or "", -1)
         for key in keys], dtype=np.int64)[key_of] if n else np.zeros(0, dtype=np.int64)
    n_bundles = len(catalog.bundle_ids)
    per_channel_gain = np.full((n, len(channels)), -np.inf)
    per_channel_pick = np.full((n, len(channels)), -1, dtype=np.int64)  # offer index
    per_channel_reason = np.full((n, len(channels)), -1, dtype=np.int64)
    per_channel_open = np.zeros((n, len(channels)), dtype=np.float32)
    per_channel_convert = np.zeros((n, len(channels)), dtype=np.float32)
    frequency = lists.use_frequency(catalog)
    nb_catalog = np.where(neighbourhood < len(catalog.neighbourhood_ids), neighbourhood, -1)
    chosen_idx = np.flatnonzero(who)
    chunks = [chosen_idx[start:start + config.chunk]
              for start in range(0, len(chosen_idx), config.chunk)]
    # the next chunk's offers are read while this one's are ranked and drawn
    for rows, state in zip(chunks, one_ahead(partial(offers, rows) for rows in chunks),
                           strict=True):
        offer_parts, reason_parts = [], []
        for kind in KINDS:
            rows_of = np.array([builder.signature(kind, dict(zip(SIGNATURE_COLUMNS, key,
                                                                  strict=True)))
                                for key in profiles], dtype=np.int64)
            signature = rows_of[profile_of[rows]]
            blocked = builder.blocked(kind, state.holdings, state.dismissed)
            personalise = residents.consent[rows].astype(bool) & lists.audience.tailors
            items, reasons = builder.build(kind, personalise, state.packed[kind],
                                           nb_catalog[rows], signature, blocked,
                                           resident_segment[rows])
            offer_parts.append(np.where(items >= 0, items + (0 if kind == "b" else n_bundles),
                                        -1))
            reason_parts.append(reasons)
        offer = np.concatenate(offer_parts, axis=1)  # (R, C)
        reason = np.concatenate(reason_parts, axis=1)
        valid = (offer >= 0)[:, :, None] & accepted[rows][:, None, :]
        # one draw per (resident, candidate, accepted channel), none for the others
        r, c, h = np.nonzero(valid)
        cell_offer, seg = offer[r, c], neighbourhood[rows][r]
        p_open = np.zeros(valid.shape)
        p_convert = np.zeros(valid.shape)
        p_open[r, c, h] = knowledge.open_cells.sample(rng, seg, cell_offer, h)
        p_convert[r, c, h] = knowledge.convert_cells.sample(rng, seg, cell_offer, h)
        gain = np.full(valid.shape, -np.inf)
        gain[r, c, h] = p_open[r, c, h] * p_convert[r, c, h] * frequency[cell_offer]
        best = np.argmax(gain, axis=1)  # (R, channels): best candidate per channel
        take = np.take_along_axis
        per_channel_gain[rows] = take(gain, best[:, None, :], axis=1)[:, 0, :]
        per_channel_pick[rows] = take(offer, best, axis=1)
        per_channel_reason[rows] = take(reason, best, axis=1)
        per_channel_open[rows] = take(p_open, best[:, None, :], axis=1)[:, 0, :]
        per_channel_convert[rows] = take(p_convert, best[:, None, :], axis=1)[:, 0, :]
    has_offer = np.isfinite(per_channel_gain).any(axis=1)
    excluded["no_offer"] = int((who & ~has_offer).sum())
    who &= has_offer
    channel = _within_budgets(per_channel_gain, who, channels, config.channel_budget)
    excluded["budget"] = int((who & (channel < 0)).sum())
    who &= channel >= 0

    # 4. at what time
    picked = np.flatnonzero(who)
    weights = hour_profile(knowledge.hours, neighbourhood, len(segments),
                           config.hour_prior_events, picked)
    offset = np.floor(holdout_points(ids[picked], f"minute:{day.isoformat()}") * 60
                      ).astype(np.int64)
    minute, ok = choose_send_minutes(weights, window[picked], earliest_minute[picked],
                                     offset, tables)
    picked, minute = picked[ok], minute[ok]  # every picked resident was feasible
    send_at = clock.epochs[minute]

    # the nudges and the records
    ch = channel[picked]
    offer = per_channel_pick[picked, ch]
    offer_names = np.array([*catalog.bundle_ids, *catalog.service_ids], dtype=object)
    domains = np.array([*(b.domain.value for b in catalog.bundles),
                        *(s.domain.value for s in catalog.services)], dtype=object)
    codes = builder.codes
    reason_code = [codes[r] if r >= 0 else "" for r in per_channel_reason[picked, ch]]
    texts: dict[str, str] = {}
    for code in set(reason_code):
        texts[code] = filters.reason_text(code, day)
    model_version = lists.model_version
    references = [config.recommendation_ids.mint(model_version, OUTREACH_VARIANT)
                  for _ in picked]
    nudges = pd.DataFrame({
        "resident_id": ids[picked],
        "message_id": [f"{_message_ids.getrandbits(128):032x}" for _ in picked],
        "recommendation_id": references,
        "offer_kind": np.where(offer < n_bundles, "bundle", "service"),
        "offer_id": offer_names[offer],
        "domain": domains[offer],
        "channel": np.array(channels, dtype=object)[ch],
        "send_at": send_at,
        "segment": np.array(segments, dtype=object)[neighbourhood[picked]],
        "p_open": per_channel_open[picked, ch],
        "p_convert": per_channel_convert[picked, ch],
        "frequency": frequency[offer].astype(np.float32),
        "gain": per_channel_gain[picked, ch].astype(np.float32),
        "reason_code": reason_code,
        "reason": [texts[c] for c in reason_code],
    }, columns=NUDGE_COLUMNS)
    for i, when, reference in zip(picked.tolist(), send_at.tolist(), references, strict=True):
        changed[ids[i]] = records[i] = with_nudge(records[i], when, reference)
    return DayPlan(day=day, now=now, nudges=nudges, records=changed, excluded=excluded,
                   residents=n, paused_now=paused_now, model_version=model_version)


#: The profile attributes eligibility and availability read (``OfferRanker.permitted``).
SIGNATURE_COLUMNS: tuple[str, ...] = ("neighbourhood", "age_band", "household", "student",
                                      "low_income")


def _distinct(values: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """The distinct values of an object column (None included) and each row's index."""
    index: dict[Any, int] = {}
    which = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64,
                        count=len(values))
    return list(index), which


def _distinct_rows(columns: list[np.ndarray]) -> tuple[list[tuple[Any, ...]], np.ndarray]:
    """The distinct rows of several object columns and each row's index."""
    if not len(columns[0]):
        return [], np.zeros(0, dtype=np.int64)
    return _distinct(np.fromiter(zip(*columns, strict=True), dtype=object,
                                 count=len(columns[0])))


def _within_budgets(gain: np.ndarray, who: np.ndarray, channels: list[str],
                    budgets: dict[str, int]) -> np.ndarray:
    """Each resident's channel (−1: none): the one of best gain; a channel over its daily
    budget keeps its best gains and the others move to their next channel with room."""
    gain = np.where(who[:, None], gain, -np.inf)
    while True:
        choice = np.where(np.isfinite(gain).any(axis=1), np.argmax(gain, axis=1), -1)
        over = False
        for h, name in enumerate(channels):
            budget = budgets.get(name)
            if budget is None:
                continue
            mine = np.flatnonzero(choice == h)
            if len(mine) <= budget:
                continue
            over = True
            keep = mine[np.argsort(-gain[mine, h], kind="stable")[:budget]]
            dropped = np.setdiff1d(mine, keep, assume_unique=True)
            gain[dropped, h] = -np.inf  # they try their next channel
            # the kept ones stay; nobody else may join a full channel
            others = np.setdiff1d(np.flatnonzero(np.isfinite(gain[:, h])), keep)
            gain[others, h] = -np.inf
        if not over:
            return choice
