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

import json
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from cachetools import LRUCache

from bouquet.core.catalog import Bundle, Catalog, Service, available_in, eligibility_failure
from bouquet.models.online import PublishedVersion
from bouquet.serving.store import ResidentState

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

    def __init__(self, catalog: Catalog, rerank_weight: float = 1.0) -> None:
        self.catalog = catalog
        self.rerank_weight = rerank_weight
        self.neighbourhood_names = {n.id: n.name for n in catalog.neighbourhoods}
        self.service_names = {s.id: s.name for s in catalog.services}
        self._bundle_static = {b.id: self._static_bundle(b) for b in catalog.bundles}
        self._service_static = {s.id: self._static_service(s) for s in catalog.services}
        self._reason_cache: dict[tuple[str, str], str] = {}
        self._reason_json: dict[str, str] = {}
        # one entry per distinct profile × query: few in a city, bounded whatever comes
        self._permitted: LRUCache[tuple[Any, ...], frozenset[str]] = LRUCache(maxsize=50_000)
        # Each item's static JSON without its closing brace (see items_json).
        self._bundle_json = {k: json.dumps(v, separators=(",", ":"))[:-1]
                             for k, v in self._bundle_static.items()}
        self._service_json = {k: json.dumps(v, separators=(",", ":"))[:-1]
                              for k, v in self._service_static.items()}

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
    def items_json(self, kind: str, items: list[Pick]) -> str:
        """The JSON array of an answer's items, from fragments serialised once per catalog
        (an item's names, services and price never change between requests)."""
        fragments = self._bundle_json if kind == "b" else self._service_json
        parts = []
        for pick in items:
            reason = self._reason_json.get(pick.reason_code)
            if reason is None:
                reason = self._reason_json[pick.reason_code] = (
                    f',"reason":{json.dumps(self.reason_text(pick.reason_code))}'
                    f',"reason_code":{json.dumps(pick.reason_code)}')
            score = pick.score if pick.score == pick.score else 0.0  # never emit NaN
            parts.append(f'{fragments[pick.item_id]},"score":{score:.6f}{reason},'
                         f'"source":"{pick.source}"}}')
        return "[" + ",".join(parts) + "]"

    # --- reasons ---------------------------------------------------------------------------
    def reason_text(self, code: str) -> str:
        """Human-readable reason for a reason code (``uses:bike-share`` → "Because you use
        Self-service bike share"). Unknown codes get a neutral sentence, never an error."""
        key = ("", code)
        text = self._reason_cache.get(key)
        if text is None:
            text = self._render_reason(code)
            self._reason_cache[key] = text
        return text

    def _render_reason(self, code: str) -> str:
        kind, _, arg = code.partition(":")
        if kind in ("uses", "service", "svc", "affinity") and arg:
            return f"Because you use {self.service_names.get(arg, arg)}"
        if kind == "recent" and arg:
            return f"Because you just used {self.service_names.get(arg, arg)}"
        if kind in ("bundle", "like") and arg:
            bundle = self.catalog.bundle_by_id.get(arg)
            return f"Because you like {bundle.name if bundle else arg}"
        if kind == "popular" and arg and arg != "_all":
            return f"Popular in {self.neighbourhood_names.get(arg, arg)}"
        if kind == "popular":
            return f"Popular in {self.catalog.city.split(' (')[0]}"
        if kind in ("cf", "similar", "collaborative"):
            return "Chosen by residents with habits like yours"
        if kind == "completes" and arg:
            return f"Completes what you already have ({self.service_names.get(arg, arg)})"
        return "Recommended for you"

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
            recent_services: set[str] = set()
            if recent is not None:
                w = self.rerank_weight
                item_boost = [w * b for b in recent.tolist()]
                n_boost = len(item_boost)
                boosts = [item_boost[i] if i < n_boost else 0.0 for i, _, _ in rows]
                scores = [row[2] + b for row, b in zip(rows, boosts, strict=True)]
                result.reranked = True
                recent_services = {model.service_ids[i] for i in strengths.services}
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
                    code = self._recent_reason(kind, item_id, recent_services) or code
                out.append(Pick(item_id, scores[j], code, "model"))
            if len(out) >= k:
                return result
            result.backfilled = k - len(out)
            result.fallbacks.append(FALLBACK_BACKFILL)
        self._popular_into(kind, state, model, k, zone, domain, result, seen)
        if not result.personalised:
            result.notice = self._notice(state, baseline_variant)
        return result

    def _recent_reason(self, kind: str, item_id: str, recent: set[str]) -> str | None:
        """``recent:<service>`` when one of the recently touched services explains the boost."""
        if kind == "s":
            return f"recent:{item_id}" if item_id in recent else None
        bundle = self.catalog.bundle_by_id.get(item_id)
        if bundle is None:
            return None
        for service in bundle.services:
            if service in recent:
                return f"recent:{service}"
        return None

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
