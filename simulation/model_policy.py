"""The trained-model policy: the closed loop's residents are served by the product.

:class:`ModelPolicy` runs, in process, the same functions a deployed Bouquet runs, on what
a deployed Bouquet would see — the events the loop hands to ``observe``:

* **train** (:mod:`bouquet.pipelines.train`): the event log's events encoded and counted by
  the configured confidence rule (:func:`~bouquet.pipelines.dataset.build_dataset`); the
  model family chosen as ``bouquet train`` chooses it (every deployable candidate fitted and
  evaluated on a temporal hold-out, the best one promoted only when it beats popularity with
  confidence: :func:`~bouquet.pipelines.train.select_family`; until then the popular lists
  are published, the segments' for consenting residents when the segment baseline beat
  popularity on the same hold-out), then that family refitted on
  all events every ``retrain_every_weeks`` weeks, as a city would run ``bouquet train`` on a
  schedule (re-choosing the family every time would cost every candidate every week);
* **publish** (:func:`~bouquet.pipelines.publish.publish_in_memory`): every resident's list
  and reasons (``score_chunk``), the popular lists of the city, each neighbourhood and each
  segment, the serving view — the keyspace ``bouquet publish`` writes, held in memory;
* **serve** (:func:`bouquet.serving.ranking.answer` with
  :meth:`~bouquet.serving.ranking.OfferRanker.from_settings`): for each resident asked
  about, a :class:`~bouquet.serving.store.ResidentState` built from the events as the
  ingestion consumer keeps it in Redis (declared profile and consent, holdings, dismissed
  bundles, the latest contacts) and ranked by serving's rules (fold-in, filters, rotation,
  segment cold start, exploration). Recommendation ids are minted there with the
  deployment's key, as the API's are.

It measures whether *targeting by the product* moves cadence compared with popularity, on
the simulator's assumptions (see docs/simulation.md) — not real-world uplift.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from bouquet.core.recommendation import RecommendationIds
from bouquet.core.settings import Settings
from bouquet.models.deployable import DeployableModel
from bouquet.models.online import Audience, PublishedVersion, unpack_list
from bouquet.serving.ranking import Answer, OfferRanker, answer, personalises
from bouquet.serving.store import ResidentState
from bouquet.simulation.observed import COLUMNS, ObservedResidents
from bouquet.simulation.offer_lists import OutreachOffers, lists_of_version, packed
from bouquet.simulation.policies import BasePolicy, CityView

log = logging.getLogger(__name__)

_NO_LIST = unpack_list(None)


class ModelPolicy(BasePolicy):
    """Bouquet's train → publish → serve, in process, on the events observed so far."""

    name = variant = "model"
    model_version = "none"
    #: The deployed ALS defaults, fitted on one thread: the loop runs beside other work
    #: (the factors do not depend on the thread count).
    ALS_PARAMS: dict[str, Any] = {"num_threads": 1}

    def __init__(self, settings: Settings | None = None, *, retrain_every_weeks: int = 1,
                 candidates: Sequence[str] | None = None, force: bool = False) -> None:
        from bouquet.pipelines.candidates import DEPLOYABLE_KINDS

        if retrain_every_weeks < 1:
            raise ValueError("retrain_every_weeks must be at least 1")
        self.settings = settings or Settings()
        self.retrain_every_weeks = retrain_every_weeks
        self.candidates = tuple(candidates or DEPLOYABLE_KINDS)
        self.force = force  # promote the chosen family whatever the hold-out (`train --force`)
        self.fits = 0
        self.family: str | None = None  # the chosen candidate's kind, once promoted
        self.selections: list[dict[str, Any]] = []  # what each family selection decided
        self.last_answers: list[Answer] = []
        self.last_recommendation_ids: list[list[str]] | None = None
        # the deployment's key: ids the consumer and the reports verify and credit
        self.recommendation_ids = RecommendationIds.for_settings(self.settings)

    # --- the loop's hooks -------------------------------------------------------------------
    def start(self, city: CityView) -> None:
        self.catalog = city.catalog
        self.ranker = OfferRanker.from_settings(city.catalog, self.settings)
        self._tables: list[pa.Table] = []
        self.observed = ObservedResidents(self.settings.serving_recent_n)
        self._weeks_since_fit: int | None = None
        self._now: float | None = None
        self.version: PublishedVersion | None = None
        self.model: DeployableModel | None = None  # what train registered, publish published
        self.lists: dict[str, np.ndarray] = {}

    def before_week(self, when: datetime) -> None:
        """The simulated moment of the next answers (the start of the week)."""
        self._now = when.timestamp()
        if self._weeks_since_fit is not None:
            self._weeks_since_fit += 1

    def observe(self, events: pa.Table) -> None:
        table = events.select(list(COLUMNS))
        self._tables.append(table)
        self.observed.apply(table)

    def refresh(self) -> None:
        """Retrain and publish when the schedule says so (before the week's first answer
        or plan)."""
        if self._weeks_since_fit is None or self._weeks_since_fit >= self.retrain_every_weeks:
            self.fit()

    def recommend(self, resident_ids: Sequence[str], k: int) -> list[list[str]]:
        self.refresh()
        now = self._now if self._now is not None else self.observed.latest
        self.last_answers = [self.serve(rid, k, now) for rid in resident_ids]
        self.last_recommendation_ids = [[a.item_recommendation_id(p) for p in a.ranked.items]
                                        for a in self.last_answers]
        return [a.bundle_ids() for a in self.last_answers]

    def run_notes(self) -> dict[str, Any]:
        """What the run did: the family served (None: popular lists only, no candidate
        promoted), the fit that promoted it, and every selection's decision."""
        promoted = next((s["fit"] for s in self.selections if s["promote"]), None)
        return {"family": self.family, "promoted_at_fit": promoted, "fits": self.fits,
                "selections": self.selections}

    def outreach_offers(self) -> OutreachOffers | None:
        """What the planner reads of the published version (None: nothing published)."""
        if self.version is None:
            return None
        lists = self.lists

        def packed_of(resident_id: str) -> bytes:
            found = lists.get(resident_id)
            return packed(found) if found is not None else b""

        return lists_of_version(self.version), packed_of

    # --- serve ---------------------------------------------------------------------------
    def state(self, resident_id: str, personalise: bool) -> ResidentState:
        """The resident as one request of the API reads them (``OnlineStore.resident``)."""
        found = self.observed.get(resident_id)
        if found is None:
            return ResidentState(precomputed=_NO_LIST)
        return ResidentState(
            precomputed=self.lists.get(resident_id, _NO_LIST) if personalise else _NO_LIST,
            profile=dict(found.profile), holdings=set(found.holdings),
            dismissed=set(found.dismissed), recent=list(found.recent) if personalise else [])

    def serve(self, resident_id: str, k: int, now: float) -> Answer:
        """The answer the API's champion variant gives this resident at ``now``."""
        version = self.version
        personalise = version is not None and personalises(version)
        rerank = personalise and version.personalised and self.settings.serving_rerank
        return answer(self.ranker, "b", resident_id, self.state(resident_id, personalise),
                      version, variant=self.variant, personalise=personalise, rerank=rerank,
                      k=k, ids=self.recommendation_ids, now=now)

    # --- train and publish -----------------------------------------------------------------
    def fit(self) -> None:
        """Retrain (choosing the family first while none has been promoted) and publish."""
        from bouquet.pipelines.candidates import make_candidate
        from bouquet.pipelines.dataset import EventArrays, build_dataset, rule_from_settings
        from bouquet.pipelines.publish import PERSONAL, publish_in_memory
        from bouquet.pipelines.train import TrainOptions, popularity_tables, select_family

        frame = pa.concat_tables(self._tables).to_pandas()
        arrays = EventArrays.from_frame(frame.sort_values("ts", kind="stable"), self.catalog)
        rule = rule_from_settings(self.settings)
        kind = self.family
        audience = PERSONAL
        if kind is None:
            options = TrainOptions(candidates=self.candidates, baselines=(), progress=False,
                                   params=dict(self.ALS_PARAMS), force=self.force)
            try:
                selection = select_family(arrays, rule, options, self.settings)
            except ValueError as exc:  # e.g. nothing to hold out yet
                selection = None
                log.info("model policy: no family chosen: %s", exc)
            decision = selection.decision if selection is not None else None
            chosen = selection.chosen if selection is not None else None
            segment_rule = selection.segment_lists if selection is not None else None
            segments = segment_rule is not None and segment_rule.serve
            self.selections.append({
                "fit": self.fits + 1, "chosen": chosen.kind if chosen else None,
                "value": chosen.primary_mean if chosen else None,
                "promote": bool(decision and decision.promote),
                "reason": decision.reason if decision else "no candidate",
                "segment_lists": segments,
                "segment_reason": segment_rule.reason if segment_rule else "no hold-out"})
            if decision is not None and decision.promote and chosen is not None:
                kind = self.family = chosen.kind
            elif chosen is not None:
                # registered, not promoted: popular lists only, the segments' if they earned it
                kind = chosen.kind
                audience = Audience(personalised=False, segment_lists=segments)
        data = build_dataset(arrays, rule)
        self.fits += 1
        model_version = f"v{self.fits}"
        if kind is None:
            self.version, self.model, self.lists = None, None, {}
        else:
            candidate = make_candidate(kind, dict(self.ALS_PARAMS) if kind == "als" else None)
            candidate = candidate.fit(data)
            model = self.model = candidate.to_deployable(data, popularity_tables(data), {
                "trained_until": data.as_of.isoformat(), "model_kind": kind})
            self.version, self.lists = publish_in_memory(
                model, model_version=model_version, top=self.settings.publish_top_n,
                audience=audience)
        self.model_version = model_version
        self._weeks_since_fit = 0
        log.debug("model policy: fit %d (%s) on %d residents", self.fits, kind,
                  data.n_residents)
