"""The bundle benchmark's figures must be what the independent scorer computes.

``/work/shared/tools/bundle_eval.py`` (standard library only) re-reads the data and the
top-40 lists we write; any difference means our protocol implementation is wrong.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bouquet.benchmarks.bundles import load_bundle_data, metrics_from_lists, run_bundles

SCORER = Path(__file__).resolve().parents[3] / "shared" / "tools" / "bundle_eval.py"
CONTRACT = (
    "test_recall@20",
    "test_ndcg@20",
    "test_recall@40",
    "test_ndcg@40",
    "tune_recall@20",
    "train_s",
    "peak_rss_mb",
)


def independent_score(data_dir: Path, topk: Path, split: str = "test") -> dict:
    if not SCORER.exists():
        pytest.skip(f"independent scorer not found at {SCORER}")
    out = subprocess.run(
        [
            sys.executable,
            str(SCORER),
            "--data",
            str(data_dir),
            "--topk",
            str(topk),
            "--split",
            split,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def assert_agrees(result: dict, scored: dict) -> None:
    fig = {k: v["value"] for k, v in result["figures"].items()}
    for k in (20, 40):
        for m in ("recall", "ndcg"):
            # the scorer rounds to 6 decimals
            assert fig[f"test_{m}@{k}"] == pytest.approx(scored[f"{m}@{k}"], abs=1e-6)
    assert fig["test_users"] == scored["users"]


def synthetic_dir(root: Path, with_side: bool, seed: int = 0) -> Path:
    """A tiny BGCN-layout dataset: 60 users, 90 bundles, 50 items."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_u, n_b, n_i = 60, 90, 50
    pairs = {
        (u, b)
        for u in range(n_u)
        for b in rng.choice(n_b, 8, replace=False)
        if (b % 3) == (u % 3) or rng.random() < 0.3
    }
    pairs = sorted(pairs)
    rng.shuffle(pairs)
    cut1, cut2 = int(0.6 * len(pairs)), int(0.75 * len(pairs))
    for name, part in (("train", pairs[:cut1]), ("tune", pairs[cut1:cut2]), ("test", pairs[cut2:])):
        (root / f"user_bundle_{name}.txt").write_text("".join(f"{u}\t{b}\n" for u, b in part))
    (root / "Tiny_data_size.txt").write_text(f"{n_u}\t{n_b}\t{n_i}\n")
    if with_side:
        ui = {(u, i) for u in range(n_u) for i in rng.choice(n_i, 6, replace=False)}
        bi = {(b, i) for b in range(n_b) for i in rng.choice(n_i, 4, replace=False)}
        (root / "user_item.txt").write_text("".join(f"{u}\t{i}\n" for u, i in sorted(ui)))
        (root / "bundle_item.txt").write_text("".join(f"{b}\t{i}\n" for b, i in sorted(bi)))
    return root


def test_metrics_follow_the_official_definitions() -> None:
    """Recall divides by |positives| (not min(K, n)); IDCG is over min(|positives|, K)."""
    import scipy.sparse as sp

    top = np.array([list(range(40)), list(range(100, 140))])
    truth = sp.csr_matrix((np.ones(4), ([0, 0, 0, 1], [1, 25, 300, 139])), shape=(2, 400))
    got = metrics_from_lists(top, np.array([0, 1]), truth)
    disc = lambda r: 1 / math.log2(r + 2)  # noqa: E731 - rank r is 0-based
    r20 = ((1 / 3) + 0.0) / 2
    n20 = (disc(1) / (disc(0) + disc(1) + disc(2)) + 0.0) / 2
    r40 = ((2 / 3) + 1.0) / 2
    n40 = ((disc(1) + disc(25)) / (disc(0) + disc(1) + disc(2)) + disc(39) / disc(0)) / 2
    assert got["recall@20"] == pytest.approx(r20)
    assert got["ndcg@20"] == pytest.approx(n20)
    assert got["recall@40"] == pytest.approx(r40)
    assert got["ndcg@40"] == pytest.approx(n40)


@pytest.mark.parametrize("with_side", [True, False], ids=["with-side-data", "bundles-only"])
def test_synthetic_run_agrees_with_the_independent_scorer(tmp_path: Path, with_side: bool) -> None:
    data = synthetic_dir(tmp_path / "data", with_side)
    topk = tmp_path / "topk.txt"
    result = run_bundles(data, topk_out=topk, quick=True, progress=False)
    assert set(CONTRACT) <= set(result["figures"])
    assert result["params"]["side_data"] is with_side
    assert_agrees(result, independent_score(data, topk))
    lines = topk.read_text().splitlines()
    assert len(lines) == result["figures"]["test_users"]["value"]


def test_loader_infers_sizes_without_the_size_file(tmp_path: Path) -> None:
    data = synthetic_dir(tmp_path / "data", with_side=True)
    (data / "Tiny_data_size.txt").unlink()
    loaded = load_bundle_data(data)
    assert loaded.user_items is not None and loaded.bundle_items is not None
    assert loaded.train.shape[1] <= 90 and loaded.user_items.shape[1] <= 50


@pytest.mark.slow
def test_youshu_quick_run_agrees_with_the_independent_scorer(
    tmp_path: Path, shared_data: Path
) -> None:
    youshu = shared_data / "youshu"
    topk = tmp_path / "topk.txt"
    result = run_bundles(youshu, topk_out=topk, quick=True, progress=False)
    scored = independent_score(youshu, topk)
    assert scored["users"] == 2959
    assert_agrees(result, scored)
    # sanity, not a target: far above the popularity baseline measured in the same run
    fig = {k: v["value"] for k, v in result["figures"].items()}
    assert fig["test_recall@20"] > fig["test_recall@20_popularity"] + 0.03


def test_youshu_runs_without_item_files(tmp_path: Path, shared_data: Path) -> None:
    """user_item.txt / bundle_item.txt absent: the user-bundle signal alone, same protocol."""
    src = shared_data / "youshu"
    data = tmp_path / "youshu-bundles-only"
    data.mkdir()
    for name in (
        "Youshu_data_size.txt",
        "user_bundle_train.txt",
        "user_bundle_tune.txt",
        "user_bundle_test.txt",
    ):
        (data / name).symlink_to(src / name)
    topk = tmp_path / "topk.txt"
    result = run_bundles(data, topk_out=topk, quick=True, progress=False)
    assert result["params"]["side_data"] is False
    assert_agrees(result, independent_score(data, topk))
