"""Small-cell suppression: the rules one by one, then every figure of a real computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bouquet.analytics.engagement import CADENCES
from bouquet.analytics.figures import FIGURES, engagement_figure
from bouquet.analytics.suppression import FLAG, SuppressionSpec, suppress
from bouquet.core.catalog import load_catalog
from tests.analytics.engagement_helpers import random_log
from tests.analytics.engagement_oracle import compute_engagement, load_engagement_data

CATALOG = load_catalog(None)
K = 5


def test_counts_between_zero_and_k_are_hidden_and_flagged_zeros_are_not() -> None:
    frame = pd.DataFrame({"value": ["a", "b", "c"], "n": [0, 4, 5]})
    out = suppress(frame, SuppressionSpec(counts=["n"]), K)
    assert out["n"].tolist() == [0, None, 5]
    assert out[FLAG].tolist() == [[], ["n"], []]


def test_a_small_population_hides_its_whole_row_and_what_derives_from_it() -> None:
    frame = pd.DataFrame({"total": [3, 50], "x": [0, 20], "rate": [0.0, 0.4]})
    spec = SuppressionSpec(counts=["total", "x"], gates=[("total", ["x"])],
                           derived={"rate": ["x", "total"]})
    out = suppress(frame, spec, K)
    assert out.loc[0, FLAG] == ["total", "x", "rate"]
    assert out.loc[1, FLAG] == []


def test_one_hidden_cell_of_a_row_that_adds_up_gets_a_companion() -> None:
    # 2 would be 40 − 30 − 8 if only it were hidden: the smallest other non-zero cell goes too
    frame = pd.DataFrame({"total": [40], "a": [30], "b": [2], "c": [8], "d": [0]})
    spec = SuppressionSpec(counts=["total", "a", "b", "c", "d"],
                           partitions=[("total", ["a", "b", "c", "d"])])
    out = suppress(frame, spec, K)
    assert out.loc[0, FLAG] == ["b", "c"]
    assert out.loc[0, "d"] == 0 and out.loc[0, "a"] == 30


def test_neighbourhoods_that_add_up_to_the_city_get_a_companion_across_rows() -> None:
    # a small neighbourhood's cell could be recovered from the city total minus the others
    frame = pd.DataFrame({
        "dimension": ["neighbourhood"] * 3, "value": ["x", "y", "z"], "week": ["w"] * 3,
        "total": [40, 60, 90], "a": [38, 50, 70], "b": [2, 10, 20]})
    spec = SuppressionSpec(counts=["total", "a", "b"], partitions=[("total", ["a", "b"])],
                           across=["week"])
    out = suppress(frame, spec, K)
    hidden_b = [v for v, flags in zip(out["value"], out[FLAG], strict=True) if "b" in flags]
    assert len(hidden_b) >= 2  # never exactly one hidden per column
    for column in ("a", "b"):
        assert sum(column in f for f in out[FLAG]) != 1
    for flags in out[FLAG]:  # and never exactly one per row
        assert sum(c in flags for c in ("a", "b")) != 1


def test_percentiles_need_k_residents_on_each_side() -> None:
    frame = pd.DataFrame({"p50": [3.0, 3.0], "p50_n_le": [10, 10], "p50_n_ge": [4, 6]})
    out = suppress(frame, SuppressionSpec(quantiles={"p50": ("p50_n_le", "p50_n_ge")}), K)
    assert out["p50"].tolist() == [None, 3.0]


@pytest.fixture(scope="module")
def engagement(tmp_path_factory: pytest.TempPathFactory):
    root = random_log(CATALOG, residents=120).write(tmp_path_factory.mktemp("log"))
    return compute_engagement(load_engagement_data(root, CATALOG))


@pytest.mark.parametrize("figure", list(FIGURES))
@pytest.mark.parametrize("by", ["all", "neighbourhood", "domain", "channel", "factor"])
def test_no_figure_shows_a_small_count(engagement, figure: str, by: str) -> None:
    table = engagement_figure(engagement, figure, K, by=by)
    spec = FIGURES[figure].spec
    counted = set(spec.counts)
    shown_small = [(r.get("value"), c, r[c]) for r in table.rows for c in counted
                   if r[c] is not None and 0 < r[c] < K]
    assert not shown_small, shown_small[:5]
    hidden = [c for r in table.rows for c in r[FLAG]]
    assert all(r[c] is None for r in table.rows for c in r[FLAG])
    if figure in ("cadence", "contacts", "daily") and by in ("neighbourhood", "domain"):
        assert hidden, "this sparse log must have small cells here"


def test_cadence_rows_never_have_exactly_one_hidden_class(engagement) -> None:
    partitions = FIGURES["cadence"].spec.partitions
    checked = 0
    for by in ("all", "neighbourhood", "domain"):
        for r in engagement_figure(engagement, "cadence", K, by=by).rows:
            for total, cells in partitions:
                if r[total] is not None:  # a published total: one lonely gap would leak
                    assert sum(c in r[FLAG] for c in cells) != 1, (total, r)
                    checked += 1
    assert checked > 100


def test_neighbourhood_columns_never_have_exactly_one_hidden_cell(engagement) -> None:
    table = engagement_figure(engagement, "cadence", K, by="neighbourhood")
    rows = pd.DataFrame(table.rows)
    for _, week in rows.groupby("week"):
        for c in [*CADENCES, "known"]:
            assert week[c].isna().sum() != 1, (week["week"].iloc[0], c)


def test_shares_are_hidden_with_their_counts(engagement) -> None:
    for r in engagement_figure(engagement, "cadence", K, by="neighbourhood").rows:
        for c in CADENCES:
            assert (r[c] is None) == (r[f"share_{c}"] is None) or r["known"] == 0


def test_suppressing_an_empty_frame_is_harmless() -> None:
    out = suppress(pd.DataFrame({"n": []}), SuppressionSpec(counts=["n"]), K)
    assert out.empty and FLAG in out.columns
    assert np.isnan(np.nan)  # sanity of the numeric path used above
