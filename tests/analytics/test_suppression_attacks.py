"""No hidden cell can be worked out from what the operator API publishes.

For random small cities (where small cells abound), the fixed family of requests an
operator can make — every figure × every ``by`` × every ``value``, and the unfiltered
totals; the funnel and its uplift the same way; the live tables — is gathered as the API
gives it (JSON rows; the CSV export is checked to carry the same cells), and no hidden
cell may be a linear combination of the visible ones under the relations the tables obey
(:mod:`recoverability`). A ``?value=`` filter applied before suppression let a hidden
neighbourhood be recovered as the city's figure minus the other neighbourhoods.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouquet.analytics import figures
from bouquet.analytics.engagement import DIMENSIONS
from bouquet.analytics.live import LiveSnapshot
from bouquet.analytics.service import (
    LIVE_ACTIVE_SPEC,
    LIVE_CONTACTS_SPEC,
    EngagementService,
    live_tables,
)
from bouquet.analytics.tables import Table
from bouquet.core.catalog import load_catalog
from bouquet.core.recommendation import development_ids
from bouquet.core.settings import Settings
from tests.analytics.engagement_helpers import random_log
from tests.analytics.recoverability import Published

CATALOG = load_catalog(None)
K = 5
END = date(2024, 3, 31)
#: columns naming a row of each figure, besides dimension and value
ROW_KEYS = {"cadence": ["week"], "stickiness": ["week"], "contacts": ["week"],
            "monthly": ["month"], "cohorts": ["cohort", "months_since"], "daily": ["day"],
            "lifetime": []}


def city(root: Path, residents: int, seed: int) -> Path:
    """A random city of ten weeks, with recommendations shown by two arms."""
    log = random_log(CATALOG, residents=residents, start=END - timedelta(weeks=10), end=END,
                     seed=seed)
    rng, ids = random.Random(seed), development_ids()
    for event in log.events:
        if event["type"] in ("view", "click", "subscribe") and rng.random() < 0.5:
            arm = ("v1", "control") if hash(event["resident_id"]) % 2 else ("v2", "personal")
            event["recommendation_id"] = ids.mint(*arm, nonce=rng.getrandbits(40))
    return log.write(root)


def requests(svc: EngagementService) -> dict[str, list[Table]]:
    """Every answer of the family, per figure."""
    data = svc.data()
    choices = [("all", None)] + [(d, v) for d in DIMENSIONS
                                 for v in (None, *data.dimension_values[d])]
    out: dict[str, list[Table]] = {name: [] for name in figures.FIGURES}
    out["funnel"], out["uplift"] = [], []
    for by, value in choices:
        for name in figures.FIGURES:
            try:
                out[name].append(svc.figure(name, by=by, value=value))
            except figures.BadQuery:  # a value with no rows in this figure
                continue
        try:
            out["funnel"].append(svc.funnel(by=by, value=value))
            out["uplift"].append(svc.uplift(by=by, value=value))
        except figures.BadQuery:
            continue
    return out


def same_cells_in_csv(table: Table) -> None:
    """The CSV export hides exactly what the JSON hides and shows the same numbers."""
    rows = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert len(rows) == len(table.rows)
    for row, parsed in zip(table.rows, rows, strict=True):
        assert (parsed["suppressed"].split(";") if parsed["suppressed"] else []) == \
            row["suppressed"]
        for column in row["suppressed"]:
            assert parsed[column] == "", (table.name, column)


def recoverable(published: Published) -> list:
    assert not published.conflicts, published.conflicts[:3]
    return published.recoverable()


@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(residents=st.integers(25, 60), seed=st.integers(0, 10_000))
def test_no_engagement_or_funnel_cell_can_be_recovered(tmp_path_factory, residents: int,
                                                       seed: int) -> None:
    root = tmp_path_factory.mktemp("city")
    settings_ = Settings(env="test", state_dir=root / "state",
                         event_log_dir=city(root / "log", residents, seed),
                         redis_url="redis://127.0.0.1:1/0", small_cell_k=K)
    svc = EngagementService(settings_, CATALOG, ttl_s=3600)
    answers = requests(svc)
    hidden = 0
    for name, tables in answers.items():
        if name == "uplift":
            continue  # its counts are the funnel's: checked as funnel cells below
        keys = ["model_version", "variant"] if name == "funnel" else ROW_KEYS[name]
        spec = figures.FUNNEL_SPEC if name == "funnel" else figures.FIGURES[name].spec
        published = Published(name, spec, keys)
        for table in tables:
            same_cells_in_csv(table)
            published.add(table.rows)
        if name == "funnel":
            published.add(uplift_as_funnel_rows(answers["uplift"]))
        assert recoverable(published) == [], name
        hidden += len(published.hidden)
    assert hidden > 0, "a small city must have hidden cells, or this proves nothing"


def uplift_as_funnel_rows(tables: list[Table]) -> list[dict]:
    """The uplift rows' counts, named as the funnel cells they are (residents shown and
    converted of an arm and of its baseline)."""
    out = []
    for table in tables:
        for r in table.rows:
            for arm, residents, converted in (("arm", "residents", "converted"),
                                              ("baseline", "baseline_residents",
                                               "baseline_converted")):
                model_version, variant = r[arm].split(":", 1)
                stage = f"{r['stage']}_residents"
                hidden = [c for c, mine in (("residents_shown", residents), (stage, converted))
                          if mine in r["suppressed"]]
                out.append({"dimension": r["dimension"], "value": r["value"],
                            "model_version": model_version, "variant": variant,
                            "residents_shown": r[residents], stage: r[converted],
                            "suppressed": hidden})
    return out


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.data())
def test_no_live_cell_can_be_recovered(data: st.DataObject) -> None:
    nbs = ["centre", "gare", "port", "_unknown"]
    types = ["view", "click", "use", "pay"]
    buckets = [("day", "2026-03-02"), ("day", "2026-03-01"), ("week", "2026-W10")]
    active, contacts = [], []
    for period, bucket in buckets:
        counts = data.draw(st.lists(st.integers(0, 12), min_size=len(nbs),
                                    max_size=len(nbs)))
        active += [{"period": period, "bucket": bucket, "dimension": "neighbourhood",
                    "value": nb, "active": n} for nb, n in zip(nbs, counts, strict=True)]
        active.append({"period": period, "bucket": bucket, "dimension": "all",
                       "value": "all", "active": sum(counts)})
        per_type = data.draw(st.lists(st.integers(0, 12), min_size=len(types),
                                      max_size=len(types)))
        contacts += [{"period": period, "bucket": bucket, "type": t, "contacts": n}
                     for t, n in zip(types, per_type, strict=True)]
        contacts.append({"period": period, "bucket": bucket, "type": "all",
                         "contacts": sum(per_type)})
    snap = LiveSnapshot(pd.Timestamp("2026-03-02T12:00Z"), "2026-03-02", "2026-W10",
                        pd.DataFrame(active), pd.DataFrame(contacts),
                        pd.DataFrame(columns=["model_version", "variant", "arm"]),
                        pd.DataFrame({"window": ["last_1d"], "active": [3]}))
    tables = live_tables(snap, K)
    published = Published("live_active", LIVE_ACTIVE_SPEC, ["period", "bucket"])
    published.add(tables["active"].rows)
    same_cells_in_csv(tables["active"])
    assert recoverable(published) == []
    typed = Published("live_contacts", LIVE_CONTACTS_SPEC, ["period", "bucket"])
    typed.add([{**r, "dimension": "all" if r["type"] == "all" else "type", "value": r["type"]}
               for r in tables["contacts"].rows])
    same_cells_in_csv(tables["contacts"])
    assert recoverable(typed) == []
