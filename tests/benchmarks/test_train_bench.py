"""``bouquet bench train``: which models a run fits, and one small run end to end."""

from __future__ import annotations

import pytest

from bouquet.benchmarks.train import run_benchmark, split_kinds
from bouquet.pipelines.candidates import DEPLOYABLE_KINDS

#: The first release's single list of "baselines", deployable models among them.
FIRST_RELEASE = ("popularity", "popularity_neighbourhood", "ease", "itemknn", "bpr",
                 "crossview")


def test_the_first_release_list_fits_every_candidate_and_bpr() -> None:
    assert split_kinds(None, FIRST_RELEASE) == (DEPLOYABLE_KINDS, ("bpr",))
    assert split_kinds(None, ()) == (DEPLOYABLE_KINDS, ())
    assert split_kinds(("als",), ("crossview", "bpr")) == (("als", "crossview"), ("bpr",))
    with pytest.raises(ValueError, match="unknown models"):
        split_kinds(None, ("svd",))


def test_a_small_city_runs_every_stage_of_the_current_pipeline() -> None:
    result = run_benchmark(residents=1000, weeks=10, baselines=FIRST_RELEASE)
    figures = {name: fig["value"] for name, fig in result.figures.items()}
    assert result.params["candidates"] == list(DEPLOYABLE_KINDS)
    assert result.params["baselines"] == ["popularity", "popularity_neighbourhood",
                                          "popularity_segment", "bpr"]
    stages = [f"{name}_s" for name in ("read", "split", "refit", "log", "register")] + [
        f"fit_{kind}_s" for kind in (*DEPLOYABLE_KINDS, "popularity", "popularity_segment",
                                     "bpr")]
    assert all(figures[name] is not None for name in stages)
    assert figures["total_s"] == pytest.approx(sum(
        value for name, value in figures.items()
        if name.endswith("_s") and name not in ("total_s", "generate_s")), rel=1e-9)
    assert figures["peak_rss_mb"] >= max(v for n, v in figures.items()
                                         if n.endswith("_peak_rss_mb"))
    assert figures["events"] > 0 and result.params["chosen"] in DEPLOYABLE_KINDS
