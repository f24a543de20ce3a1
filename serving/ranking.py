"""From a resident's state and a loaded version to the ranked, filtered answer.

Pure logic (no I/O), so every rule is unit-testable and the route stays a few lines:

1. **Personalised** when the resident consents (profile ``consent=1``), the variant is not
   the popular baseline and the version has a precomputed list for them: that list,
   re-ranked by ``score + w · (bundle · u_recent)`` where ``u_recent`` is the ALS fold-in of
   the resident's recent events (see :mod:`bouquet.models.online`).
2. A consenting resident with no list and nothing recent to fold in (little history) gets
   the **popular list of their segment** — neighbourhood × age band × household, "popular
   with residents like you" — then the neighbourhood's. A version published without a
   champion has no personal list nor fold-in; its segment lists serve every consenting
   resident when its training run found they beat popularity (``Audience.segment_lists``).
3. Otherwise **popular** in the resident's neighbourhood (or city-wide), said so in the answer.
4. **Always** excluded, whatever the source: bundles (services) the resident holds, bundles
   dismissed, offers not available in the zone, eligibility the resident lacks
   (:func:`bouquet.core.catalog.eligibility_failure` on the profile hash), and bundles
   **rotated out**: shown ``rotate_after`` times in the last ``rotate_days`` days without
   a click, subscription or use since (a resident who ignored an offer twice is shown
   something else until those impressions age out).
5. A personalised list that filters leave short is back-filled from popular.
   **Cadence**: bundles, personalised or popular, are ordered by expected cadence gain —
   their score (fold-in included) weighed by the bundle's use rate
   (:mod:`bouquet.models.cadence`, ``cadence_power``; 0 ranks by score alone): the goal is
   a weekly cadence of use, and an offer taken but rarely used does not move it.
6. **Exploration**: for a consenting resident of a version that personalises or serves
   segment lists (:func:`personalises`), a share of the bundle slots (``explore_share``;
   the last slots of the list) is filled by Thompson sampling over the published
   conversion rates (shown → subscribed) of the resident's segment per bundle, so new
   bundles and little-known segments are learned. The item says
   so (``source`` and ``reason_code`` ``explore``) and carries its own recommendation id
   (variant ``<variant>-explore``), so the funnel counts explored slots as their own arm.
   The draw is seeded by resident, day and model version: the same state gives the same
   answer.

Static parts of every answer (names, services, prices) are built once per catalog.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from cachetools import LRUCache

from bouquet.core.catalog import Bundle, Catalog, Service, available_in, eligibility_failure
from bouquet.core.profile import segment_of
from bouquet.core.recommendation import RecommendationIds
from bouquet.models.cadence import cadence_weights, weigh
from bouquet.models.confidence import Strengths, is_impression
from bouquet.models.online import PublishedVersion
from bouquet.models.reasons import ReasonEvent, day_of
from bouquet.serving.store import RecentEvent, ResidentState

if TYPE_CHECKING:
    from bouquet.core.settings import Settings

#: Fallback kinds (also the label of the ``bouquet_fallbacks_total`` metric).
FALLBACK_SEGMENT = "popular_segment"
FALLBACK_NEIGHBOURHOOD = "popular_neighbourhood"
FALLBACK_CITY = "popular_city"
FALLBACK_CATALOG = "catalog"
FALLBACK_BACKFILL = "backfill"
#: ``source`` and ``reason_code`` of an explored slot, and the suffix of its variant.
EXPLORE = "explore"
#: Events after an impression that show the resident engaged with the offer (it is not
#: ignored any more): a click, a subscription, a use or payment through it.
ENGAGED_TYPES = frozenset({"click", "subscribe", "use", "pay", "rate"})


class Pick(NamedTuple):
    """One recommended item before serialisation."""

    item_id: str
    score: float
    reason_code: str
    source: str  # model, popular, explore, catalog


@dataclass
class Ranked:
    """One answer before serialisation."""

    items: list[Pick]
    personalised: bool
    reranked: bool = False
    fallback: str | None = None
    notice: str | None = None
    backfilled: int = 0
    fallbacks: list[str] = field(default_factory=list)
    rotated: frozenset[str] = frozenset()  # bundles left out by rotation
    explored: int = 0  # slots filled by exploration


@dataclass
class Answer:
    """A ranked answer with its recommendation ids, ready to serialise."""

    ranked: Ranked
    model_version: str
    variant: str
    recommendation_id: str
    #: the id of the explored slots (variant ``<variant>-explore``), None when none
    explore_id: str | None = None

    def item_recommendation_id(self, pick: Pick) -> str:
        """The id a front end echoes in events about this item."""
        if pick.source == EXPLORE and self.explore_id is not None:
            return self.explore_id
        return self.recommendation_id

    def bundle_ids(self) -> list[str]:
        return [pick.item_id for pick in self.ranked.items]


def explore_variant(variant: str) -> str:
    """The variant label of explored slots (the funnel shows them as their own arm)."""
    return f"{variant[:40 - len(EXPLORE) - 1]}-{EXPLORE}"


def _descending(scores: list[float]) -> list[int]:
    """Positions of ``scores`` from the highest, ties in list order (a stable sort), NaN
    last — the order ``numpy.argsort(-scores, kind="stable")`` gives."""
    total = sum(scores)
    if total == total:  # no NaN (an inf − inf sum is NaN too: it takes the slow way, right)
        return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()


class OfferRanker:
    """Catalog-derived look-ups and the ranking rules; one per app."""

    def __init__(self, catalog: Catalog, rerank_weight: float = 1.0,
                 reason_recent_days: int = 2, *, rotate_after: int = 0,
                 rotate_days: float = 28.0, explore_share: float = 0.0,
                 explore_prior: float = 20.0, cadence_power: float = 0.0) -> None:
        self.catalog = catalog
        self.cadence_power = cadence_power
        self.rerank_weight = rerank_weight
        self.rotate_after = rotate_after
        self.rotate_days = rotate_days
        self.explore_share = explore_share
        self.explore_prior = explore_prior
        self.neighbourhood_names = {n.id: n.name for n in catalog.neighbourhoods}
        self.service_names = {s.id: s.name for s in catalog.services}
        self._bundle_static = {b.id: self._static_bundle(b) for b in catalog.bundles}
        self._service_static = {s.id: self._static_service(s) for s in catalog.services}
        self.reason_recent_days = reason_recent_days
        self._names = {**self.service_names, **{b.id: b.name for b in catalog.bundles}}
        # a reason's text per (code, day): codes are a version's vocabulary plus the recent
        # events re-ranking names; bounded whatever comes
        self._reason_text: LRUCache[tuple[str, date], str] = LRUCache(maxsize=100_000)
        # one entry per distinct profile × query: few in a city, bounded whatever comes
        self._permitted: LRUCache[tuple[Any, ...], frozenset[str]] = LRUCache(maxsize=50_000)
        # per loaded version: its segments' rows in the exploration counts
        self._segment_rows: LRUCache[str, dict[str, int]] = LRUCache(maxsize=16)
        # per loaded version: every bundle's cadence weight
        self._cadence: LRUCache[str, list[float]] = LRUCache(maxsize=16)
        # per loaded version and segment: every bundle's exploration Beta parameters
        self._explore_params: LRUCache[tuple[str, str | None], tuple[np.ndarray, np.ndarray]] \
            = LRUCache(maxsize=1_024)

    @classmethod
    def from_settings(cls, catalog: Catalog, settings: Settings) -> OfferRanker:
        """The ranker of a deployment: every rule's parameter from the one settings object
        (the API and the closed loop build theirs here)."""
        return cls(catalog, settings.serving_rerank_weight, settings.serving_reason_recent_days,
                   rotate_after=settings.serving_rotate_after,
                   rotate_days=settings.serving_rotate_days,
                   explore_share=settings.serving_explore_share,
                   explore_prior=settings.serving_explore_prior,
                   cadence_power=settings.serving_cadence_power)

    # --- static parts --------------------------------------------------------------------
    def _static_bundle(self, bundle: Any) -> dict[str, Any]:
        return {
            "bundle_id": bundle.id,
            "name": bundle.name,
            "description": bundle.description,
            "domain": bundle.domain.value,
            "price": bundle.price.model_dump(exclude_none=True),
            "services": [{"service_id": s, "name": self.service_names.get(s, s),
                          "domain": self.catalog.service_by_id[s].domain.value}
                         for s in bundle.services if s in self.catalog.service_by_id],
        }

    def _static_service(self, service: Any) -> dict[str, Any]:
        return {
            "service_id": service.id,
            "name": service.name,
            "domain": service.domain.value,
            "partner": service.partner,
            "price": service.price.model_dump(exclude_none=True),
        }

    # --- serialisation -------------------------------------------------------------------
    def items(self, kind: str, picks: list[Pick], today: date | None = None,
              answer: Answer | None = None) -> list[dict[str, Any]]:
        """An answer's items: each offer's static part (names, services, price — built once
        per catalog) with its score, source and reason (rendered once a day per code: the
        wording depends on how long ago the event was). With ``answer``, each item carries
        the recommendation id to echo in events about it."""
        static = self._bundle_static if kind == "b" else self._service_static
        today = today or datetime.now(UTC).date()
        out = []
        for pick in picks:
            key = (pick.reason_code, today)
            reason = self._reason_text.get(key)
            if reason is None:
                reason = self._reason_text[key] = self.reason_text(pick.reason_code, today)
            score = pick.score if pick.score == pick.score else 0.0  # never emit NaN
            item = {**static[pick.item_id], "score": score, "reason": reason,
                    "reason_code": pick.reason_code, "source": pick.source}
            if answer is not None:
                item["recommendation_id"] = answer.item_recommendation_id(pick)
            out.append(item)
        return out

    # --- reasons ---------------------------------------------------------------------------
    def reason_text(self, code: str, today: date | None = None) -> str:
        """Human-readable reason for a reason code: ``evt:subscribe:b:maas-unlimited:2026-04``
        → "Because you subscribed to MaaS unlimited in April" (or "just" within
        ``BOUQUET_SERVING_REASON_RECENT_DAYS``); ``popular:<nb>`` → "Popular in …"; ``cf``
        → the plain "nothing you did explains it". Unknown codes get a neutral sentence."""
        today = today or datetime.now(UTC).date()
        event = ReasonEvent.parse(code)
        if event is not None:
            return event.text(self._names, today, self.reason_recent_days)
        kind, _, arg = code.partition(":")
        if kind == "segment":
            where = self.neighbourhood_names.get(arg.partition(":")[0])
            return f"Popular with residents like you in {where}" if where else \
                "Popular with residents like you"
        if kind == EXPLORE:
            return "Something new to try"
        if kind == "popular" and arg and arg != "_all":
            return f"Popular in {self.neighbourhood_names.get(arg, arg)}"
        if kind == "popular":
            return f"Popular in {self.catalog.city.split(' (')[0]}"
        if kind == "cf":
            return "Chosen by residents with habits like yours"
        return "Recommended for you"

    def _recent_reasons(self, model: PublishedVersion, strengths: Strengths,
                        recent: list[RecentEvent], kind: str, due: list[tuple[int, int]],
                        out: list[Pick], now: float) -> None:
        """Give the picks at ``due`` (``(position in out, item index)``) the recent event
        that adds most to their re-ranking boost, as an ``evt:`` code with its day; a pick
        no recent item adds to keeps its code. One contributions pass for all of them."""
        found = model.model.recent_contributions(strengths, kind, [item for _, item in due])
        if not found.sources:
            return
        rule = model.model.rule
        weighed = [(weight, e.ts, e) for e in recent
                   if e.ts is not None and (weight := rule.weight_at(e, now)) > 0]
        best = found.values.argmax(axis=0).tolist()
        for (position, _), row, column in zip(due, best, found.values.T, strict=True):
            code = self._recent_reason(model, found.sources[row], float(column[row]), weighed)
            if code is not None:
                out[position] = out[position]._replace(reason_code=code)

    @staticmethod
    def _recent_reason(model: PublishedVersion, source_item: tuple[str, int], value: float,
                       weighed: list[tuple[float, float, RecentEvent]]) -> str | None:
        """The code naming the weightiest recent event behind ``source_item`` (the recent
        item that adds ``value`` to a boost): the item's own event, or a bundle event that
        reached a service through the bundle's composition."""
        if value <= 0:
            return None
        source, index = source_item
        item_id = (model.bundle_ids if source == "b" else model.service_ids)[index]
        spread = source == "s" and model.model.rule.spread_bundle_events
        members = model.model.bundles_holding[index] if spread else frozenset()
        candidates = [c for c in weighed if (
            (source == "s" and c[2].service_id == item_id)
            or (source == "b" and c[2].bundle_id == item_id)
            or (c[2].service_id is None and c[2].bundle_id in members))]
        if not candidates:
            return None
        event = max(candidates, key=lambda c: (c[0], c[1]))[2]
        own = event.service_id == item_id or event.bundle_id == item_id
        kind_of, named = (source, item_id) if own else ("b", event.bundle_id)
        return f"evt:{event.type}:{kind_of}:{named}:{day_of(event.ts).isoformat()}"

    # --- filters -----------------------------------------------------------------------------
    def bundle_allowed(self, bundle_id: str, state: ResidentState, zone: str | None,
                       domain: str | None) -> bool:
        return bundle_id not in state.dismissed and _offer_allowed(
            self.catalog.bundle_by_id.get(bundle_id), f"b:{bundle_id}", state, zone, domain)

    def service_allowed(self, service_id: str, state: ResidentState, zone: str | None,
                        domain: str | None) -> bool:
        member = f"s:{service_id}"
        return member not in state.dismissed and _offer_allowed(
            self.catalog.service_by_id.get(service_id), member, state, zone, domain)

    def permitted(self, kind: str, state: ResidentState, zone: str | None,
                  domain: str | None) -> frozenset[str]:
        """Items whose zone, eligibility and domain admit this resident — the part of the
        filters that depends only on the profile, cached per distinct profile (there are
        few: neighbourhood × age band × household × student × low income)."""
        p = state.profile
        # The resident's own neighbourhood is in the key even when ``zone`` overrides where
        # the offer must be available: eligibility rules can name where the resident lives.
        key = (kind, zone, state.neighbourhood, domain, p.get("age_band"),
               p.get("household"), bool(p.get("student")), bool(p.get("low_income")))
        found = self._permitted.get(key)
        if found is None:
            probe = ResidentState(precomputed=None, profile=p)
            allowed = self.bundle_allowed if kind == "b" else self.service_allowed
            ids = self.catalog.bundle_ids if kind == "b" else self.catalog.service_ids
            found = frozenset(i for i in ids if allowed(i, probe, zone, domain))
            self._permitted[key] = found
        return found

    @staticmethod
    def _blocked(kind: str, state: ResidentState, rotated: frozenset[str] = frozenset()
                 ) -> set[str]:
        """Items this resident holds or dismissed (never shown again), and bundles rotated
        out for now."""
        if not state.holdings and not state.dismissed and not rotated:
            return set()
        prefix = "b:" if kind == "b" else "s:"
        out = {h[2:] for h in state.holdings if h.startswith(prefix)}
        if kind == "b":
            out |= state.dismissed | rotated
        else:
            out |= {d[2:] for d in state.dismissed if d.startswith("s:")}
        return out

    def rotated_out(self, recent: list[RecentEvent], now: float) -> frozenset[str]:
        """Bundles shown at least ``rotate_after`` times in the last ``rotate_days`` days
        (impressions among ``recent``, newest first) since the resident last clicked, took
        or used them — ignored, so left out for now."""
        if not self.rotate_after or not recent:
            return frozenset()
        since = now - self.rotate_days * 86400.0
        shown: dict[str, int] = {}
        engaged: set[str] = set()
        for event in recent:  # newest first: engagement after an impression is met first
            bundle = event.bundle_id
            if bundle is None or (event.ts is not None and event.ts < since):
                continue
            if event.type in ENGAGED_TYPES:
                engaged.add(bundle)
            elif is_impression(event) and bundle not in engaged:
                shown[bundle] = shown.get(bundle, 0) + 1
        return frozenset(b for b, n in shown.items() if n >= self.rotate_after)

    # --- ranking -------------------------------------------------------------------------------
    def rank(self, kind: str, state: ResidentState, model: PublishedVersion | None, *, k: int,
             personalise: bool, rerank: bool, zone: str | None = None,
             domain: str | None = None, baseline_variant: bool = False,
             now: float | None = None, resident_id: str = "") -> Ranked:
        """The answer for one resident: ``kind`` ``b`` (bundles) or ``s`` (services).

        ``personalise``: the resident consents and their variant personalises;
        ``baseline_variant``: they are in the non-personalised experiment variant.
        ``now`` (epoch seconds, default the clock) is when the answer is given: the age of
        recent events (fold-in decay, rotation) and the day of exploration's draw.
        """
        now = time.time() if now is None else now
        allowed = self.bundle_allowed if kind == "b" else self.service_allowed
        out: list[Pick] = []
        seen: set[str] = set()
        result = Ranked(items=out, personalised=False)
        if kind == "b" and personalise:  # a rule read off the resident's own behaviour
            result.rotated = self.rotated_out(state.recent, now)
        if model is None:
            # Nothing published yet: the catalog itself, filtered, in catalog order.
            result.fallback = FALLBACK_CATALOG
            result.fallbacks.append(FALLBACK_CATALOG)
            result.notice = "No recommendations are published yet: showing the catalog."
            ids = self.catalog.bundle_ids if kind == "b" else self.catalog.service_ids
            for item_id in ids:
                if len(out) >= k:
                    break
                if allowed(item_id, state, zone, domain):
                    out.append(Pick(item_id, 0.0, "catalog", "catalog"))
            return result

        ids = model.bundle_ids if kind == "b" else model.service_ids
        entries = state.precomputed
        recent = None  # every item's fold-in score, when re-ranking
        strengths = None
        if personalise and rerank and state.recent and model.personalised:
            # a version without a champion has no model earned to fold events into
            strengths = model.model.strengths(state.recent, now)
            recent = model.model.recent_scores(strengths, kind)
        # Plain lists from here: per-element numpy access costs more than these short loops.
        if personalise and len(entries):
            rows = entries.tolist()  # [(item index, reason index, score)], best first
        elif personalise and recent is not None:
            # Seen for the first time a moment ago: no precomputed list yet, but what they
            # just did is enough to rank every item by the fold-in alone.
            no_reason = len(model.reason_vocab)
            rows = [(i, no_reason, 0.0) for i in range(len(ids))]
        else:
            rows = None
        if rows:
            result.personalised = True
            n_ids = len(ids)
            boosts = None
            if recent is not None:
                w = self.rerank_weight
                item_boost = [w * b for b in recent.tolist()]
                n_boost = len(item_boost)
                boosts = [item_boost[i] if i < n_boost else 0.0 for i, _, _ in rows]
                scores = [row[2] + b for row, b in zip(rows, boosts, strict=True)]
                result.reranked = True
            else:
                scores = [row[2] for row in rows]
            weights = self.bundle_weights(model, kind)
            if weights is not None:
                scores = _weighed(scores, [row[0] for row in rows], weights)
            order = _descending(scores)
            vocab = model.reason_vocab
            permitted = self.permitted(kind, state, zone, domain)
            blocked = self._blocked(kind, state, result.rotated)
            recent_due: list[tuple[int, int]] = []  # picks whose reason is a recent event
            for j in order:
                if len(out) >= k:
                    break
                item_index, r, pre = rows[j]
                if item_index >= n_ids:
                    continue
                item_id = ids[item_index]
                if item_id in seen or item_id not in permitted or item_id in blocked:
                    continue
                seen.add(item_id)
                if boosts is not None and boosts[j] > 0 and boosts[j] >= 0.5 * abs(pre):
                    recent_due.append((len(out), item_index))
                out.append(Pick(item_id, scores[j], vocab[r] if r < len(vocab) else "",
                                "model"))
            if recent_due:
                self._recent_reasons(model, strengths, state.recent, kind, recent_due, out,
                                     now)
            if len(out) < k:
                result.backfilled = k - len(out)
                result.fallbacks.append(FALLBACK_BACKFILL)
        # a consenting resident with little history: popular with residents like them
        segment = segment_of(state.profile) if personalise and not rows and zone is None \
            else None
        if len(out) < k:
            self._popular_into(kind, state, model, k, zone, domain, result, seen, segment)
        if not result.personalised:
            result.notice = self._notice(state, baseline_variant,
                                         result.fallback == FALLBACK_SEGMENT)
        if personalise and kind == "b" and self.explore_share > 0:
            self._explore(result, state, model, k, zone, domain, now, resident_id)
        return result

    def bundle_weights(self, model: PublishedVersion, kind: str) -> list[float] | None:
        """Every bundle's cadence weight in ``model`` (None: services, or ranking by score
        alone); fixed for a published version, so worked out once per version."""
        if kind != "b" or self.cadence_power == 0:
            return None
        found = self._cadence.get(model.version)
        if found is None:
            found = self._cadence[model.version] = cadence_weights(
                model.model.bundle_use_rate, self.cadence_power).tolist()
        return found

    # --- exploration -------------------------------------------------------------------------
    def _explore(self, result: Ranked, state: ResidentState, model: PublishedVersion, k: int,
                 zone: str | None, domain: str | None, now: float, resident_id: str) -> None:
        """Fill ``explore_share`` of the ``k`` slots (the last ones) by Thompson sampling:
        for each bundle the resident may be offered and is not already given, a conversion
        rate drawn from Beta(prior + taken, prior' + shown − taken) of their segment (the
        city's without one), the prior being the bundle's city-wide rate worth
        ``explore_prior`` impressions; the highest draws win. A share's fraction of a slot
        is one slot with that probability."""
        rng = _answer_rng(resident_id, now, model.model_version)
        wanted = self.explore_share * k
        slots = min(k, int(wanted) + int(rng.random() < wanted - int(wanted)))
        if slots <= 0:
            return
        keep = result.items[:k - slots] if len(result.items) > k - slots else result.items
        taken_ids = {pick.item_id for pick in keep}
        permitted = self.permitted("b", state, zone, domain)
        blocked = self._blocked("b", state, result.rotated)
        ids = model.bundle_ids
        candidates = [i for i, b in enumerate(ids)
                      if b in permitted and b not in blocked and b not in taken_ids]
        if not candidates:
            return
        alpha_all, beta_all = self._explore_beta(model, segment_of(state.profile))
        pick = np.asarray(candidates)
        alpha, beta = alpha_all[pick], beta_all[pick]
        draws = rng.beta(alpha, beta)
        best = np.argsort(-draws, kind="stable")[:slots].tolist()
        explored = [Pick(ids[pick[j]], float(draws[j]), EXPLORE, EXPLORE) for j in best]
        result.items[:] = keep + explored
        result.explored = len(explored)

    def _explore_beta(self, model: PublishedVersion, segment: str | None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Every bundle's Beta parameters for ``segment``'s residents: fixed for a published
        version (its counts are), so worked out once per version and segment, not per
        request."""
        key = (model.version, segment)
        cached = self._explore_params.get(key)
        if cached is not None:
            return cached
        shown, taken = model.model.bundle_shown, model.model.bundle_taken
        row = self._segment_row(model, segment)
        m = self.explore_prior
        city_shown, city_taken = shown[0].astype(np.float64), taken[0].astype(np.float64)
        overall = (city_taken.sum() + 1.0) / (city_shown.sum() + 2.0)
        prior = (city_taken + m * overall) / (city_shown + m)  # the bundle's city rate
        if row is None:  # no segment: the city's own counts around the overall rate
            prior, own_shown, own_taken = (np.full(len(model.bundle_ids), overall),
                                           city_shown, city_taken)
        else:
            own_shown, own_taken = shown[row].astype(np.float64), taken[row].astype(np.float64)
        alpha = m * prior + own_taken
        beta = m * (1.0 - prior) + np.maximum(own_shown - own_taken, 0.0)
        self._explore_params[key] = (alpha, beta)
        return alpha, beta

    def _segment_row(self, model: PublishedVersion, segment: str | None) -> int | None:
        """Row of ``segment`` in the version's exploration counts (None: not known)."""
        if segment is None:
            return None
        rows = self._segment_rows.get(model.version)
        if rows is None:
            rows = self._segment_rows[model.version] = {
                s: 1 + i for i, s in enumerate(model.model.segments)}
        return rows.get(segment)

    def _popular_into(self, kind: str, state: ResidentState, model: PublishedVersion, k: int,
                      zone: str | None, domain: str | None, result: Ranked,
                      seen: set[str], segment: str | None = None) -> None:
        ids = model.bundle_ids if kind == "b" else model.service_ids
        nb = zone or state.neighbourhood
        sources = []
        if segment is not None and (kind, segment) in model.popular:
            sources.append((FALLBACK_SEGMENT, segment, model.popular[(kind, segment)]))
        if nb is not None and (kind, nb) in model.popular:
            sources.append((FALLBACK_NEIGHBOURHOOD, nb, model.popular[(kind, nb)]))
        if (kind, "_all") in model.popular:
            sources.append((FALLBACK_CITY, "_all", model.popular[(kind, "_all")]))
        out = result.items
        # The same rules as ``allowed``, from the per-profile cache.
        permitted = self.permitted(kind, state, zone, domain)
        blocked = self._blocked(kind, state, result.rotated)
        weights = self.bundle_weights(model, kind)
        for label, where, entries in sources:
            used = False
            for entry in _by_cadence(entries.tolist(), weights):
                if len(out) >= k:
                    break
                item_index, _, score = entry
                if item_index >= len(ids):
                    continue
                item_id = ids[item_index]
                if item_id in seen or item_id not in permitted or item_id in blocked:
                    continue
                seen.add(item_id)
                used = True
                code = f"segment:{where}" if label == FALLBACK_SEGMENT else f"popular:{where}"
                out.append(Pick(item_id, float(score), code, "popular"))
            if used and not result.personalised and result.fallback is None:
                result.fallback = label
            if used:
                result.fallbacks.append(label)
            if len(out) >= k:
                break

    def _notice(self, state: ResidentState, baseline_variant: bool, segment: bool = False
                ) -> str:
        if segment:
            return ("Not personalised yet: too little is known of this resident, so these are "
                    "the most popular offers with residents like them (neighbourhood, age "
                    "band, household).")
        where = "where they live" if state.neighbourhood else "in the city"
        if baseline_variant:
            return ("Not personalised: this resident is in the experiment's non-personalised "
                    f"variant, so these are the most popular offers {where}.")
        if not state.known:
            return ("Not personalised: nothing is known about this resident yet, so these "
                    f"are the most popular offers {where}.")
        if not state.consent:
            return ("Not personalised: the resident has not consented to personalisation, "
                    f"so these are the most popular offers {where}.")
        return f"Not personalised: no list for this resident yet; most popular offers {where}."


def personalises(model: PublishedVersion | None) -> bool:
    """Whether a personalising variant gives its consenting residents more than popular
    lists from ``model``: their own lists, or their segment's (its
    :class:`~bouquet.models.online.Audience`). With nothing published (None) the catalog
    answers, and says why."""
    return model is None or model.audience.tailors


def answer(ranker: OfferRanker, kind: str, resident_id: str, state: ResidentState,
           model: PublishedVersion | None, *, variant: str, personalise: bool, rerank: bool,
           k: int, ids: RecommendationIds, zone: str | None = None,
           domain: str | None = None, now: float | None = None) -> Answer:
    """The whole answer to one request once the resident's state is read: ranked by the
    rules above, with its recommendation ids — what the API serialises, and what the closed
    loop shows its simulated residents.

    ``personalise``: the variant personalises and the version has personal lists (the
    resident's consent is read from ``state``); ``rerank``: fold recent events in; ``ids``:
    the deployment's minter (signed ids, so the funnel credits them).
    """
    ranked = ranker.rank(kind, state, model, k=k, personalise=personalise and state.consent,
                         rerank=rerank, zone=zone, domain=domain,
                         baseline_variant=not personalise, now=now, resident_id=resident_id)
    model_version = model.model_version if model else "none"
    explore_id = (ids.mint(model_version, explore_variant(variant))
                  if ranked.explored else None)
    return Answer(ranked, model_version, variant, ids.mint(model_version, variant), explore_id)


def _weighed(scores: list[float], items: list[int], weights: list[float]) -> list[float]:
    """``scores`` of bundles ``items`` (indices) weighed by their cadence weights; an index
    beyond the version's weights (a list longer than its model) weighs 1."""
    n_w = len(weights)
    return weigh(scores, [weights[i] if i < n_w else 1.0 for i in items]).tolist()


def _by_cadence(entries: list[Any], weights: list[float] | None) -> list[Any]:
    """A published list's ``(item index, reason, score)`` entries re-ordered by weighed
    score, best first, ties in list order (as published when ``weights`` is None)."""
    if weights is None or not entries:
        return entries
    scores = _weighed([e[2] for e in entries], [e[0] for e in entries], weights)
    return [(e[0], e[1], score) for e, score in
            sorted(zip(entries, scores, strict=True), key=lambda p: p[1], reverse=True)]


def _answer_rng(resident_id: str, now: float, model_version: str) -> np.random.Generator:
    """Exploration's random stream for one resident on one (UTC) day of one model version:
    the same answer all day, whichever process or publish of the model gives it."""
    day = math.floor(now / 86400.0)
    digest = hashlib.blake2b(f"{resident_id}\x1f{day}\x1f{model_version}".encode(),
                             digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _offer_allowed(offer: Bundle | Service | None, holding: str, state: ResidentState,
                   zone: str | None, domain: str | None) -> bool:
    """A bundle or service may be offered: still in the catalog (lists published before the
    catalog dropped it are skipped), not held, of the domain asked, available in the zone
    asked (else where the resident lives), and the resident is eligible."""
    if offer is None or holding in state.holdings:
        return False
    if domain is not None and offer.domain.value != domain:
        return False
    if not available_in(offer.zones, zone or state.neighbourhood):
        return False
    return eligibility_failure(offer.eligibility, state.profile) is None
