"""A pull policy plus Bouquet's outreach planner, run in process on what a deployment sees.

:class:`OutreachPolicy` wraps a pull policy (``popular`` or the trained ``model``): the
residents keep being shown that policy's answers, and every simulated day the planner's
own decision rule, :func:`bouquet.outreach.decide.decide` — the function ``bouquet
outreach plan`` calls, with the contact rules (:mod:`bouquet.outreach.rules`), the send
times (:mod:`bouquet.outreach.timing`) and the Thompson learner
(:mod:`bouquet.outreach.learning`) — picks at most one nudge per contactable resident. Its
inputs are gathered here as :class:`~bouquet.outreach.planner.Planner` gathers them from
Redis and the event log, but from the events the loop hands to ``observe`` and the
outcomes it reports, so no Redis is needed:

* **residents**: those with contact consent (the simulator's truth about who consents,
  which a deployment's profiles hold), their declared profile, personalisation consent,
  holdings and dismissed bundles as ingestion keeps them
  (:class:`~bouquet.simulation.observed.ObservedResidents`), and the planner's record of
  each (send times, nudges awaiting their outcome, streak, pause);
* **offers**: the pull policy's published lists (:mod:`bouquet.simulation.offer_lists`) and
  the serving filters (:meth:`OfferRanker.from_settings`);
* **knowledge**: each resident's contacts by local hour over the last
  ``BOUQUET_OUTREACH_HISTORY_DAYS`` (what :mod:`bouquet.outreach.history` reads from the
  log), the offers' weekly use as the published version measured it
  (:meth:`~bouquet.outreach.candidates.PublishedLists.use_frequency`), and the open and
  conversion posteriors fitted by :func:`~bouquet.outreach.learning.fit_cells` from the
  outcomes: delivered, opened (the gateway's reports, :meth:`outcomes`) and converted (a
  use-class event carrying the nudge's recommendation id, seen in ``observe``) — counted
  once their response window is over, as the planner counts them.

What residents do with a nudge is the simulator's side
(:class:`bouquet.simulation.nudges.Recipients`), not this policy's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.cadence import USE_TYPES
from bouquet.core.events import OUTREACH_CHANNELS
from bouquet.core.outreach import ResidentRecord
from bouquet.core.settings import Settings
from bouquet.outreach.decide import (
    PROFILE_COLUMNS,
    Knowledge,
    OfferState,
    PlanConfig,
    Residents,
    decide,
    segments_of,
)
from bouquet.outreach.history import HOUR_TYPES
from bouquet.outreach.learning import PRIOR_CONVERT, PRIOR_OPEN, BetaCells, fit_cells
from bouquet.outreach.planner import plan_seed
from bouquet.serving.ranking import OfferRanker
from bouquet.simulation.observed import COLUMNS, ObservedResidents
from bouquet.simulation.policies import CityView, Policy, WithPull

_EMPTY = np.zeros(0, dtype=np.int64)
_DELIVERED = ["segment", "offer", "channel", "ts", "recommendation_id"]


class OutreachPolicy(WithPull):
    """``pull`` plus daily nudges planned by the production decision rule (see the module
    docstring). ``max_per_week`` and ``min_gap_h`` override the settings' caps (the cap
    sweep)."""

    def __init__(self, pull: Policy, settings: Settings | None = None, *, seed: int = 0,
                 name: str | None = None, max_per_week: int | None = None,
                 min_gap_h: float | None = None) -> None:
        super().__init__(pull)
        self.settings = settings or getattr(pull, "settings", None) or Settings()
        self.name = name or f"{pull.name}+outreach"
        self.seed = seed
        config = PlanConfig.from_settings(self.settings)
        rules = config.rules
        if max_per_week is not None:
            rules = replace(rules, max_per_week=max_per_week)
        if min_gap_h is not None:
            rules = replace(rules, min_gap_s=min_gap_h * 3600.0)
        self.config = replace(config, rules=rules)
        # the pull policy's own view of the residents when it keeps one (the model's)
        self._own_observed = getattr(pull, "observed", None) is None
        self.observed: ObservedResidents = (ObservedResidents(self.settings.serving_recent_n)
                                            if self._own_observed else pull.observed)  # type: ignore[attr-defined]

    def run_notes(self) -> dict[str, Any]:
        notes = super().run_notes()
        notes["outreach"] = {"days_planned": self.days_planned, "planned": self.planned,
                             "nothing_published_days": self.unpublished_days}
        return notes

    # --- the loop's hooks ---------------------------------------------------------------
    def start(self, city: CityView) -> None:
        super().start(city)
        self.catalog = city.catalog
        self.ranker = OfferRanker.from_settings(city.catalog, self.settings)
        ids = city.residents["resident_id"].to_numpy(zero_copy_only=False).astype(str)
        self.ids = ids
        self._id_array = pa.array(ids, pa.string())
        self.segments = segments_of(city.catalog)
        self._segment = {s: i for i, s in enumerate(self.segments)}
        self._bundle = {b: i for i, b in enumerate(city.catalog.bundle_ids)}
        self._shape = (len(self.segments), len(city.catalog.bundle_ids)
                       + len(city.catalog.service_ids), len(OUTREACH_CHANNELS))
        self.records: dict[str, ResidentRecord] = {}
        self._hour_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._delivered: list[pd.DataFrame] = []
        self.opened: set[str] = set()
        self.converted: set[str] = set()
        self._awaiting: set[str] = set()  # nudges whose conversion may still come
        self.hours = np.zeros((len(ids), 24), np.float32)
        self.days_planned = self.planned = self.unpublished_days = 0

    def before_week(self, when: datetime) -> None:
        """The pull policy's week starts (the model retrains on schedule, so the week's
        plans offer what it publishes); the log-derived knowledge is read again."""
        hook = getattr(self.pull, "before_week", None)
        if hook is not None:
            hook(when)
        refresh = getattr(self.pull, "refresh", None)
        if refresh is not None:
            refresh()
        self._read_history(when.timestamp())

    def observe(self, events: pa.Table) -> None:
        super().observe(events)
        table = events.select(list(COLUMNS))
        if self._own_observed:
            self.observed.apply(table)
        rows = pc.index_in(table["resident_id"], value_set=self._id_array
                           ).to_numpy(zero_copy_only=False)
        known = ~np.isnan(rows.astype(float))
        ts = table["ts"].cast(pa.int64()).to_numpy()
        local = pc.hour(table["ts"].cast(pa.timestamp("us", tz=self.config.timezone))
                        ).to_numpy(zero_copy_only=False)
        kind = table["type"]
        hour_rows = pc.is_in(kind, value_set=pa.array(sorted(HOUR_TYPES))
                             ).to_numpy(zero_copy_only=False) & known
        self._hour_parts.append((rows[hour_rows].astype(np.int64),
                                 local[hour_rows].astype(np.int64), ts[hour_rows]))
        is_use = pc.is_in(kind, value_set=pa.array(sorted(USE_TYPES))
                          ).to_numpy(zero_copy_only=False)
        if self._awaiting:
            refs = table["recommendation_id"].to_numpy(zero_copy_only=False)
            self.converted.update(r for r in refs[is_use] if r in self._awaiting)

    # --- planning -----------------------------------------------------------------------
    def plan_day(self, day: date, contact: np.ndarray) -> pd.DataFrame:
        """The nudges of ``day`` (decide's rows) for residents with contact consent
        (``contact``: one flag per resident row), planned at the planning hour."""
        self.days_planned += 1
        offers = getattr(self.pull, "outreach_offers", None)
        found = offers() if offers is not None else None
        if found is None:  # nothing published: the planner has nothing to offer
            self.unpublished_days += 1
            return pd.DataFrame()
        lists, packed_of = found
        zone = ZoneInfo(self.config.timezone)
        now = datetime(day.year, day.month, day.day, self.settings.outreach_plan_hour,
                       tzinfo=zone).timestamp()
        residents = self._residents(contact)
        observed = self.observed

        def offer_state(rows: np.ndarray) -> OfferState:
            found = [observed.get(rid) for rid in residents.ids[rows]]
            return OfferState(
                [" ".join(sorted(r.holdings)) if r else "" for r in found],
                [" ".join(sorted(r.dismissed)) if r else "" for r in found],
                {"b": [packed_of(rid) for rid in residents.ids[rows]],
                 "s": [b""] * len(rows)})

        rows = self._rows_of(residents.ids)
        knowledge = Knowledge(hours=self.hours[rows], open_cells=self._cells(now, True),
                              convert_cells=self._cells(now, False),
                              opened=frozenset(self.opened))
        rng = np.random.default_rng([plan_seed(self.config.holdout_salt, day), self.seed])
        plan = decide(day, now, residents, offer_state, knowledge, lists, self.catalog,
                      self.ranker, self.config, rng)
        self.records.update(plan.records)
        self.planned += plan.planned
        return plan.nudges

    def outcomes(self, nudges: pd.DataFrame, opened: np.ndarray) -> None:
        """What the gateway reports of delivered nudges: each one delivered (``notify``)
        and whether it was opened. Contact withdrawals reach the planner as the residents'
        consent (``plan_day``'s ``contact``)."""
        refs = nudges["recommendation_id"].to_numpy(dtype=object)
        self._delivered.append(pd.DataFrame({
            "segment": nudges["segment"].map(self._segment).to_numpy(np.int64),
            "offer": nudges["offer_id"].map(self._bundle).to_numpy(np.int64),
            "channel": nudges["channel"].map(OUTREACH_CHANNELS.index).to_numpy(np.int64),
            "ts": nudges["send_at"].to_numpy(np.float64),
            "recommendation_id": refs}, columns=_DELIVERED))
        self.opened.update(refs[opened].tolist())
        self._awaiting.update(refs[opened].tolist())

    # --- inputs ---------------------------------------------------------------------------
    def _residents(self, contact: np.ndarray) -> Residents:
        """The contactable residents a plan starts from (the contactable set): contact
        consent, known to the deployment and not erased, their profile as declared."""
        observed = self.observed
        ids = [rid for rid in self.ids[np.flatnonzero(contact)] if rid in observed]
        found = [observed.residents[rid] for rid in ids]
        profiles = [r.profile for r in found]
        columns = {name: np.array([p.get(name) for p in profiles] + [None],
                                  dtype=object)[:-1] for name in PROFILE_COLUMNS}
        return Residents(np.array(ids, dtype=object), np.ones(len(ids), dtype=bool),
                         np.array([bool(p.get("consent")) for p in profiles], dtype=bool),
                         np.zeros(len(ids), dtype=bool), columns,
                         [self.records.get(rid) for rid in ids])

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        return pc.index_in(pa.array(ids.astype(str), pa.string()), value_set=self._id_array
                           ).to_numpy(zero_copy_only=False).astype(np.int64)

    def _read_history(self, now: float) -> None:
        """Hours over the history window before ``now``, as the planner reads them from the
        log."""
        since_us = int((now - self.settings.outreach_history_days * 86400) * 1e6)
        n = len(self.ids)
        who, hour, ts = _stack(self._hour_parts)
        keep = ts >= since_us
        self.hours = np.bincount(who[keep] * 24 + hour[keep], minlength=n * 24
                                 ).reshape(n, 24).astype(np.float32)

    def _cells(self, now: float, opens: bool) -> BetaCells:
        """Open (or conversion) posteriors from the outcomes whose response window is over:
        opens of delivered nudges, conversions of opened ones."""
        matured = now - self.config.rules.response_window_s
        frame = pd.concat(self._delivered) if self._delivered else pd.DataFrame(
            {c: [] for c in _DELIVERED})
        frame = frame[frame["ts"].to_numpy(np.float64) <= matured]
        refs = frame["recommendation_id"]
        if not opens:
            frame = frame[refs.isin(self.opened).to_numpy()]
            refs = frame["recommendation_id"]
        wins = refs.isin(self.opened if opens else self.converted).to_numpy()
        return fit_cells(frame["segment"].to_numpy(np.int64), frame["offer"].to_numpy(np.int64),
                         frame["channel"].to_numpy(np.int64), wins, self._shape,
                         PRIOR_OPEN if opens else PRIOR_CONVERT,
                         self.settings.outreach_prior_strength)


def _stack(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The three columns of weekly parts, concatenated."""
    if not parts:
        return (_EMPTY,) * 3
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
