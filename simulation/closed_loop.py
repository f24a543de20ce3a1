"""The closed loop: simulated residents respond, week by week, to what a policy shows them.

:func:`run_policy` builds a city from a seed, writes its history, then for every week asks
the policy what to show each exposed resident (those who open the app that week, or the
weekly digest), lets the behaviour model answer (views, clicks, subscriptions that raise
later use, dismissals and fatigue), hands the week's events to the policy
(``observe``) and to an optional sink, and finally classifies every resident's cadence.
:func:`compare` repeats this for several policies over several seeds — the same seeds for
every policy, so each seed is a paired comparison — and reports mean shares with 95%
confidence intervals over seeds.

Cadence is **use cadence** (:mod:`bouquet.core.cadence`): a resident is active on a day
when they use, pay for, subscribe to or rate a service. Being shown a bundle (exposure)
or clicking or dismissing it (response) does not make anyone a weekly user; both are
reported beside it, as events per resident per week. Cadence of a resident at the end of
the run (the trailing window is the last 28 days, split into four 7-day weeks):

* **daily** — a use on at least 20 of the last 28 days (about five days a week);
* **weekly** — otherwise, a use in at least 3 of the last 4 weeks;
* **monthly** — otherwise, a use at least once in the last 28 days;
* **yearly** — otherwise, at least one use in the last 52 weeks (the history's
  subscriptions count);
* **dormant** — no use in the last 52 weeks.

*Weekly or better* (daily + weekly) is :func:`bouquet.core.cadence.weekly_or_better`.
Residents who asked for erasure are left out of the shares. The thresholds are those of
the operators' report (:class:`bouquet.analytics.engagement.CadenceRules` defaults; a test
keeps them equal), computed here on the simulator's own week grid (7-day blocks from the
first simulated day, local days) rather than ISO weeks of UTC days.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from bouquet.core.cadence import (
    DAILY_MIN_DAYS,
    WINDOW_WEEKS,
    weekly_or_better,
)
from bouquet.core.catalog import Catalog
from bouquet.core.recommendation import RecommendationIds
from bouquet.simulation.behaviour import (
    DAY_US,
    NUDGE_WEEK_BASE,
    BehaviourParams,
    NudgeViews,
    Simulation,
)
from bouquet.simulation.columns import CADENCE_CLASS_NAMES, to_arrow
from bouquet.simulation.nudges import NudgeParams, Recipients
from bouquet.simulation.policies import (
    CityView,
    NoRecommendations,
    OraclePolicy,
    Policy,
    PopularPolicy,
    RandomPolicy,
)

log = logging.getLogger(__name__)

CADENCES: tuple[str, ...] = ("daily", "weekly", "monthly", "yearly", "dormant")
TRAILING_WEEKS = WINDOW_WEEKS
HISTORY_CHUNK_ROWS = 1 << 19

#: Policies by name for the CLI; :func:`register_policy` adds more (e.g. a trained model).
POLICY_FACTORIES: dict[str, Callable[[int], Policy]] = {
    "none": lambda seed: NoRecommendations(),
    "popular": lambda seed: PopularPolicy(),
    "random": lambda seed: RandomPolicy(seed),
    "oracle": lambda seed: OraclePolicy(),
    "model": lambda seed: _model_policy(),
    "popular+outreach": lambda seed: with_outreach(PopularPolicy(), seed),
    "model+outreach": lambda seed: with_outreach(_model_policy(), seed),
}


def _model_policy() -> Policy:
    """The trained-model policy (imported lazily: it pulls in the training stack)."""
    from bouquet.simulation.model_policy import ModelPolicy

    return ModelPolicy()


def with_outreach(pull: Policy, seed: int, **options: Any) -> Policy:
    """``pull`` plus the outreach planner (imported lazily: it pulls in serving's filters);
    ``options`` go to :class:`~bouquet.simulation.outreach_policy.OutreachPolicy`."""
    from bouquet.simulation.outreach_policy import OutreachPolicy

    return OutreachPolicy(pull, seed=seed, **options)


def register_policy(name: str, factory: Callable[[int], Policy]) -> None:
    """Make a policy available to :func:`compare` and the CLI by name; ``factory(seed)``
    returns a fresh policy for one run."""
    POLICY_FACTORIES[name] = factory


def make_policy(name: str, seed: int = 0) -> Policy:
    try:
        return POLICY_FACTORIES[name](seed)
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICY_FACTORIES)}"
                         ) from None


def cadence_codes(sim: Simulation) -> np.ndarray:
    """Index into :data:`CADENCES` per resident after the weeks simulated so far (-1 for
    erased residents), from use days only."""
    done = sim.week_done
    recent = sim.use_days[:, max(0, done - TRAILING_WEEKS):done].astype(np.int32)
    days = recent.sum(1)
    earlier = sim.use_days[:, :max(0, done - TRAILING_WEEKS)].sum(1) > 0
    end_us = int(sim.day_start_us[7 * done])
    year_ago = end_us - 364 * DAY_US
    history = sim.last_history_use >= year_ago
    code = np.full(sim.n, 4, np.int8)
    code[earlier | history] = 3
    code[days > 0] = 2
    code[weekly_or_better(recent)] = 1
    code[days >= DAILY_MIN_DAYS] = 0
    code[sim.erased_at < np.iinfo(np.int64).max] = -1
    return code


def cadence_shares(sim: Simulation) -> dict[str, float]:
    """Share of (non-erased) residents at each cadence."""
    code = cadence_codes(sim)
    counted = code >= 0
    counts = np.bincount(code[counted], minlength=len(CADENCES))
    return {name: float(c / max(counted.sum(), 1)) for name, c in zip(CADENCES, counts,
                                                                      strict=True)}


@dataclass
class PolicyRun:
    """One policy on one seeded city."""

    policy: str
    seed: int
    shares: dict[str, float]  # use cadence at the end, by class (CADENCES)
    weekly_use_active: list[float]  # share of residents with a use, per week
    weekly_share: list[float]  # weekly-or-better share (use) at the end of each week
    #: events per resident per week over the run, by cadence class (use, response, exposure)
    per_resident_week: dict[str, float] = field(default_factory=dict)
    exposed: int = 0
    shown: int = 0
    accepted: int = 0
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    start: date | None = None
    end: date | None = None
    run_tag: str = ""
    #: what the policy says of its run (the model policy: family, promotion, fits)
    notes: dict[str, Any] = field(default_factory=dict)
    #: a policy that nudges: the residents' side of its messages (Recipients.figures)
    outreach: dict[str, float] = field(default_factory=dict)
    #: every nudge delivered (Recipients.delivered: row, send_at, contact, recent, opened,
    #: opted_out); None for a policy that does not nudge
    nudges: pd.DataFrame | None = field(default=None, repr=False)


def _adapter(sim: Simulation, policy: Policy) -> Callable[[np.ndarray, int], Any]:
    index = {b: i for i, b in enumerate(sim.catalog.bundle_ids)}
    unknown: set[str] = set()

    def recommend(rows: np.ndarray, k: int
                  ) -> tuple[np.ndarray, list[str | dict[int, str] | None] | None]:
        lists = policy.recommend([str(r) for r in sim.residents.ids[rows]], k)
        if len(lists) != len(rows):
            raise ValueError(f"policy {policy.name!r} answered {len(lists)} lists for "
                             f"{len(rows)} residents")
        out = np.full((len(rows), k), -1, np.int16)
        for i, bundles in enumerate(lists):
            for j, bundle in enumerate(bundles[:k]):
                if bundle in index:
                    out[i, j] = index[bundle]
                elif bundle not in unknown:
                    unknown.add(bundle)
                    log.warning("policy %s recommended unknown bundle %r (ignored)",
                                policy.name, bundle)
        given = getattr(policy, "last_recommendation_ids", None)
        if given is not None:
            # one id per answer, or one per item (aligned with the answer's bundles)
            given = [{index[b]: i for b, i in zip(bundles, found, strict=False) if b in index}
                     if isinstance(found, list) else found
                     for bundles, found in zip(lists, given, strict=True)]
        return out, given

    return recommend


def run_policy(policy: Policy, catalog: Catalog, *, residents: int, weeks: int, seed: int,
               k: int = 3, end: date | None = None, params: BehaviourParams | None = None,
               sink: Callable[[pa.Table], None] | None = None,
               on_week: Callable[[int, int], None] | None = None,
               simulation: Simulation | None = None, from_week: int = 0,
               until_week: int | None = None,
               recommendation_ids: RecommendationIds | None = None,
               nudge_params: NudgeParams | None = None
               ) -> tuple[PolicyRun, Simulation]:
    """Simulate ``weeks`` weeks of a ``residents``-strong city under ``policy``.

    ``sink`` receives the history, then each week's events (Arrow, event-log layout, sorted
    by time); ``on_week(week, events)`` reports progress. ``NoRecommendations`` shows
    nothing at all (no digest either), which is the organic baseline.

    ``until_week`` stops after that many weeks (the rest of the window is left for a later
    run); ``from_week`` resumes such a run: the history and the weeks before it are
    simulated again without recommendations and without reaching the sink or the policy —
    the same seed, size and ``end`` give the same events, which an earlier run (policy
    ``none``, ``until_week=from_week``) already delivered — and the policy starts there.

    A policy with a ``plan_day`` hook (:class:`~bouquet.simulation.outreach_policy.
    OutreachPolicy`) also nudges: each day of each week it plans, residents answer
    (:class:`~bouquet.simulation.nudges.Recipients`, with ``nudge_params``), it hears the
    outcomes, and the nudges opened are shown to their residents within that week.
    """
    started = time.perf_counter()
    sim = simulation or Simulation.create(catalog, residents, weeks, seed, end=end,
                                          params=params)
    until_week = weeks if until_week is None else until_week
    if not 0 <= from_week <= until_week <= weeks:
        raise ValueError(f"weeks {from_week}..{until_week} are not within 0..{weeks}")
    if recommendation_ids is not None:  # the deployment's key (default: the development one)
        sim.vocab = replace(sim.vocab, minter=recommendation_ids)
    start_hook = getattr(policy, "start", None)
    if start_hook is not None:
        start_hook(CityView(catalog, sim.residents.public_table(catalog), sim))
    observe = getattr(policy, "observe", None)
    by_type: dict[str, int] = {}

    def emit(table: pa.Table) -> None:
        for value, count in zip(*np.unique(table["type"].to_numpy(zero_copy_only=False),
                                           return_counts=True), strict=True):
            by_type[str(value)] = by_type.get(str(value), 0) + int(count)
        if sink is not None:
            sink(table)
        if observe is not None:
            observe(table)

    history = sim.history()
    seq = len(history)
    # the history is the largest batch (a year of registrations and subscriptions): it is
    # handed over in chunks of whole days, so only one chunk is ever an Arrow table
    if not from_week:
        for lo, hi in history.day_chunks(HISTORY_CHUNK_ROWS):
            emit(to_arrow(history.slice(lo, hi), sim.vocab, first_seq=lo))
    del history
    for _ in range(from_week):  # delivered by an earlier run: only the state and the ids
        seq += len(sim.step(None).events)
    shows = not isinstance(policy, NoRecommendations)
    recommender = _adapter(sim, policy) if shows else None
    tag = None
    if shows:
        tag = (f"{getattr(policy, 'model_version', 'sim')}."
               f"{getattr(policy, 'variant', policy.name)}.")
    run = PolicyRun(policy.name, seed, {}, [], [], start=sim.start,
                    end=sim.start.fromordinal(sim.start.toordinal() + 7 * weeks),
                    run_tag=sim.run_tag)
    before_week = getattr(policy, "before_week", None)
    recipients = None
    if getattr(policy, "plan_day", None) is not None:
        recipients = Recipients(sim.n, sim._rng(0x0DD5), nudge_params or NudgeParams(),
                                sim.params.timezone)
    for week in range(from_week, until_week):
        if before_week is not None:
            before_week(datetime.fromtimestamp(int(sim.day_start_us[7 * week]) / 1e6, UTC))
        nudges = _nudge_week(sim, policy, recipients, week) if recipients else None
        result = sim.step(recommender, k=k, rec_tag=tag, nudges=nudges)
        emit(to_arrow(result.events, sim.vocab, first_seq=seq))
        seq += len(result.events)
        run.exposed += result.exposed
        run.shown += result.shown
        run.accepted += result.subscribed_from_recs
        alive = sim.erased_at == np.iinfo(np.int64).max
        run.weekly_use_active.append(float((sim.use_days[alive, week] > 0).mean()))
        run.weekly_share.append(float(weekly_or_better(sim.use_days[alive, :week + 1]).mean()))
        if on_week is not None:
            on_week(week, len(result.events))
    run.shares = cadence_shares(sim)
    # per resident (not erased at the end) and week; erased residents' events are so few
    # that counting them in the numerator changes nothing visible
    alive_n = max(int((sim.erased_at == np.iinfo(np.int64).max).sum()), 1)
    done = max(sim.week_done, 1)
    run.per_resident_week = {name: float(sim.class_events[i].sum() / alive_n / done)
                             for i, name in enumerate(CADENCE_CLASS_NAMES)}
    run.events = seq
    run.events_by_type = dict(sorted(by_type.items()))
    run.notes = dict(getattr(policy, "run_notes", dict)())
    if recipients is not None:
        run.outreach = recipients.figures(until_week - from_week)
        run.nudges = recipients.delivered()
    run.seconds = time.perf_counter() - started
    return run, sim


def _nudge_week(sim: Simulation, policy: Any, recipients: Recipients, week: int
                ) -> NudgeViews:
    """Plan each day of ``week``, deliver the nudges to the residents, report their
    outcomes to the policy; the nudges opened, to be shown within the week."""
    index = pd.Index(np.asarray(sim.residents.ids).astype(str))
    bundle_index = {b: i for i, b in enumerate(sim.catalog.bundle_ids)}
    delay_us = recipients.params.open_delay_s * 1_000_000
    rows_out, bundles_out, ts_out = [], [], []
    given: dict[int, dict[int, str]] = {}
    for d in range(7):
        day = sim.start + timedelta(days=7 * week + d)
        nudges = policy.plan_day(day, recipients.contact.copy())
        if not len(nudges):
            continue
        # residents answer bundle offers only: the simulator shows bundles (offer_lists hands
        # over bundles only; a deployment's planner may also nudge a service, never opened)
        nudges = nudges[nudges["offer_kind"] == "bundle"].sort_values("send_at",
                                                                      kind="stable")
        rows = index.get_indexer(nudges["resident_id"])
        send_at = nudges["send_at"].to_numpy(np.float64)
        opened, _ = recipients.receive(rows, send_at)
        policy.outcomes(nudges, opened)
        bundle = np.array([bundle_index[b] for b in nudges["offer_id"][opened]], np.int64)
        rows_out.append(rows[opened])
        bundles_out.append(bundle)
        ts_out.append((send_at[opened] * 1e6).astype(np.int64) + delay_us)
        for row, b, ref in zip(rows[opened].tolist(), bundle.tolist(),
                               nudges["recommendation_id"][opened], strict=True):
            given.setdefault(row, {})[b] = ref
    sim.vocab.rec_ids[NUDGE_WEEK_BASE + week] = given  # type: ignore[assignment]
    empty = np.zeros(0, np.int64)
    return NudgeViews(np.concatenate(rows_out) if rows_out else empty,
                      np.concatenate(bundles_out) if bundles_out else empty,
                      np.concatenate(ts_out) if ts_out else empty)


# --- comparison over seeds ------------------------------------------------------------

def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student t quantile for ``dof`` degrees of freedom."""
    if dof <= 0:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        x = np.asarray(values, float)
        mean = float(x.mean())
        if len(x) < 2:
            return cls(mean, math.nan, math.nan)
        half = t_quantile_975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
        return cls(mean, mean - half, mean + half)


def ratio_of_means(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """``mean(a) / mean(b)`` of paired samples with a 95% interval by the delta method:
    ``var ≈ (s_a² − 2R·s_ab + R²·s_b²) / (n · mean(b)²)``, t quantile with n − 1 degrees of
    freedom (the pairs' correlation is what makes a paired ratio precise)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n == 0 or b.mean() == 0:
        return Estimate(math.nan, math.nan, math.nan)
    r = float(a.mean() / b.mean())
    if n < 2:
        return Estimate(r, math.nan, math.nan)
    cov = np.cov(a, b, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * b.mean() ** 2)
    half = t_quantile_975(n - 1) * math.sqrt(max(float(var), 0.0))
    return Estimate(r, r - half, r + half)


#: Figures of a run that :meth:`Comparison.estimate` and :meth:`Comparison.uplift` know:
#: the cadence shares, ``weekly_or_better`` and events per resident-week by class.
FIGURES: tuple[str, ...] = (*CADENCES, "weekly_or_better", *CADENCE_CLASS_NAMES)


def run_figure(run: PolicyRun, figure: str) -> float:
    """One figure of :data:`FIGURES` for one run."""
    if figure == "weekly_or_better":
        return run.shares["daily"] + run.shares["weekly"]
    if figure in run.shares:
        return run.shares[figure]
    if figure in run.per_resident_week:
        return run.per_resident_week[figure]
    if figure in run.outreach:
        return run.outreach[figure]
    raise ValueError(f"unknown figure {figure!r}; known: {', '.join(FIGURES)}")


@dataclass
class Comparison:
    """Use cadence shares and per-class contacts per policy: estimates over seeds, plus
    every run."""

    policies: list[str]
    seeds: list[int]
    residents: int
    weeks: int
    runs: list[PolicyRun]

    def estimate(self, policy: str, figure: str) -> Estimate:
        """Mean and 95% interval over seeds of one figure of :data:`FIGURES`."""
        return Estimate.of([run_figure(r, figure) for r in self.runs if r.policy == policy])

    def shares(self, policy: str) -> dict[str, Estimate]:
        return {c: self.estimate(policy, c) for c in (*CADENCES, "weekly_or_better")}

    def per_resident_week(self, policy: str) -> dict[str, Estimate]:
        """Use, response and exposure events per resident per week."""
        return {c: self.estimate(policy, c) for c in CADENCE_CLASS_NAMES}

    def uplift(self, policy: str, baseline: str, figure: str = "weekly_or_better"
               ) -> Estimate:
        """Paired difference (same seed) in one figure between two policies."""
        base = {r.seed: run_figure(r, figure) for r in self.runs if r.policy == baseline}
        diffs = [run_figure(r, figure) - base[r.seed] for r in self.runs
                 if r.policy == policy and r.seed in base]
        return Estimate.of(diffs)

    def paired(self, figure: str, *policies: str) -> list[np.ndarray]:
        """Per-seed values of ``figure`` for each of ``policies``, on the seeds all ran."""
        by = [{r.seed: run_figure(r, figure) for r in self.runs if r.policy == p}
              for p in policies]
        seeds = sorted(set.intersection(*(set(b) for b in by))) if by else []
        return [np.array([b[s] for s in seeds], float) for b in by]

    def lift(self, policy: str, baseline: str, figure: str = "weekly_or_better") -> Estimate:
        """Relative lift ``mean(policy) / mean(baseline) − 1`` over the same seeds, with a
        95% interval by the delta method on the per-seed pairs (t quantile)."""
        a, b = self.paired(figure, policy, baseline)
        found = ratio_of_means(a, b)
        return Estimate(found.mean - 1.0, found.low - 1.0, found.high - 1.0)

    def gap_closed(self, policy: str, floor: str, ceiling: str,
                   figure: str = "weekly_or_better") -> Estimate:
        """Share of the ``floor`` → ``ceiling`` gap ``policy`` closes:
        ``(mean(policy) − mean(floor)) / (mean(ceiling) − mean(floor))``, with a 95% interval
        by the delta method on the per-seed differences."""
        p, f, c = self.paired(figure, policy, floor, ceiling)
        return ratio_of_means(p - f, c - f)

    def weekly_curve(self, policy: str) -> list[Estimate]:
        """Weekly-or-better share (use) at the end of each week: mean and interval over
        seeds."""
        curves = [r.weekly_share for r in self.runs if r.policy == policy]
        if not curves:
            return []
        return [Estimate.of([c[w] for c in curves]) for w in range(min(map(len, curves)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "residents": self.residents, "weeks": self.weeks, "seeds": self.seeds,
            "cadence": "use",
            "policies": {p: {c: vars(self.estimate(p, c)) for c in FIGURES}
                         for p in self.policies},
            "weekly_share": {p: [vars(e) for e in self.weekly_curve(p)]
                             for p in self.policies},
            "runs": [{"policy": r.policy, "seed": r.seed, "shares": r.shares,
                      "per_resident_week": r.per_resident_week,
                      "weekly_share": r.weekly_share, "shown": r.shown,
                      "accepted": r.accepted, "events": r.events,
                      "notes": r.notes,
                      "outreach": r.outreach,
                      "seconds": round(r.seconds, 2)} for r in self.runs],
        }


def compare(policies: Iterable[str], catalog: Catalog, *, residents: int, weeks: int,
            seeds: Sequence[int], k: int = 3, end: date | None = None,
            params: BehaviourParams | None = None,
            on_run: Callable[[PolicyRun], None] | None = None,
            nudge_params: NudgeParams | None = None) -> Comparison:
    """Run every named policy on every seed (see :data:`POLICY_FACTORIES`); residents
    answer nudges with ``nudge_params`` (default: the stated assumptions)."""
    names = list(policies)
    for name in names:
        make_policy(name)  # fail fast on a typo
    runs = []
    for seed in seeds:
        for name in names:
            run, _ = run_policy(make_policy(name, seed), catalog, residents=residents,
                                weeks=weeks, seed=seed, k=k, end=end, params=params,
                                nudge_params=nudge_params)
            runs.append(run)
            if on_run is not None:
                on_run(run)
    return Comparison(names, list(seeds), residents, weeks, runs)
