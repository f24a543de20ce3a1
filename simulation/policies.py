"""Recommendation policies the closed loop can run against.

A policy is anything with ``name`` and ``recommend(resident_ids, k) -> list[list[str]]``
(one list of bundle ids per resident, best first, at most ``k``). Optional hooks, called
by :func:`bouquet.simulation.closed_loop.run_policy` when present:

* ``start(city)`` once before the first week, with a :class:`CityView` (the catalog and
  the residents' *public* attributes; ``city.hidden`` is the simulator itself, which only
  test oracles may read);
* ``observe(events)`` with the history (in one or more chunks of whole days) and then
  after every week, with that period's events as an Arrow table in the event-log layout
  — the same data a deployed Bouquet sees, so a policy can learn from it (popularity
  counts) or forward it (to Kafka, for a live serving stack);
* ``model_version`` and ``variant`` label the ``recommendation_id`` echoed in the events
  (``<model_version>.<variant>.<token>``); ``last_recommendation_ids`` (per resident of
  the last call: one id, a list of one id per recommended bundle, or None) overrides them
  with ids minted by serving (the API's answers, or the model policy's);
* ``before_week(start)`` with the moment each week's recommendations are asked.

Implementations: :class:`NoRecommendations`, :class:`PopularPolicy`,
:class:`RandomPolicy`, :class:`OraclePolicy` (reads hidden tastes, for consenting
residents only: the ceiling a lawful policy could reach, never a product), and two adapters
for trained models — :class:`ScoringPolicy` wraps an in-process scoring function,
:class:`HttpPolicy` asks a running serving API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS, Catalog
from bouquet.models.cadence import offer_use_rates
from bouquet.simulation.offer_lists import OutreachOffers, no_list, popularity_lists
from bouquet.simulation.residents import ProfileClasses

if TYPE_CHECKING:
    from bouquet.simulation.behaviour import Simulation

log = logging.getLogger(__name__)


@runtime_checkable
class Policy(Protocol):
    """The one method the closed loop needs (see the module docstring for the hooks)."""

    name: str

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]: ...


@dataclass(frozen=True)
class CityView:
    """What a policy may know at the start: the catalog and the public resident table
    (``resident_id``, ``neighbourhood``, ``age_band``, ``household``, ``student``,
    ``low_income``, ``consent``). ``hidden`` is for test oracles only."""

    catalog: Catalog
    residents: pa.Table
    hidden: Simulation


class BasePolicy:
    """Defaults for the optional hooks; subclasses implement :meth:`recommend`."""

    name = "base"
    model_version = "sim"
    variant = "base"

    def start(self, city: CityView) -> None:  # noqa: B027 — optional hook
        """Called once before the first week."""

    def observe(self, events: pa.Table) -> None:  # noqa: B027 — optional hook
        """Called with each period's events."""

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        raise NotImplementedError


class WithPull:
    """A policy that adds to a pull policy (what residents are shown in the app), which it
    hands every question about the answers to: the loop reads its name, version and ids
    through these, and its hooks are called first."""

    def __init__(self, pull: Policy) -> None:
        self.pull = pull

    @property
    def variant(self) -> str:
        return str(getattr(self.pull, "variant", self.pull.name))

    @property
    def model_version(self) -> str:
        return str(getattr(self.pull, "model_version", "sim"))

    @property
    def last_recommendation_ids(self) -> Any:
        return getattr(self.pull, "last_recommendation_ids", None)

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        return self.pull.recommend(resident_ids, k)

    def run_notes(self) -> dict[str, Any]:
        """The pull policy's notes (a copy: subclasses add their own)."""
        return dict(getattr(self.pull, "run_notes", dict)())

    def start(self, city: CityView) -> None:
        hook = getattr(self.pull, "start", None)
        if hook is not None:
            hook(city)

    def observe(self, events: pa.Table) -> None:
        hook = getattr(self.pull, "observe", None)
        if hook is not None:
            hook(events)

    def close(self) -> None:
        hook = getattr(self.pull, "close", None)
        if hook is not None:
            hook()


class NoRecommendations(BasePolicy):
    """Nothing is shown: residents only discover offers by themselves (the baseline)."""

    name = variant = "none"

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        return [[] for _ in resident_ids]


class _EventTracking(BasePolicy):
    """Keeps, from observed events only, what a deployed system would know: each
    resident's held bundles and declared profile (so it never proposes a bundle the
    resident holds or may not have)."""

    def start(self, city: CityView) -> None:
        self.catalog = city.catalog
        ids = city.residents["resident_id"].to_numpy(zero_copy_only=False)
        self._row = {rid: i for i, rid in enumerate(ids)}
        self._ids = pa.array(ids, pa.string())
        self._bundle_index = {b: i for i, b in enumerate(city.catalog.bundle_ids)}
        self.holdings = np.zeros((len(ids), len(city.catalog.bundles)), bool)
        self.subscriptions = np.zeros(len(city.catalog.bundles), np.int64)
        self._classes = ProfileClasses.build(city.catalog)
        self._class_contexts = pa.array(self._classes.context_json, pa.string())
        self._profile_class = np.full(len(ids), -1, np.int64)
        self._allowed_unknown = np.array([not b.eligibility.model_dump(exclude_none=True)
                                          and "*" in b.zones for b in city.catalog.bundles])

    def _rows(self, column: pa.ChunkedArray) -> np.ndarray:
        return pc.index_in(column, value_set=self._ids).to_numpy(zero_copy_only=False)

    def observe(self, events: pa.Table) -> None:
        bundles = events.filter(pc.and_(pc.is_valid(events["bundle_id"]),
                                        pc.is_in(events["type"],
                                                 pa.array(["subscribe", "unsubscribe"]))))
        if bundles.num_rows:
            rows = self._rows(bundles["resident_id"])
            cols = np.array([self._bundle_index[b] for b in bundles["bundle_id"].to_pylist()])
            subscribe = (bundles["type"].to_numpy(zero_copy_only=False) == "subscribe")
            order = np.argsort(bundles["ts"].cast(pa.int64()).to_numpy(), kind="stable")
            self.holdings[rows[order], cols[order]] = subscribe[order]
            np.add.at(self.subscriptions, cols[subscribe], 1)
        profiles = events.filter(pc.equal(events["type"], "profile"))
        if profiles.num_rows:
            rows = self._rows(profiles["resident_id"])
            # canonical contexts (the simulator's) map to a class without parsing JSON
            known = pc.index_in(profiles["context"], value_set=self._class_contexts)
            classes = known.to_numpy(zero_copy_only=False)
            classes = np.where(np.isnan(classes.astype(float)), -2, classes).astype(np.int64)
            for i in np.nonzero(classes == -2)[0]:
                classes[i] = self._class_of(profiles["context"][int(i)].as_py())
            self._profile_class[rows] = classes

    def _class_of(self, text: str | None) -> int:
        """Profile class of any profile context (-1 when incomplete or unknown)."""
        ctx = json.loads(text or "{}")
        try:
            return int(ProfileClasses.index(
                np.array([self.catalog.neighbourhood_ids.index(ctx["neighbourhood"])]),
                np.array([AGE_BANDS.index(ctx["age_band"])]),
                np.array([HOUSEHOLDS.index(ctx["household"])]),
                np.array([bool(ctx["student"])]), np.array([bool(ctx["low_income"])]))[0])
        except (KeyError, ValueError):
            return -1

    def allowed(self, rows: np.ndarray) -> np.ndarray:
        """(rows, B) bool: offered in the resident's zone, eligible, not held. A resident
        without a complete profile may only get bundles open to everyone everywhere."""
        cls = self._profile_class[rows]
        ok = np.where(cls[:, None] >= 0, self._classes.bundle_ok[np.maximum(cls, 0)],
                      self._allowed_unknown[None, :])
        return ok & ~self.holdings[rows]

    def _top_k(self, resident_ids: Sequence[str], k: int, scores: np.ndarray) -> list[list[str]]:
        rows = np.array([self._row.get(r, -1) for r in resident_ids])
        known = rows >= 0
        out: list[list[str]] = [[] for _ in resident_ids]
        if not known.any():
            return out
        allowed = self.allowed(rows[known])
        s = np.where(allowed, scores[known] if scores.ndim == 2 else scores[None, :], -np.inf)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        valid = np.take_along_axis(np.isfinite(s), order, 1)
        ids = self.catalog.bundle_ids
        for slot, (o, v) in zip(np.nonzero(known)[0], zip(order, valid, strict=True),
                                strict=True):
            out[slot] = [ids[j] for j in o[v]]
        return out


class PopularPolicy(_EventTracking):
    """The bundles most subscribed to so far (history included), among those the
    resident may have and does not hold."""

    name = variant = "popular"

    def popularity(self) -> np.ndarray:
        """(B,) ranking scores: subscriptions so far, ties broken by catalog order."""
        counts = self.subscriptions.astype(float)
        return counts + 1e-6 * -np.arange(len(counts))

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        return self._top_k(resident_ids, k, self.popularity())

    def start(self, city: CityView) -> None:
        super().start(city)
        self._service_index = {s: i for i, s in enumerate(city.catalog.service_ids)}
        self._uses: list[np.ndarray] = []  # (3, events): resident row, bundle, service
        self._use_span = [np.iinfo(np.int64).max, np.iinfo(np.int64).min]  # first use, last

    def observe(self, events: pa.Table) -> None:
        """Also counts uses, for the rates the planner weighs offers by."""
        super().observe(events)
        if events.num_rows:
            self._use_span[1] = max(self._use_span[1], pc.max(events["ts"].cast(pa.int64())
                                                              ).as_py())
        uses = events.filter(pc.equal(events["type"], "use"))
        if not uses.num_rows:
            return
        self._use_span[0] = min(self._use_span[0],
                                pc.min(uses["ts"].cast(pa.int64())).as_py())
        rows = self._rows(uses["resident_id"]).astype(float)
        known = ~np.isnan(rows)  # the city's residents (the loop knows no others)
        bundle = [self._bundle_index.get(b, -1) for b in uses["bundle_id"].to_pylist()]
        service = [self._service_index.get(s, -1) for s in uses["service_id"].to_pylist()]
        self._uses.append(np.array([rows, bundle, service])[:, known].astype(np.int64))

    def use_rates(self) -> dict[str, np.ndarray]:
        """Uses a week of each bundle per holder and of each service per user, by the rule
        training counts them with (:func:`~bouquet.models.cadence.offer_use_rates`), over
        every resident."""
        first, last = self._use_span
        weeks = (last - first) / (7 * 86_400_000_000) if last > first else 0.0
        resident, bundle, service = (np.concatenate(self._uses, axis=1) if self._uses
                                     else np.zeros((3, 0), np.int64))
        bundles, services = offer_use_rates(resident, bundle, service,
                                            self.holdings.sum(axis=0),
                                            len(self._service_index), weeks)
        return {"b": bundles, "s": services}

    def outreach_offers(self) -> OutreachOffers:
        """The planner's lists: the same ranking, published city-wide, not personalised."""
        return popularity_lists(self.catalog, self.popularity(), self.name,
                                self.use_rates()), no_list


class RandomPolicy(_EventTracking):
    """Uniformly random allowed bundles (a sanity floor)."""

    name = variant = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        return self._top_k(resident_ids, k,
                           self._rng.random((len(resident_ids), len(self.catalog.bundles))))


class OraclePolicy(PopularPolicy):
    """The consent-respecting ceiling: the bundles each *consenting* resident truly likes
    best (reads the hidden tastes), and for everyone else the popular bundles — the
    lawful non-personalised fallback. No lawful policy may personalise for a resident
    without consent, so a ceiling that did would be one no policy can reach. Consent is
    what the policy has observed: the public table at the start, then the ``consent``
    events. Tests and comparisons only, never a product."""

    name = variant = "oracle"

    def start(self, city: CityView) -> None:
        super().start(city)
        self._sim = city.hidden
        self.consent = city.residents["consent"].to_numpy(zero_copy_only=False).astype(bool)

    def observe(self, events: pa.Table) -> None:
        super().observe(events)
        changes = events.filter(pc.equal(events["type"], "consent"))
        if changes.num_rows:
            rows = self._rows(changes["resident_id"])
            order = np.argsort(changes["ts"].cast(pa.int64()).to_numpy(), kind="stable")
            granted = changes["value"].to_numpy(zero_copy_only=False) > 0.5
            self.consent[rows[order]] = granted[order]

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        rows = np.array([self._row.get(r, 0) for r in resident_ids])
        popularity = self.popularity()
        scores = np.broadcast_to(popularity, (len(rows), len(popularity))).copy()
        personal = np.nonzero(self.consent[rows])[0]
        if len(personal):
            scores[personal] = self._sim.bundle_affinity(self._sim.affinity(rows[personal]))
        return self._top_k(resident_ids, k, scores)


class ScoringPolicy(BasePolicy):
    """Adapter for a trained model scored in-process.

    ``score(resident_ids, k) -> list[list[str]]`` is typically a closure over a loaded
    model artifact and the serving filters; ``on_events`` (optional) receives each
    period's events, e.g. to fold recent activity in or to retrain between weeks.
    """

    def __init__(self, score: Callable[[Sequence[str], int], list[list[str]]], *,
                 name: str = "model", model_version: str = "model", variant: str | None = None,
                 on_events: Callable[[pa.Table], None] | None = None) -> None:
        self.name = name
        self.model_version = model_version
        self.variant = variant or name
        self._score = score
        self._on_events = on_events

    def observe(self, events: pa.Table) -> None:
        if self._on_events is not None:
            self._on_events(events)

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        return [list(r)[:k] for r in self._score(resident_ids, k)]


class HttpPolicy(BasePolicy):
    """Adapter for a running serving API: one GET per resident (threaded).

    ``path`` is formatted with ``resident_id``; ``k`` is passed as the ``k_param`` query
    parameter; ``parse(json) -> (bundle_ids, ids)`` reads the answer, ``ids`` being the
    answer's recommendation id or one per bundle (the default reads ``{"bundles":
    [{"bundle_id": …, "recommendation_id": …}], "recommendation_id": …}``: each item's own
    id when it has one, as an explored slot does).
    ``forward`` receives each period's events, typically a Kafka sink, so the stack under
    test ingests what residents did and its answers can react (the loop waits for
    ``settle_s`` seconds after forwarding).
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 path: str = "/v1/residents/{resident_id}/bundles", k_param: str = "k",
                 parse: Callable[[Any], tuple[list[str], Any]] | None = None,
                 name: str = "model", forward: Callable[[pa.Table], None] | None = None,
                 settle_s: float = 0.0, workers: int = 8, timeout_s: float = 5.0) -> None:
        import httpx

        self.name = self.variant = name
        self.model_version = "http"
        self._client = httpx.Client(base_url=base_url, timeout=timeout_s,
                                    headers={"X-API-Key": api_key} if api_key else {})
        self._path, self._k_param = path, k_param
        self._parse = parse or self._default_parse
        self._forward, self._settle_s, self._workers = forward, settle_s, workers
        self.last_recommendation_ids: list[Any] | None = None

    @staticmethod
    def _default_parse(body: Any) -> tuple[list[str], Any]:
        items = body.get("bundles", [])
        per_item = [b.get("recommendation_id") for b in items]
        return ([b["bundle_id"] for b in items],
                per_item if items and all(per_item) else body.get("recommendation_id"))

    def observe(self, events: pa.Table) -> None:
        if self._forward is not None:
            self._forward(events)
            if self._settle_s:
                import time

                time.sleep(self._settle_s)

    def _one(self, resident_id: str, k: int) -> tuple[list[str], Any]:
        response = self._client.get(self._path.format(resident_id=resident_id),
                                    params={self._k_param: k})
        response.raise_for_status()
        return self._parse(response.json())

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        with ThreadPoolExecutor(self._workers) as pool:
            answers = list(pool.map(lambda r: self._one(r, k), resident_ids))
        self.last_recommendation_ids = [rec_id for _, rec_id in answers]
        return [bundles[:k] for bundles, _ in answers]

    def close(self) -> None:
        self._client.close()
