"""The behaviour model: how simulated residents subscribe, use, browse, pay and leave.

One :class:`Simulation` holds the city's state as columns (holdings, fatigue, consent,
erasures) and advances it one week at a time; every week produces an
:class:`~bouquet.simulation.columns.EventColumns` batch. Batch generation
(``bouquet simulate run``) and the closed loop (``bouquet simulate compare``) are the same
engine: the closed loop only adds a recommender that is asked, each week, what to show.

The model, in order of what drives the numbers (see docs/simulation.md):

* **History.** Each resident registered at a random time in the year before the window
  (a ``profile`` and a ``consent`` event) and holds 0–4 offers, subscribed at random times
  since — bundles and single services chosen by taste among what is available in their
  neighbourhood and what they are eligible for. So the log starts the way a city does:
  most residents have had one or two contacts in the last year.
* **Cadence.** A resident's chance to be active on a day is ``1 - exp(-rate)`` with
  ``rate = (base_rate * activity * usage**elasticity * burst_week + habit + occasional)
  * weekday * season``, and 0 in the weeks the resident is away: ``activity`` is
  log-normal (heavy-tailed), ``usage`` sums ``exp(affinity) * frequency`` over the
  services held (plus a little ad-hoc use of others), ``burst_week`` is a gamma-distributed
  weekly multiplier correlated from week to week (organic use comes in spells);
  ``habit`` is the steady rate that offers subscribed during the window add (the
  engagement hypothesis), scaled by how often their services are used; ``occasional`` is
  a small one-off need everyone has. The parameters are fitted so the generated ``use``
  stream matches the real ValleyBike log's shape and week-to-week regularity (see
  :mod:`bouquet.simulation.calibration`).
* **Use.** An active day holds 1 + Poisson uses; each picks a service with probability
  proportional to ``exp(affinity) * frequency`` among held services (mostly) and others
  available (rarely). Per-use services not covered by a subscription are paid (``pay``),
  a few uses are rated (``rate``, 1–5 following affinity).
* **Discovery.** Some active days include an app session: browsing views of bundles (by
  taste), shown recommendations (closed loop), clicks, dismissals and subscriptions. The
  chance to click and subscribe rises with affinity and falls with fatigue (how often the
  resident was shown the bundle without acting, recovering with a half-life of a few
  weeks); ineligible offers are never subscribed.
* **Churn and administration.** Held offers with low affinity are sometimes dropped
  (``unsubscribe``); a few residents change consent or ask for erasure, after which they
  produce nothing.

Randomness comes from ``numpy.random.Generator`` streams keyed by (seed, week, block of
residents, phase), so a seed gives the same events whatever the block order or thread
count (for the same code and library versions).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
from threadpoolctl import threadpool_limits

from bouquet.core.catalog import Catalog
from bouquet.simulation.columns import (
    CADENCE_CLASS_NAMES,
    TYPE_CLASS,
    C,
    EventColumns,
    T,
    Vocabulary,
)
from bouquet.simulation.residents import (
    ProfileClasses,
    Residents,
    TasteSpace,
    generate_residents,
)

log = logging.getLogger(__name__)

#: Residents per block: the unit of vectorised work and of random streams. Fixed, so the
#: events of a seed do not depend on memory settings.
BLOCK = 1 << 16
US = 1_000_000
DAY_US = 86_400 * US

#: Typical uses per active month of a service, relative to a bus pass (1.0); decides
#: which services dominate usage. Services not listed fall back to their domain.
SERVICE_FREQUENCY: dict[str, float] = {
    "bus": 1.2, "tram": 1.2, "bike-share": 1.0, "car-share": 0.3, "parking": 0.4,
    "on-demand-shuttle": 0.3, "e-scooter": 0.5, "carpool": 0.4, "ev-charging": 0.3,
    "canal-shared-cars": 0.4, "library": 0.5, "museums": 0.1, "theatre": 0.08,
    "cinema": 0.2, "conservatory": 0.4, "summer-festival": 0.05, "swimming-pool": 0.4,
    "gym": 0.5, "sports-clubs": 0.4, "outdoor-fitness": 0.3, "ice-rink": 0.08,
    "daycare": 1.0, "school-canteen": 0.8, "after-school": 0.6, "holiday-camps": 0.05,
    "homework-help": 0.3, "adult-courses": 0.3, "teleconsult": 0.08, "health-centre": 0.1,
    "senior-home-care": 0.7, "vaccination": 0.02, "wellbeing-support": 0.1,
    "city-wallet": 0.4, "post-paid-billing": 0.1, "local-currency": 0.3,
    "contactless-pass": 0.2, "id-documents": 0.02, "civil-status": 0.03,
    "participatory-budget": 0.03, "civic-requests": 0.08, "bulky-waste": 0.03,
    "recycling-centre": 0.1, "composting": 0.2, "community-gardens": 0.3, "repair-cafe": 0.05,
    "concierge": 0.3, "parcel-lockers": 0.3, "home-repairs": 0.03, "coworking": 0.6,
    "shared-workshop": 0.15, "housing-advice": 0.03, "green-electricity": 0.05,
    "energy-coaching": 0.03, "smart-meter-insights": 0.2, "district-heating": 0.03,
    "canal-solar-share": 0.1,
}
DOMAIN_FREQUENCY: dict[str, float] = {
    "mobility": 0.8, "energy": 0.08, "housing": 0.2, "payment": 0.3, "culture": 0.2,
    "sport": 0.35, "health": 0.08, "childhood": 0.5, "environment": 0.1, "civic": 0.05,
}
#: Fatigue (decayed count of ignored views of one bundle) stops growing here.
MAX_FATIGUE = 20
#: Relative activity by hour of the day (local time): commuting peaks and an evening.
HOUR_WEIGHTS = np.array([0.4, 0.2, 0.1, 0.1, 0.2, 0.6, 1.6, 3.5, 5.0, 4.0, 3.4, 3.8,
                         4.6, 4.4, 4.0, 4.4, 5.2, 6.0, 5.6, 4.4, 3.2, 2.2, 1.4, 0.8])
#: Relative activity Monday..Sunday.
WEEKDAY_WEIGHTS = np.array([1.04, 1.06, 1.06, 1.06, 1.06, 0.96, 0.76])


@dataclass(frozen=True)
class BehaviourParams:
    """Knobs of the behaviour model; the defaults are the calibrated ones."""

    # cadence: fitted so the simulated use stream matches the nine statistics of the
    # ValleyBike calibration window (calibration.py, docs/simulation.md section 4)
    activity_sigma: float = 2.4
    base_rate: float = 0.0043
    usage_elasticity: float = 0.5
    adhoc_usage: float = 0.6
    # organic use comes in spells: a Gamma(burst_shape) weekly multiplier, correlated
    # from week to week (burst_persistence: correlation of its Gaussian latent)
    burst_shape: float = 0.04
    burst_persistence: float = 0.88
    # a one-off need now and then, whatever the resident's activity (daily rate)
    occasional_rate: float = 0.0012
    # share of resident-weeks with no use at all (holidays, illness): routines skip weeks
    away_share: float = 0.043
    extra_uses: float = 1.13
    extra_uses_sigma: float = 0.8
    extra_uses_slope: float = 0.5
    max_uses_per_day: int = 8
    season_amplitude: float = 0.12
    # holdings and discovery
    taste_temperature: float = 1.0
    initial_offers: float = 1.4
    max_initial_offers: int = 4
    app_session: float = 0.2
    browse_views: float = 1.0
    click_slope: float = 1.4
    click_bias: float = -3.9
    subscribe_slope: float = 1.4
    subscribe_bias: float = -2.3
    fatigue_penalty: float = 0.6
    # fatigue recovers: an ignored view weighs half as much this many weeks later (an
    # assumption, of the order of the few weeks advertising's effects take to halve)
    fatigue_half_life_weeks: float = 4.0
    dismiss_share: float = 0.2
    service_subscribe: float = 0.01
    churn_week: float = 0.01
    # habit: daily use rate a subscription taken during the window adds, by match quality
    # and times the offer's usage frequency (1 = a bus pass or a bike share). At frequency
    # 1 and full match, a bundle makes its holder as regular as the median heavy
    # ValleyBike rider (29.5 active days of 84: -ln(1 - 29.5/84) = 0.43 a day); a single
    # service keeps its smaller share of a bundle's habit (0.32).
    habit_bundle: float = 0.43
    habit_service: float = 0.14
    habit_slope: float = 1.5
    habit_midpoint: float = 1.5
    # money and feedback
    pay_share: float = 0.6
    rate_share: float = 0.04
    # administration
    erase_share: float = 0.001
    withdraw_share: float = 0.01
    late_opt_in_share: float = 0.03
    # closed loop: a weekly digest of recommendations, opened by some residents
    digest_open: float = 0.15
    timezone: str = "Europe/Paris"
    history_weeks: int = 52


def service_frequency(catalog: Catalog) -> np.ndarray:
    """Relative usage frequency of every catalog service (demo values, domain fallback)."""
    return np.array([SERVICE_FREQUENCY.get(s.id, DOMAIN_FREQUENCY.get(s.domain.value, 0.1))
                     for s in catalog.services], np.float32)


@functools.cache
def _gamma_quantile_table(shape: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import gammaincinv, gammaln, log_ndtr, ndtr

    z = np.linspace(-8.5, 8.5, 4097)
    q = gammaincinv(shape, np.minimum(ndtr(z), 1 - 1e-16))
    # deep in the lower tail the quantile underflows; there P(X < x) ~ x^k / Gamma(k + 1)
    tail = (log_ndtr(z) + gammaln(shape + 1)) / shape
    log_q = np.where(q > 1e-200, np.log(np.maximum(q, 1e-300)), tail)
    return z, log_q - np.log(shape)


def gamma_of_normal(z: np.ndarray, shape: float) -> np.ndarray:
    """Gamma(``shape``, mean 1) variates from standard normal ones, monotonically (the
    Gamma quantile of the normal CDF: a Gaussian copula), so correlated normals give
    correlated gamma variates. Interpolated in log space on a fine grid (within 0.2% of
    the exact quantile; |z| is clipped at 8.5)."""
    grid, log_q = _gamma_quantile_table(float(shape))
    return np.exp(np.interp(z, grid, log_q)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _categorical_rows(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of non-negative ``weights`` (rows summing to 0 give -1)."""
    cdf = np.cumsum(weights, axis=1, dtype=np.float64)
    total = cdf[:, -1]
    u = rng.random(len(weights)) * total
    pick = (u[:, None] >= cdf).sum(axis=1)
    return np.where(total > 0, np.minimum(pick, weights.shape[1] - 1), -1)


def _top_k_gumbel(rng: np.random.Generator, logits: np.ndarray, counts: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of ``counts[i]`` draws without replacement per row, proportional
    to ``exp(logits)`` (-inf excluded): the Gumbel top-k trick, vectorised."""
    k = int(counts.max()) if len(counts) else 0
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = logits - np.log(-np.log(rng.random(logits.shape)))
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
    rank = np.arange(k)[None, :]
    valid = (rank < counts[:, None]) & np.isfinite(np.take_along_axis(keys, order, 1))
    rows, ranks = np.nonzero(valid)
    return rows, order[rows, ranks]


@dataclass
class _BlockTastes:
    """Per-block quantities both phases of a week need (computed once per block)."""

    aff: np.ndarray  # (n, S) hidden affinity
    bundle_aff: np.ndarray  # (n, B)
    usage_w: np.ndarray  # (n, S) exp(affinity) * frequency
    held: np.ndarray  # (n, S) bool
    ok: np.ndarray  # (n, S) bool: available and eligible
    bundle_ok: np.ndarray  # (n, B) bool


@dataclass
class WeekResult:
    """What one simulated week produced."""

    week: int
    events: EventColumns
    exposed: int = 0
    shown: int = 0
    subscribed_from_recs: int = 0


#: A recommender as the engine sees it: resident rows in; out, a (rows, k) matrix of bundle
#: indexes (-1 pads short lists) and optionally one recommendation id per row (None: the
#: engine labels them). The closed loop adapts a
#: :class:`~bouquet.simulation.policies.Policy` to this.
RowRecommender = Callable[[np.ndarray, int], tuple[np.ndarray, list[str | None] | None]]

#: ``rec_week`` of the events that answer a nudge opened in week w: ``NUDGE_WEEK_BASE + w``
#: (the ids of that week's nudges are kept apart from the week's recommendations, so each
#: event carries the id of what it answers).
NUDGE_WEEK_BASE = 1 << 12


@dataclass(frozen=True)
class NudgeViews:
    """Nudges opened this week (:mod:`bouquet.simulation.nudges`): each is an offer shown
    to the resident at ``ts``, answered through the same funnel as a recommendation."""

    rows: np.ndarray  # int64 resident rows
    bundle: np.ndarray  # int64 bundle indexes
    ts: np.ndarray  # int64 µs, when the resident opens it

    def within(self, lo: int, hi: int) -> NudgeViews:
        keep = (self.rows >= lo) & (self.rows < hi)
        return NudgeViews(self.rows[keep], self.bundle[keep], self.ts[keep])


@dataclass
class Simulation:
    """A simulated city: catalog, residents, hidden tastes, state, and a calendar."""

    catalog: Catalog
    residents: Residents
    world: TasteSpace
    classes: ProfileClasses
    params: BehaviourParams
    start: date
    weeks: int
    seed: int
    run_tag: str
    vocab: Vocabulary
    frequency: np.ndarray
    held_bundles: np.ndarray = field(repr=False)  # (N, B) bool
    held_services: np.ndarray = field(repr=False)  # (N, S) bool, subscribed on their own
    accepted_week: np.ndarray = field(repr=False)  # (N, B) int16, week a rec was accepted
    new_bundles: np.ndarray = field(repr=False)  # (N, B) bool, subscribed during the window
    new_services: np.ndarray = field(repr=False)  # (N, S) bool, subscribed during the window
    fatigue: np.ndarray = field(repr=False)  # (N, B) float16, decayed ignored views
    consent: np.ndarray = field(repr=False)  # (N,) bool, current
    erased_at: np.ndarray = field(repr=False)  # (N,) int64 µs, max = never
    use_days: np.ndarray = field(repr=False)  # (N, weeks) uint8 distinct days with a use
    class_events: np.ndarray = field(repr=False)  # (3, weeks) events per cadence class
    last_use_day: np.ndarray = field(repr=False)  # (N,) int16 last day counted, -1: none
    burst_latent: np.ndarray = field(repr=False)  # (N,) float32 latent of the weekly burst
    last_history_use: np.ndarray = field(repr=False)  # (N,) int64 µs, min: none
    day_start_us: np.ndarray = field(repr=False)  # (7*weeks + 1,) local midnights in UTC µs
    day_factor: np.ndarray = field(repr=False)  # (7*weeks,) weekday * season
    week_done: int = 0

    # --- construction --------------------------------------------------------------------
    @classmethod
    def create(cls, catalog: Catalog, n_residents: int, weeks: int, seed: int, *,
               end: date | None = None, params: BehaviourParams | None = None) -> Simulation:
        """A city of ``n_residents`` over ``weeks`` weeks ending the day before ``end``
        (default: today, so no event is in the future)."""
        if n_residents < 1 or weeks < 1:
            raise ValueError("need at least one resident and one week")
        params = params or BehaviourParams()
        end = end or datetime.now(ZoneInfo(params.timezone)).date()
        start = end - timedelta(days=7 * weeks)
        frequency = service_frequency(catalog)
        world = TasteSpace.build(catalog, seed, frequency)
        classes = ProfileClasses.build(catalog)
        residents = generate_residents(catalog, n_residents, seed, world, classes,
                                       activity_sigma=params.activity_sigma)
        digest = hashlib.sha256(repr((seed, n_residents, weeks, start.isoformat(),
                                      catalog.fingerprint, sorted(asdict(params).items())))
                                .encode()).hexdigest()[:8]
        vocab = Vocabulary.build(residents.ids, catalog, classes.context_json, digest, seed)
        tz = ZoneInfo(params.timezone)
        days = [start + timedelta(days=d) for d in range(7 * weeks + 1)]
        day_start = np.array([int(datetime(d.year, d.month, d.day, tzinfo=tz)
                                  .astimezone(UTC).timestamp()) * US for d in days], np.int64)
        weekday = WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.mean()
        doy = np.array([d.timetuple().tm_yday for d in days[:-1]])
        season = 1.0 + params.season_amplitude * np.cos(2 * np.pi * (doy - 196) / 365.25)
        day_factor = np.array([weekday[d.weekday()] for d in days[:-1]]) * season
        n, b, s = n_residents, len(catalog.bundles), len(catalog.services)
        return cls(
            catalog, residents, world, classes, params, start, weeks, seed, digest, vocab,
            frequency,
            held_bundles=np.zeros((n, b), bool), held_services=np.zeros((n, s), bool),
            accepted_week=np.full((n, b), -1, np.int16), fatigue=np.zeros((n, b), np.float16),
            new_bundles=np.zeros((n, b), bool), new_services=np.zeros((n, s), bool),
            consent=residents.consent.copy(),
            erased_at=np.full(n, np.iinfo(np.int64).max, np.int64),
            use_days=np.zeros((n, weeks), np.uint8),
            class_events=np.zeros((len(CADENCE_CLASS_NAMES), weeks), np.int64),
            last_use_day=np.full(n, -1, np.int16),
            burst_latent=np.zeros(n, np.float32),
            last_history_use=np.full(n, np.iinfo(np.int64).min, np.int64),
            day_start_us=day_start, day_factor=day_factor.astype(np.float32),
        )

    @property
    def n(self) -> int:
        return len(self.residents)

    @property
    def end_us(self) -> int:
        return int(self.day_start_us[-1])

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *key]))

    def _blocks(self) -> range:
        return range(0, self.n, BLOCK)

    # --- tastes over offers --------------------------------------------------------------
    def affinity(self, rows: slice | np.ndarray) -> np.ndarray:
        """Hidden resident × service affinity for some residents (float32)."""
        return self.world.affinity(self.residents.tastes[rows])

    def bundle_affinity(self, service_affinity: np.ndarray) -> np.ndarray:
        """Resident × bundle affinity: half the mean, half the best of its services."""
        padded = np.concatenate([service_affinity,
                                 np.full((len(service_affinity), 1), np.nan, np.float32)], 1)
        members = padded[:, self._bundle_members]  # (n, B, max size), NaN pads
        best = np.nanmax(members, axis=2)
        mean = service_affinity @ self._bundle_mean_weights
        return (0.5 * mean + 0.5 * best).astype(np.float32)

    @functools.cached_property
    def _bundle_members(self) -> np.ndarray:
        """(B, max bundle size) service indexes, padded with S (a NaN column)."""
        member = self.world.bundle_services
        width = int(member.sum(1).max())
        out = np.full((len(member), width), member.shape[1], np.intp)
        for b, row in enumerate(member):
            idx = np.flatnonzero(row)
            out[b, :len(idx)] = idx
        return out

    @functools.cached_property
    def _bundle_mean_weights(self) -> np.ndarray:
        member = self.world.bundle_services
        return (member / member.sum(1, keepdims=True)).T.astype(np.float32)

    def service_ok(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.classes.service_ok[self.residents.profile_class[rows]]

    def bundle_ok(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.classes.bundle_ok[self.residents.profile_class[rows]]

    def holds(self, rows: slice | np.ndarray) -> np.ndarray:
        """(rows, S) bool: services held, on their own or through a held bundle."""
        through = self.held_bundles[rows].astype(np.float32) @ self._membership_f32
        return self.held_services[rows] | (through > 0)

    def via_bundle(self, residents: np.ndarray, services: np.ndarray) -> np.ndarray:
        """For (resident row, service) pairs, a held bundle that contains the service
        (the last in catalog order), or -1 (held on its own, or not held)."""
        if len(residents) == 0:
            return np.zeros(0, np.int16)
        both = self.held_bundles[residents] & self.world.bundle_services.T[services]
        last = both.shape[1] - 1 - np.argmax(both[:, ::-1], axis=1)
        return np.where(both.any(1), last, -1).astype(np.int16)

    @functools.cached_property
    def _membership_f32(self) -> np.ndarray:
        return self.world.bundle_services.astype(np.float32)

    @functools.cached_property
    def _offer_price(self) -> np.ndarray:
        """Amount charged on subscribing to each offer (bundles then services): monthly or
        annual fees; per-use and post-paid offers are paid on use or by the partner."""
        entries = [*self.catalog.bundles, *self.catalog.services]
        return np.array([e.price.amount_eur if e.price.model in ("monthly", "annual") else 0.0
                         for e in entries])

    @functools.cached_property
    def _per_use_price(self) -> np.ndarray:
        """Price of one use of each service when no subscription covers it (0: free)."""
        return np.array([s.price.amount_eur if s.price.model == "per_use" else 0.0
                         for s in self.catalog.services])

    @functools.cached_property
    def _bundle_covers_use(self) -> np.ndarray:
        """Whether holding each bundle covers the per-use price of its services (plus a
        trailing False for "no bundle")."""
        return np.array([b.price.model != "per_use" for b in self.catalog.bundles] + [False])

    def _habit(self, t: _BlockTastes, rows: np.ndarray) -> np.ndarray:
        """Daily use rate added by offers subscribed during the window: the engagement
        hypothesis (a well-matched new offer becomes a routine) — assumed, not measured.

        A routine is only as frequent as the services it is made of: each offer's rate is
        scaled by its usage frequency for this resident (for a bundle, the mean frequency
        of its services weighted by ``exp(affinity)``, the weights that decide which of
        them a use goes to), so a MaaS bundle (about 1, like a bus pass) can become
        near-daily and a civic-documents bundle (about 0.04) barely changes anything."""
        p = self.params
        out = np.zeros(len(rows), np.float32)
        # only the few residents who took an offer in the window have a habit
        some = np.flatnonzero(self.new_bundles[rows].any(1) | self.new_services[rows].any(1))
        if len(some) == 0:
            return out
        bundles, services = self.new_bundles[rows[some]], self.new_services[rows[some]]
        aff, bundle_aff, usage_w = t.aff[some], t.bundle_aff[some], t.usage_w[some]
        out[some] = (p.habit_bundle * (self.habit_match(bundle_aff)
                                       * self.bundle_frequency(aff, usage_w) * bundles).sum(1)
                     + p.habit_service * (self.habit_match(aff) * self.frequency
                                          * services).sum(1))
        return out

    # --- what an offer does to a resident (shared by the engine and by list_quality) -----
    def habit_match(self, affinity: np.ndarray) -> np.ndarray:
        """Share of the full habit an offer of this affinity becomes (a logistic in the
        match quality: only well-matched offers become routines)."""
        p = self.params
        return _sigmoid(p.habit_slope * (affinity - p.habit_midpoint))

    def bundle_frequency(self, aff: np.ndarray, usage_w: np.ndarray) -> np.ndarray:
        """(rows, B) usage frequency of each bundle for these residents: its services'
        frequencies weighted by ``exp(affinity)``, the weights that decide which of them a
        use goes to."""
        weight = np.exp(self.params.taste_temperature * aff)
        return (usage_w @ self._membership_f32.T) / (weight @ self._membership_f32.T)

    def click_probability(self, bundle_aff: np.ndarray, fatigue: np.ndarray) -> np.ndarray:
        """P(click) on a bundle shown, falling with the resident's fatigue of it."""
        p = self.params
        return _sigmoid(p.click_slope * bundle_aff + p.click_bias - p.fatigue_penalty * fatigue)

    def subscribe_probability(self, bundle_aff: np.ndarray) -> np.ndarray:
        """P(subscribe | clicked) for an eligible bundle not held."""
        p = self.params
        return _sigmoid(p.subscribe_slope * bundle_aff + p.subscribe_bias)

    def expected_gain(self, rows: np.ndarray) -> np.ndarray:
        """(rows, B) the daily use rate showing each bundle once adds, in expectation:
        P(click) × P(subscribe | click) × the habit it becomes — 0 for a bundle held or
        not allowed. The simulator's truth, read from the hidden tastes and the current
        fatigue: for judging lists (:mod:`bouquet.simulation.list_quality`), never for
        making them."""
        t = self._tastes(np.asarray(rows))
        fatigue = self.fatigue[rows].astype(np.float32)
        gain = (self.click_probability(t.bundle_aff, fatigue)
                * self.subscribe_probability(t.bundle_aff)
                * self.params.habit_bundle * self.habit_match(t.bundle_aff)
                * self.bundle_frequency(t.aff, t.usage_w))
        return np.where(t.bundle_ok & ~self.held_bundles[rows], gain, 0.0)

    def _times(self, rng: np.random.Generator, day_index: np.ndarray) -> np.ndarray:
        """A local time of day (by :data:`HOUR_WEIGHTS`) on each given day, in UTC µs."""
        hours = rng.choice(24, size=len(day_index), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
        seconds = hours * 3600 + rng.integers(0, 3600, len(day_index))
        return self.day_start_us[day_index] + seconds.astype(np.int64) * US

    # --- history: registration and existing subscriptions --------------------------------
    def history(self) -> EventColumns:
        """Profile and consent events, and subscriptions held when the window opens, dated
        in the ``history_weeks`` before it."""
        with threadpool_limits(1):
            return self._history()

    def _history(self) -> EventColumns:
        p = self.params
        parts = []
        span = p.history_weeks * 7 * DAY_US
        for block, lo in enumerate(self._blocks()):
            rows = np.arange(lo, min(lo + BLOCK, self.n))
            rng = self._rng(0xA11, block)
            start = int(self.day_start_us[0])
            registered = start - span + (rng.random(len(rows)) * (span - DAY_US)).astype(np.int64)
            cls = self.residents.profile_class[rows]
            # the history is what the city knew before the window: a backfill by the
            # system, not events from people's devices (whose channels have a past limit)
            parts.append(EventColumns.build(rows, T["profile"], ts=registered,
                                            channel=C["system"], context=cls))
            parts.append(EventColumns.build(rows, T["consent"], ts=registered + US,
                                            channel=C["system"],
                                            value=self.consent[rows].astype(float)))
            # offers held: bundles and single services chosen by taste among those allowed
            aff = self.affinity(rows)
            tau = p.taste_temperature
            logits = np.concatenate([
                np.where(self.bundle_ok(rows), tau * self.bundle_affinity(aff) + 0.3, -np.inf),
                np.where(self.service_ok(rows), tau * aff - 0.5, -np.inf)], axis=1)
            counts = np.minimum(rng.poisson(p.initial_offers, len(rows)), p.max_initial_offers)
            r_local, offer = _top_k_gumbel(rng, logits, counts)
            n_b = len(self.catalog.bundles)
            is_bundle = offer < n_b
            self.held_bundles[rows[r_local[is_bundle]], offer[is_bundle]] = True
            self.held_services[rows[r_local[~is_bundle]], offer[~is_bundle] - n_b] = True
            gap = start - registered[r_local] - 2 * US
            when = registered[r_local] + 2 * US + (rng.random(len(r_local)) * gap).astype(np.int64)
            np.maximum.at(self.last_history_use, rows[r_local], when)
            held = self._subscriptions(rng, rows[r_local], offer, when, C["system"], -1)
            held.channel[:] = C["system"]  # their first payments too
            parts.append(held)
        return EventColumns.concat(parts).sorted()

    def _subscriptions(self, rng: np.random.Generator, residents: np.ndarray, offer: np.ndarray,
                       when: np.ndarray, channel: np.ndarray | int, rec_week: int | np.ndarray
                       ) -> EventColumns:
        """Subscribe events for offers (bundle index, or n_bundles + service index) and the
        first payment of priced subscriptions."""
        n_b = len(self.catalog.bundles)
        is_bundle = offer < n_b
        bundle = np.where(is_bundle, offer, -1)
        service = np.where(is_bundle, -1, offer - n_b)
        subs = EventColumns.build(residents, T["subscribe"], ts=when, channel=channel,
                                  bundle=bundle, service=service, rec_week=rec_week)
        amount = self._offer_price[offer]
        paid = (amount > 0) & (rng.random(len(offer)) < self.params.pay_share)
        pays = EventColumns.build(residents[paid], T["pay"], ts=when[paid] + 5 * US,
                                  channel=C["app"], bundle=bundle[paid], service=service[paid],
                                  value=amount[paid])
        return EventColumns.concat([subs, pays])

    # --- one week ------------------------------------------------------------------------
    def _tastes(self, rows: np.ndarray) -> _BlockTastes:
        aff = self.affinity(rows)
        return _BlockTastes(aff, self.bundle_affinity(aff),
                            np.exp(self.params.taste_temperature * aff) * self.frequency,
                            self.holds(rows), self.service_ok(rows), self.bundle_ok(rows))

    def _activity(self, rng: np.random.Generator, rows: np.ndarray, days: np.ndarray,
                  t: _BlockTastes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Active days, app-session days, digest opened, and the week's use intensity."""
        p = self.params
        adhoc = p.adhoc_usage * (t.usage_w * t.ok).sum(1) / np.maximum(t.ok.sum(1), 1)
        usage = (t.usage_w * t.held).sum(1) + adhoc
        organic = p.base_rate * self.residents.activity[rows] * usage ** p.usage_elasticity
        # the weekly burst is Gamma(shape, mean 1) every week, correlated from one week to
        # the next through a Gaussian latent (active and quiet periods last a while)
        eps = rng.standard_normal(len(organic)).astype(np.float32)
        if days[0] == 0:
            latent = eps
        else:
            rho = p.burst_persistence
            latent = rho * self.burst_latent[rows] + np.sqrt(1 - rho * rho) * eps
        self.burst_latent[rows] = latent
        burst = gamma_of_normal(latent, p.burst_shape)
        # a habit is a routine: it keeps its rate every week, outside the weekly burst
        rate = organic * burst + self._habit(t, rows) + p.occasional_rate
        rate = np.where(rng.random(len(rate)) < p.away_share, 0.0, rate)  # away this week
        daily = rate[:, None] * self.day_factor[days][None, :]
        alive = self.erased_at[rows][:, None] > self.day_start_us[days][None, :]
        active = (rng.random(daily.shape) < -np.expm1(-daily)) & alive
        session = active & (rng.random(active.shape) < p.app_session)
        # engaged residents open the digest more often than dormant ones
        opens = p.digest_open * (0.3 + 0.7 * np.minimum(1.0, 7 * rate))
        digest = (rng.random(len(rate)) < opens) & alive[:, 0]
        return active, session, digest, rate.astype(np.float32)

    def step(self, recommender: RowRecommender | None = None, k: int = 3,
             rec_tag: str | None = None, nudges: NudgeViews | None = None) -> WeekResult:
        """Advance one week; ``recommender`` (closed loop) chooses what exposed residents
        are shown, ``rec_tag`` (``"<model_version>.<variant>."``) labels it; ``nudges``
        are the offers residents open from messages this week."""
        week = self.week_done
        if week >= self.weeks:
            raise RuntimeError(f"the simulation has only {self.weeks} weeks")
        days = np.arange(7 * week, 7 * week + 7)
        if week:
            self.fatigue *= np.float16(0.5 ** (1.0 / self.params.fatigue_half_life_weeks))
        # Phase A decides who is active and exposed; phase B writes the events. Without a
        # recommender both run block by block on the same tastes; with one, every block's
        # phase A must finish before the recommender is asked once for all exposed
        # residents. Random streams are keyed by (week, block, phase): same events.
        active = np.zeros((self.n, 7), bool)
        intensity = np.zeros(self.n, np.float32)
        session = np.zeros((self.n, 7), bool)
        digest = np.zeros(self.n, bool)
        parts: list[EventColumns] = []
        shown = accepted = 0
        fused = recommender is None
        with threadpool_limits(1):  # small matrix products: threads only add overhead
            for block, lo in enumerate(self._blocks()):
                rows = np.arange(lo, min(lo + BLOCK, self.n))
                tastes = self._tastes(rows)
                a, s_, d_, i_ = self._activity(self._rng(week + 1, block, 1), rows, days,
                                               tastes)
                active[rows], session[rows], digest[rows], intensity[rows] = a, s_, d_, i_
                if fused:
                    events, _, _ = self._week_block(self._rng(week + 1, block, 2), week, rows,
                                                    days, a, s_, d_, None, i_, tastes,
                                                    _nudges_of(nudges, rows))
                    parts.append(events)
        # the recommender is asked once for everyone exposed this week
        exposed = np.zeros(0, np.int64)
        if not fused:
            exposed = np.nonzero(session.any(1) | digest)[0]
            recs = np.full((self.n, k), -1, np.int16)
            if len(exposed):
                recs[exposed], rec_ids = recommender(exposed, k)
                if rec_ids is not None:
                    self.vocab.rec_ids[week] = {int(r): i for r, i in zip(exposed, rec_ids,
                                                                        strict=True) if i}
            if rec_tag:
                self.vocab.rec_tags[week] = rec_tag
            with threadpool_limits(1):
                for block, lo in enumerate(self._blocks()):
                    rows = np.arange(lo, min(lo + BLOCK, self.n))
                    events, s_, a_ = self._week_block(
                        self._rng(week + 1, block, 2), week, rows, days, active[rows],
                        session[rows], digest[rows], recs[rows], intensity[rows],
                        self._tastes(rows), _nudges_of(nudges, rows))
                    parts.append(events)
                    shown += s_
                    accepted += a_
        events = EventColumns.concat(parts)
        events = self._administration(week, days, events)
        events.ts = np.minimum(events.ts, self.end_us - US)
        kind = TYPE_CLASS[events.type]
        self.class_events[:, week] = np.bincount(kind[kind >= 0],
                                                 minlength=len(CADENCE_CLASS_NAMES))
        self._count_use_days(events.resident[kind == CADENCE_CLASS_NAMES.index("use")],
                             events.ts[kind == CADENCE_CLASS_NAMES.index("use")])
        self.week_done += 1
        return WeekResult(week, events.sorted(), len(exposed), shown, accepted)

    def _count_use_days(self, resident: np.ndarray, ts: np.ndarray) -> None:
        """Add a week's use-class events to :attr:`use_days`: cadence is use cadence.

        Days are local (day starts are local midnights, DST included). A few events of a
        week land just after it (a rating hours after a Sunday-evening use): they count
        on their own day, and a day already counted by the previous week is not counted
        twice (:attr:`last_use_day`).
        """
        day = np.searchsorted(self.day_start_us, ts, side="right") - 1
        pairs = np.unique(resident.astype(np.int64) * (len(self.day_start_us) + 1) + day)
        who, day = np.divmod(pairs, len(self.day_start_us) + 1)
        new = (day > self.last_use_day[who]) & (day < 7 * self.weeks)
        np.add.at(self.use_days, (who[new], day[new] // 7), 1)
        np.maximum.at(self.last_use_day, who, day.astype(self.last_use_day.dtype))

    def _week_block(self, rng: np.random.Generator, week: int, rows: np.ndarray,
                    days: np.ndarray, active: np.ndarray, session: np.ndarray,
                    digest: np.ndarray, recs: np.ndarray | None, intensity: np.ndarray,
                    t: _BlockTastes, nudges: NudgeViews | None = None
                    ) -> tuple[EventColumns, int, int]:
        p = self.params
        parts: list[EventColumns] = []
        tau = p.taste_temperature
        aff, usage_w, ok, held = t.aff, t.usage_w, t.ok, t.held
        bundle_aff, bundle_ok = t.bundle_aff, t.bundle_ok

        # --- uses -------------------------------------------------------------------------
        r_loc, d_loc = np.nonzero(active)
        # frequent users make more uses per active day (return trips, connections)
        habit = np.exp(p.extra_uses_sigma * self.residents.habit[rows[r_loc]]
                       - p.extra_uses_sigma**2 / 2)
        extra = p.extra_uses * habit + p.extra_uses_slope * np.minimum(intensity[r_loc], 1.0)
        n_uses = np.minimum(1 + rng.poisson(extra), p.max_uses_per_day)
        u_res = np.repeat(r_loc, n_uses)
        u_day = days[np.repeat(d_loc, n_uses)]
        # held services by taste and frequency, plus a little ad-hoc use of the other
        # services offered to the resident
        weights = usage_w[u_res] * held[u_res]
        adhoc_w = usage_w[u_res] * (ok[u_res] & ~held[u_res])
        adhoc_total = np.maximum(adhoc_w.sum(1, keepdims=True), 1e-9)
        share = p.adhoc_usage * (usage_w[u_res] * ok[u_res]).mean(1, keepdims=True)
        weights = weights + adhoc_w / adhoc_total * share
        service = _categorical_rows(rng, weights)
        keep = service >= 0
        u_res, u_day, service = u_res[keep], u_day[keep], service[keep]
        u_ts = self._times(rng, u_day)
        u_bundle = self.via_bundle(rows[u_res], service)
        u_rec = np.where(u_bundle >= 0,
                         self.accepted_week[rows[u_res], np.maximum(u_bundle, 0)], -1)
        u_channel = np.where(rng.random(len(u_res)) < 0.7, C["partner"], C["app"])
        parts.append(EventColumns.build(rows[u_res], T["use"], ts=u_ts, channel=u_channel,
                                        service=service, bundle=u_bundle, rec_week=u_rec))
        # pay for per-use services that no subscription covers
        amount = self._per_use_price
        covered = self._bundle_covers_use[np.where(u_bundle >= 0, u_bundle,
                                                   len(self.catalog.bundles))]
        pay = (amount[service] > 0) & ~covered & (rng.random(len(service)) < p.pay_share)
        parts.append(EventColumns.build(rows[u_res[pay]], T["pay"], ts=u_ts[pay] + 3 * US,
                                        channel=C["app"], service=service[pay],
                                        bundle=u_bundle[pay], value=amount[service[pay]]))
        rate = rng.random(len(service)) < p.rate_share
        stars = np.clip(np.rint(3.3 + 0.9 * aff[u_res[rate], service[rate]]
                                + rng.normal(0, 0.7, rate.sum())), 1, 5)
        delay = rng.integers(5 * 60, 3 * 3600, rate.sum()).astype(np.int64) * US
        parts.append(EventColumns.build(rows[u_res[rate]], T["rate"], ts=u_ts[rate] + delay,
                                        channel=C["app"], service=service[rate],
                                        bundle=u_bundle[rate], value=stars))

        # --- app sessions: browsing and recommendations ---------------------------------
        s_res, s_day = np.nonzero(session)
        first = np.unique(s_res, return_index=True)[1]
        s_ts = self._times(rng, days[s_day])
        # organic browsing: bundles by taste among those offered in the neighbourhood
        n_browse = rng.poisson(p.browse_views, len(s_res))
        b_res = np.repeat(s_res, n_browse)
        b_ts = np.repeat(s_ts, n_browse) + rng.integers(0, 300, len(b_res)).astype(np.int64) * US
        browse_w = np.exp(bundle_aff[b_res]) * (0.2 + bundle_ok[b_res])
        b_bundle = _categorical_rows(rng, browse_w)
        funnel_rows = [b_res]
        funnel_bundle = [b_bundle]
        funnel_ts = [b_ts]
        funnel_rec = [np.full(len(b_res), -1, np.int16)]
        shown = 0
        if recs is not None:
            # shown in the first app session of the week, else in the opened digest
            exposed_rows = np.nonzero(session.any(1) | digest)[0]
            when = np.full(len(rows), -1, np.int64)
            digest_time = self._times(rng, rng.choice(days, len(rows)))
            when[:] = digest_time
            when[s_res[first]] = s_ts[first]
            r_rows, r_col = np.nonzero(recs[exposed_rows] >= 0)
            r_res = exposed_rows[r_rows]
            shown = len(r_res)
            funnel_rows.append(r_res)
            funnel_bundle.append(recs[r_res, r_col].astype(np.int64))
            funnel_ts.append(when[r_res] + r_col.astype(np.int64) * US)
            funnel_rec.append(np.full(len(r_res), week, np.int16))
        if nudges is not None and len(nudges.rows):
            # an opened nudge is an offer shown in an app session, answered alike
            funnel_rows.append(nudges.rows - rows[0])
            funnel_bundle.append(nudges.bundle)
            funnel_ts.append(nudges.ts)
            funnel_rec.append(np.full(len(nudges.rows), NUDGE_WEEK_BASE + week, np.int16))
        f_res = np.concatenate(funnel_rows)
        f_bundle = np.concatenate(funnel_bundle)
        f_ts = np.concatenate(funnel_ts)
        f_rec = np.concatenate(funnel_rec)
        f_ok = f_bundle >= 0
        f_res, f_bundle, f_ts, f_rec = f_res[f_ok], f_bundle[f_ok], f_ts[f_ok], f_rec[f_ok]
        f_channel = np.where(rng.random(len(f_res)) < 0.8, C["app"], C["web"])
        parts.append(EventColumns.build(rows[f_res], T["view"], ts=f_ts, channel=f_channel,
                                        bundle=f_bundle, rec_week=f_rec))
        already = self.held_bundles[rows[f_res], f_bundle]
        eligible = bundle_ok[f_res, f_bundle]
        click_p = self.click_probability(bundle_aff[f_res, f_bundle],
                                         self.fatigue[rows[f_res], f_bundle])
        click = rng.random(len(f_res)) < click_p * np.where(already, 0.3, 1.0)
        c_ts = f_ts + rng.integers(5, 90, len(f_res)).astype(np.int64) * US
        parts.append(EventColumns.build(rows[f_res[click]], T["click"], ts=c_ts[click],
                                        channel=f_channel[click], bundle=f_bundle[click],
                                        rec_week=f_rec[click]))
        sub_p = self.subscribe_probability(bundle_aff[f_res, f_bundle])
        subscribe = click & eligible & ~already & (rng.random(len(f_res)) < sub_p)
        # one subscription per (resident, bundle) per week even if shown twice
        sub_idx = np.nonzero(subscribe)[0]
        sub_idx = sub_idx[np.unique(f_res[sub_idx].astype(np.int64) * 4096 + f_bundle[sub_idx],
                                    return_index=True)[1]]
        s_ts2 = c_ts[sub_idx] + rng.integers(30, 600, len(sub_idx)).astype(np.int64) * US
        parts.append(self._subscriptions(rng, rows[f_res[sub_idx]], f_bundle[sub_idx], s_ts2,
                                         f_channel[sub_idx], f_rec[sub_idx]))
        dismiss = ~click & (rng.random(len(f_res)) < p.dismiss_share)
        parts.append(EventColumns.build(rows[f_res[dismiss]], T["dismiss"],
                                        ts=f_ts[dismiss] + 3 * US, channel=f_channel[dismiss],
                                        bundle=f_bundle[dismiss], rec_week=f_rec[dismiss]))
        ignored = ~click & ~already
        np.add.at(self.fatigue, (rows[f_res[ignored]], f_bundle[ignored]), 1)
        self.fatigue[rows[f_res[ignored]], f_bundle[ignored]] = np.minimum(
            self.fatigue[rows[f_res[ignored]], f_bundle[ignored]], MAX_FATIGUE)
        new_res, new_bundle = rows[f_res[sub_idx]], f_bundle[sub_idx]
        self.held_bundles[new_res, new_bundle] = True
        self.new_bundles[new_res, new_bundle] = True
        from_rec = f_rec[sub_idx] >= 0
        # the label of what was answered: the week's recommendations or its nudges
        self.accepted_week[new_res[from_rec], new_bundle[from_rec]] = f_rec[sub_idx][from_rec]
        accepted = int(from_rec.sum())

        # --- single services subscribed on an active day --------------------------------
        a_res, a_day = np.nonzero(active)
        pick = rng.random(len(a_res)) < p.service_subscribe
        a_res, a_day = a_res[pick], a_day[pick]
        a_res, first_a = np.unique(a_res, return_index=True)
        a_day = a_day[first_a]
        wanted = np.where(ok[a_res] & ~held[a_res], np.exp(tau * aff[a_res]), 0.0)
        a_service = _categorical_rows(rng, wanted)
        got = a_service >= 0
        a_res, a_day, a_service = a_res[got], a_day[got], a_service[got]
        n_b = len(self.catalog.bundles)
        parts.append(self._subscriptions(rng, rows[a_res], a_service + n_b,
                                         self._times(rng, days[a_day]), C["app"], -1))
        self.held_services[rows[a_res], a_service] = True
        self.new_services[rows[a_res], a_service] = True

        # --- churn: low-affinity holdings are dropped ------------------------------------
        for is_bundle in (True, False):
            table = self.held_bundles if is_bundle else self.held_services
            d_res, d_item = np.nonzero(table[rows])
            item_aff = (bundle_aff if is_bundle else aff)[d_res, d_item]
            drop = rng.random(len(d_res)) < p.churn_week * 2 * _sigmoid(-item_aff)
            if is_bundle:  # not the week it was taken
                drop &= ~np.isin(rows[d_res].astype(np.int64) * 4096 + d_item,
                                 new_res.astype(np.int64) * 4096 + new_bundle)
            d_res, d_item = d_res[drop], d_item[drop]
            when = self._times(rng, rng.choice(days, len(d_res)))
            parts.append(EventColumns.build(
                rows[d_res], T["unsubscribe"], ts=when, channel=C["app"],
                bundle=d_item if is_bundle else -1, service=-1 if is_bundle else d_item))
            table[rows[d_res], d_item] = False
            (self.new_bundles if is_bundle else self.new_services)[rows[d_res], d_item] = False
            if is_bundle:
                self.accepted_week[rows[d_res], d_item] = -1
        return EventColumns.concat(parts), shown, accepted

    def _administration(self, week: int, days: np.ndarray, events: EventColumns) -> EventColumns:
        """Consent changes and erasure requests of the week; events after an erasure go."""
        p = self.params
        rng = self._rng(week + 1, 0xAD)
        alive = self.erased_at == np.iinfo(np.int64).max
        t0, t1 = int(self.day_start_us[days[0]]), int(self.day_start_us[days[-1] + 1])
        per_week = 1.0 / self.weeks
        withdraw = alive & self.consent & (rng.random(self.n) < p.withdraw_share * per_week)
        opt_in = alive & ~self.consent & (rng.random(self.n) < p.late_opt_in_share * per_week)
        erase = alive & (rng.random(self.n) < p.erase_share * per_week)
        changed = np.nonzero(withdraw | opt_in)[0]
        c_ts = t0 + (rng.random(len(changed)) * (t1 - t0)).astype(np.int64)
        self.consent[changed] = opt_in[changed]
        erased = np.nonzero(erase)[0]
        e_ts = t0 + (rng.random(len(erased)) * (t1 - t0)).astype(np.int64)
        self.erased_at[erased] = e_ts
        events = EventColumns.concat([
            events,
            EventColumns.build(changed, T["consent"], ts=c_ts, channel=C["app"],
                               value=opt_in[changed].astype(float)),
            EventColumns.build(erased, T["erase"], ts=e_ts, channel=C["app"]),
        ])
        after = events.ts > self.erased_at[events.resident]
        if after.any():
            events = events.take(np.nonzero(~after)[0])
        return events


def _nudges_of(nudges: NudgeViews | None, rows: np.ndarray) -> NudgeViews | None:
    """The nudges of one block of consecutive resident rows."""
    return None if nudges is None else nudges.within(int(rows[0]), int(rows[-1]) + 1)
