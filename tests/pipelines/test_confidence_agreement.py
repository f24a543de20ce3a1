"""Training and serving count the same events the same way.

For the same events, the confidences ``build_dataset`` puts in a resident's training rows
equal those serving folds in (``model.strengths`` → the rule's confidence): with and
without bundle spreading, with events whose service the model does not know, and after
the catalog changed (serving spreads over the model's composition, never today's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.eventlog import EventLog, read_events
from bouquet.core.settings import DEFAULT_EVENT_WEIGHTS
from bouquet.models.confidence import ConfidenceRule
from bouquet.pipelines.candidates import make_candidate
from bouquet.pipelines.dataset import EVENT_COLUMNS, EventArrays, build_dataset

CATALOG = load_catalog()
S, B = CATALOG.service_ids, CATALOG.bundle_ids
NOW = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class Recent:
    type: str
    service_id: str | None
    bundle_id: str | None
    ts: float | None


def history() -> list[tuple[str, str | None, str | None, float]]:
    """(type, service, bundle, days before NOW) of one consenting resident."""
    return [("use", S[0], None, 1), ("use", S[0], None, 40), ("pay", S[1], B[0], 3),
            ("subscribe", None, B[2], 10), ("click", None, B[5], 0.5),
            ("view", S[4], None, 2), ("use", "retired-service", B[3], 6),
            ("dismiss", None, B[1], 1), ("subscribe", None, B[2], 100)]


def training_rows(tmp: Path, rule: ConfidenceRule, catalog=CATALOG):
    records = [{"event_id": "c", "resident_id": "ana", "type": "consent", "service_id": None,
                "bundle_id": None, "ts": NOW - timedelta(days=200), "channel": "app",
                "value": 1.0, "context": None, "schema_version": 1}]
    for n, (kind, service, bundle, days) in enumerate(history()):
        records.append({"event_id": f"e{n}", "resident_id": "ana", "type": kind,
                        "service_id": service, "bundle_id": bundle,
                        "ts": NOW - timedelta(days=days), "channel": "app", "value": None,
                        "context": None, "schema_version": 1})
    EventLog(tmp).append(records)
    arrays = EventArrays.from_frame(read_events(tmp, columns=list(EVENT_COLUMNS)), catalog)
    return build_dataset(arrays, rule, as_of=pd.Timestamp(NOW))


@pytest.mark.parametrize("spread", [True, False])
def test_training_and_serving_confidences_are_equal(tmp_path: Path, spread: bool) -> None:
    rule = ConfidenceRule(dict(DEFAULT_EVENT_WEIGHTS), half_life_days=30.0, log_alpha=2.0,
                          spread_bundle_events=spread)
    data = training_rows(tmp_path / "log", rule)
    model = make_candidate("ease").fit(data).to_deployable(data)
    recent = [Recent(kind, service, bundle, (NOW - timedelta(days=days)).timestamp())
              for kind, service, bundle, days in history()]
    strengths = model.strengths(recent, NOW.timestamp())
    for matrix, found in ((data.services, strengths.services),
                          (data.bundles, strengths.bundles)):
        row = matrix[0]
        trained = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
        served = {i: float(rule.confidence(s)) for i, s in found.items() if s > 0}
        assert served.keys() == trained.keys()
        for i, value in trained.items():
            assert served[i] == pytest.approx(value, rel=1e-6), i
    if spread:  # the bundle-only subscriptions reached the bundle's services
        assert set(CATALOG.bundle_by_id[B[2]].services) <= {S[i] for i in strengths.services}


def test_serving_spreads_over_the_models_composition_after_the_catalog_changed(
        tmp_path: Path) -> None:
    rule = ConfidenceRule(dict(DEFAULT_EVENT_WEIGHTS), half_life_days=30.0, log_alpha=2.0)
    data = training_rows(tmp_path / "log", rule)
    model = make_candidate("ease").fit(data).to_deployable(data)
    # the catalog changes after training: bundle 2 gains a service
    changed = CATALOG.model_copy(deep=True)
    bundle = changed.bundle_by_id[B[2]]
    extra = next(s for s in S if s not in bundle.services)
    bundle.services.append(extra)
    event = [Recent("subscribe", None, B[2], NOW.timestamp())]
    strengths = model.strengths(event, NOW.timestamp())
    members = CATALOG.bundle_by_id[B[2]].services  # the composition the model was trained on
    assert {S[i] for i in strengths.services} == set(members)
    share = DEFAULT_EVENT_WEIGHTS["subscribe"] / len(members)
    assert all(v == pytest.approx(share) for v in strengths.services.values())
    assert extra not in {S[i] for i in strengths.services}
    assert np.isclose(sum(strengths.services.values()), DEFAULT_EVENT_WEIGHTS["subscribe"])
