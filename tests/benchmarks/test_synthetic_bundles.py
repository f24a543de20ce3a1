"""``bench bundles --synthetic``: a dataset of a given shape, laid out like Youshu, on which the
benchmark runs exactly as on the public data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bouquet.benchmarks.synthetic_bundles as synthetic
from bouquet.benchmarks.bundles import evaluate, load_bundle_data, run_bundles
from bouquet.benchmarks.synthetic_bundles import SyntheticShape, write_synthetic
from bouquet.models import EASERecommender, PopularityRecommender
from tests.benchmarks.test_bundles_scorer import CONTRACT, assert_agrees, independent_score

SMALL = SyntheticShape.parse("400,600,6000")


def test_shape_parsing() -> None:
    assert SyntheticShape.parse("18528,22864,217864") == SyntheticShape(18528, 22864, 217864, 5716)
    assert SyntheticShape.parse("10,40,30,7").items == 7
    for bad in ("a,b,c", "1,2", "0,5,5", "1,2,3,4,5"):
        with pytest.raises(ValueError, match="USERS,BUNDLES,PAIRS"):
            SyntheticShape.parse(bad)
    with pytest.raises(ValueError, match="more than half"):
        SyntheticShape.parse("10,10,60")


def test_layout_and_counts(tmp_path: Path) -> None:
    root = write_synthetic(tmp_path / "d", SMALL)
    names = {p.name for p in root.iterdir()}
    assert names == {"user_bundle_train.txt", "user_bundle_tune.txt", "user_bundle_test.txt",
                     "user_item.txt", "bundle_item.txt", "Synthetic_data_size.txt"}
    data = load_bundle_data(root)
    assert (data.name, data.n_users, data.n_bundles, data.n_items) == ("Synthetic", 400, 600, 150)
    assert data.train.nnz == 6000  # exactly PAIRS training pairs
    total = data.train.nnz + data.tune.nnz + data.test.nnz
    assert total == int(np.ceil(6000 / 0.7))
    assert data.tune.nnz == pytest.approx(total * 0.1, abs=1)
    # the splits are disjoint: no held-out pair is also a training pair
    assert data.train.multiply(data.tune).nnz == data.train.multiply(data.test).nnz == 0
    assert data.tune.multiply(data.test).nnz == 0
    assert data.user_items.nnz == total
    assert np.diff(data.bundle_items.indptr).min() >= 1  # every bundle holds items


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", SMALL, seed=3)
    b = write_synthetic(tmp_path / "b", SMALL, seed=3)
    c = write_synthetic(tmp_path / "c", SMALL, seed=4)
    for name in ("user_bundle_train.txt", "user_item.txt", "bundle_item.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_popularity_is_heavy_tailed(tmp_path: Path) -> None:
    data = load_bundle_data(write_synthetic(tmp_path / "d", SMALL))
    counts = np.sort(np.asarray(data.train.sum(axis=0)).ravel())[::-1]
    top = counts[: len(counts) // 20].sum() / counts.sum()
    assert top > 0.2  # the top 5 % of bundles hold over four times their share


@pytest.mark.parametrize("planted", [True, False], ids=["planted-taste", "popularity-only"])
def test_models_differ_only_because_of_the_planted_taste(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """A collaborative model beats popularity by learning the planted topics; with every
    interaction drawn from popularity alone it cannot."""
    if not planted:
        monkeypatch.setattr(synthetic, "POPULARITY_SHARE", 1.0)
    data = load_bundle_data(write_synthetic(tmp_path / "d", SMALL))
    pop = evaluate(PopularityRecommender().fit(data.train), data, "tune")[0]["recall@20"]
    ease = evaluate(EASERecommender(l2=100.0).fit(data.train), data, "tune")[0]["recall@20"]
    if planted:
        assert ease > pop + 0.03
    else:
        assert ease < pop + 0.01


def test_a_synthetic_run_agrees_with_the_independent_scorer(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "d", SMALL)
    topk = tmp_path / "topk.txt"
    result = run_bundles(data, topk_out=topk, quick=True, progress=False)
    assert_agrees(result, independent_score(data, topk))


def test_cli_runs_the_whole_benchmark_on_a_synthetic_shape(tmp_path: Path) -> None:
    """End to end, tuning and every baseline included, through the command line."""
    from bouquet.cli import app

    out = tmp_path / "bundles.json"
    result = CliRunner().invoke(app, ["bench", "bundles", "--synthetic", "200,300,2500",
                                      "--seed", "1", "--no-progress", "--json", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    fig = {k: v["value"] for k, v in doc["figures"].items()}
    assert set(CONTRACT) <= set(fig)
    assert {"test_recall@20_als_untuned", "test_recall@20_crossview"} <= set(fig)
    params = doc["params"]
    assert params["synthetic"]["shape"] == "200,300,2500,75"
    assert params["synthetic"]["seed"] == 1
    assert params["users"] == 200 and params["bundles"] == 300 and params["side_data"] is True
    assert params["final_solver"]["solver"] in ("primal", "dual", "lowrank")
    assert params["final_solver"]["solver_estimate"]["peak_gb"] >= 0
    assert params["published"] == []  # Youshu's published rows do not apply


def test_cli_rejects_a_bad_shape() -> None:
    from bouquet.cli import app

    result = CliRunner().invoke(app, ["bench", "bundles", "--synthetic", "300,400",
                                      "--no-progress"])
    assert result.exit_code != 0
    assert "USERS,BUNDLES,PAIRS" in result.output
