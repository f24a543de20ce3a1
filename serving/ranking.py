"""From a resident's state and a loaded version to the ranked, filtered answer.

Pure logic (no I/O), so every rule is unit-testable and the route stays a few lines:

1. **Personalised** when the resident consents (profile ``consent=1``), the variant is not
   the popular baseline and the version has a precomputed list for them: that list,
   re-ranked by ``score + w · (bundle · u_recent)`` where ``u_recent`` is the ALS fold-in of
   the resident's recent events (see :mod:`bouquet.models.online`).
2. Otherwise **popular** in the resident's neighbourhood (or city-wide), said so in the answer.
3. **Always** excluded, whatever the source: bundles (services) the resident holds, bundles
   dismissed, offers not available in the zone, eligibility the resident lacks
   (:func:`bouquet.core.catalog.eligibility_failure` on the profile hash).
4. A personalised list that filters leave short is back-filled from popular.

Static parts of every answer (names, services, prices) are built once per catalog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import numpy as np
from cachetools import LRUCache

from bouquet.core.catalog import Bundle, Catalog, Service, available_in, eligibility_failure
from bouquet.models.confidence import Strengths
from bouquet.models.online import PublishedVersion
from bouquet.models.reasons import ReasonEvent, day_of
from bouquet.serving.store import RecentEvent, ResidentState

#: Fallback kinds (also the label of the ``bouquet_fallbacks_total`` metric).
FALLBACK_NEIGHBOURHOOD = "popular_neighbourhood"
FALLBACK_CITY = "popular_city"
FALLBACK_CATALOG = "catalog"
FALLBACK_BACKFILL = "backfill"


class Pick(NamedTuple):
    """One recommended item before serialisation."""

    item_id: str
    score: float
    reason_code: str
    source: str  # model, popular, catalog


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
                 reason_recent_days: int = 2) -> None:
        self.catalog = catalog
        self.rerank_weight = rerank_weight
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
    def items(self, kind: str, picks: list[Pick], today: date | None = None
              ) -> list[dict[str, Any]]:
        """An answer's items: each offer's static part (names, services, price — built once
        per catalog) with its score, source and reason (rendered once a day per code: the
        wording depends on how long ago the event was)."""
        static = self._bundle_static if kind == "b" else self._service_static
        today = today or datetime.now(UTC).date()
        out = []
        for pick in picks:
            key = (pick.reason_code, today)
            reason = self._reason_text.get(key)
            if reason is None:
                reason = self._reason_text[key] = self.reason_text(pick.reason_code, today)
            score = pick.score if pick.score == pick.score else 0.0  # never emit NaN
            out.append({**static[pick.item_id], "score": score, "reason": reason,
                        "reason_code": pick.reason_code, "source": pick.source})
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
        if kind == "popular" and arg and arg != "_all":
            return f"Popular in {self.neighbourhood_names.get(arg, arg)}"
        if kind == "popular":
            return f"Popular in {self.catalog.city.split(' (')[0]}"
        if kind == "cf":
            return "Chosen by residents with habits like yours"
        return "Recommended for you"

    def _recent_reason(self, model: PublishedVersion, strengths: Strengths,
                       recent: list[RecentEvent], kind: str, item: int) -> str | None:
        """The recent event that adds most to ``item``'s re-ranking boost, as an ``evt:``
        code with its day (None when no recent item adds to it)."""
        parts = model.model.recent_contributions(strengths, kind, item)
        if not parts:
            return None
        source, index, value = max(parts, key=lambda part: part[2])
        if value <= 0:
            return None
        item_id = (model.bundle_ids if source == "b" else model.service_ids)[index]
        rule = model.model.rule
        spread = source == "s" and rule.spread_bundle_events
        members = {model.bundle_ids[b] for b, m in enumerate(model.model.bundle_members)
                   if index in m} if spread else set()
        candidates = [e for e in recent if rule.weight(e.type) > 0 and e.ts is not None and (
            (source == "s" and e.service_id == item_id)
            or (source == "b" and e.bundle_id == item_id)
            or (e.service_id is None and e.bundle_id in members))]
        if not candidates:
            return None
        event = max(candidates, key=lambda e: (rule.weight(e.type) * rule.decay(
            (time.time() - e.ts) / 86400.0), e.ts))
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
    def _blocked(kind: str, state: ResidentState) -> set[str]:
        """Items this resident holds or dismissed (never shown again)."""
        if not state.holdings and not state.dismissed:
            return set()
        prefix = "b:" if kind == "b" else "s:"
        out = {h[2:] for h in state.holdings if h.startswith(prefix)}
        if kind == "b":
            out |= state.dismissed
        else:
            out |= {d[2:] for d in state.dismissed if d.startswith("s:")}
        return out

    # --- ranking -------------------------------------------------------------------------------
    def rank(self, kind: str, state: ResidentState, model: PublishedVersion | None, *, k: int,
             personalise: bool, rerank: bool, zone: str | None = None,
             domain: str | None = None, baseline_variant: bool = False) -> Ranked:
        """The answer for one resident: ``kind`` ``b`` (bundles) or ``s`` (services).

        ``personalise``: the resident consents and their variant personalises;
        ``baseline_variant``: they are in the non-personalised experiment variant.
        """
        allowed = self.bundle_allowed if kind == "b" else self.service_allowed
        out: list[Pick] = []
        seen: set[str] = set()
        result = Ranked(items=out, personalised=False)
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
        if personalise and rerank and state.recent:
            strengths = model.model.strengths(state.recent, time.time())
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
            order = _descending(scores)
            vocab = model.reason_vocab
            permitted = self.permitted(kind, state, zone, domain)
            blocked = self._blocked(kind, state)
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
                code = vocab[r] if r < len(vocab) else ""
                if boosts is not None and boosts[j] > 0 and boosts[j] >= 0.5 * abs(pre):
                    code = self._recent_reason(model, strengths, state.recent, kind,
                                               item_index) or code
                out.append(Pick(item_id, scores[j], code, "model"))
            if len(out) >= k:
                return result
            result.backfilled = k - len(out)
            result.fallbacks.append(FALLBACK_BACKFILL)
        self._popular_into(kind, state, model, k, zone, domain, result, seen)
        if not result.personalised:
            result.notice = self._notice(state, baseline_variant)
        return result

    def _popular_into(self, kind: str, state: ResidentState, model: PublishedVersion, k: int,
                      zone: str | None, domain: str | None, result: Ranked,
                      seen: set[str]) -> None:
        ids = model.bundle_ids if kind == "b" else model.service_ids
        nb = zone or state.neighbourhood
        sources = []
        if nb is not None and (kind, nb) in model.popular:
            sources.append((FALLBACK_NEIGHBOURHOOD, nb, model.popular[(kind, nb)]))
        if (kind, "_all") in model.popular:
            sources.append((FALLBACK_CITY, "_all", model.popular[(kind, "_all")]))
        out = result.items
        # The same rules as ``allowed``, from the per-profile cache.
        permitted = self.permitted(kind, state, zone, domain)
        blocked = self._blocked(kind, state)
        for label, where, entries in sources:
            used = False
            for entry in entries.tolist():
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
                code = f"popular:{where}"
                out.append(Pick(item_id, float(score), code, "popular"))
            if used and not result.personalised and result.fallback is None:
                result.fallback = label
            if used:
                result.fallbacks.append(label)
            if len(out) >= k:
                break

    def _notice(self, state: ResidentState, baseline_variant: bool) -> str:
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
