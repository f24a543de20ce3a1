"""Ranking metrics against hand-computed values and against the independent official scorer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bouquet.pipelines.evaluate import matrix_scorer, ranking_metrics, top_k

BUNDLE_EVAL = Path(__file__).resolve().parents[3] / "shared" / "tools" / "bundle_eval.py"


def test_metrics_match_hand_computed_values() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.1, 0.2, 0.3, 0.4, 0.5],
                       [0.5, 0.5, 0.5, 0.5, 0.5]])
    truth = sp.csr_matrix(np.array([[0, 1, 0, 1, 0],
                                    [1, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 0]], dtype=float))
    mask = sp.csr_matrix(np.array([[1, 0, 0, 0, 0],
                                   [0, 0, 0, 0, 0],
                                   [0, 0, 0, 0, 0]], dtype=float))
    got = ranking_metrics(matrix_scorer(scores), truth, mask, ks=(2, 3))
    # user 0 ranks 1,2,3,4 (item 0 masked): hits at ranks 1 and 3; user 1 ranks 4,3,2: none;
    # user 2 has no positive and is not averaged.
    ndcg2_u0 = 1 / (1 + 1 / math.log2(3))
    ndcg3_u0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    expected = {
        "recall_at_2": 0.5 / 2, "recall_at_3": 1.0 / 2,
        "precision_at_2": 0.5 / 2, "precision_at_3": (2 / 3) / 2,
        "ndcg_at_2": ndcg2_u0 / 2, "ndcg_at_3": ndcg3_u0 / 2,
        "map_at_2": (1.0 / 2) / 2, "map_at_3": ((1 + 2 / 3) / 2) / 2,
        "coverage_at_2": 4 / 5, "coverage_at_3": 4 / 5, "users": 2.0,
    }
    assert got == pytest.approx(expected)


def test_recall_divides_by_all_positives_and_ndcg_by_min_n_k() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 0.0]])
    truth = sp.csr_matrix(np.array([[1, 0, 1, 1]], dtype=float))
    got = ranking_metrics(matrix_scorer(scores), truth, None, ks=(1,))
    assert got["recall_at_1"] == pytest.approx(1 / 3)  # not hits / min(n, K)
    assert got["ndcg_at_1"] == pytest.approx(1.0)  # ideal DCG over min(3, 1) positives
    assert got["map_at_1"] == pytest.approx(1.0)


def test_masked_items_are_never_hits_even_when_fewer_than_k_remain() -> None:
    scores = np.array([[0.3, 0.2, 0.1]])
    truth = sp.csr_matrix(np.array([[1, 0, 1]], dtype=float))
    mask = sp.csr_matrix(np.array([[1, 1, 0]], dtype=float))
    got = ranking_metrics(matrix_scorer(scores), truth, mask, ks=(3,))
    assert got["recall_at_3"] == pytest.approx(0.5)
    assert got["coverage_at_3"] == pytest.approx(1 / 3)


def test_top_k_breaks_ties_by_item_index() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 0.5, 2.0]])
    assert top_k(scores.copy(), 3).tolist() == [[1, 2, 4]]
    assert top_k(scores.copy(), 10).tolist() == [[1, 2, 4, 0, 3]]


def test_batches_do_not_change_results() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random((500, 30))
    truth = sp.csr_matrix((rng.random((500, 30)) < 0.1).astype(float))
    one = ranking_metrics(matrix_scorer(scores), truth, ks=(5,), batch_size=10_000)
    many = ranking_metrics(matrix_scorer(scores), truth, ks=(5,), batch_size=7)
    assert one == pytest.approx(many)


@pytest.mark.skipif(not BUNDLE_EVAL.exists(), reason="../shared/tools/bundle_eval.py not found")
def test_agrees_with_the_official_independent_scorer(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    users, bundles = 120, 90
    train = sp.csr_matrix((rng.random((users, bundles)) < 0.08).astype(float))
    test = sp.csr_matrix((rng.random((users, bundles)) < 0.05).astype(float))
    test = sp.csr_matrix(test - test.multiply(train))
    test.eliminate_zeros()
    scores = rng.random((users, bundles))
    (tmp_path / "Toy_data_size.txt").write_text(f"{users} {bundles} 1\n")
    for name, matrix in (("train", train), ("test", test)):
        coo = matrix.tocoo()
        lines = "".join(f"{u}\t{b}\n" for u, b in zip(coo.row, coo.col, strict=True))
        (tmp_path / f"user_bundle_{name}.txt").write_text(lines)
    ranked = top_k(scores.copy(), 40, train)
    evaluated = np.flatnonzero(np.diff(test.indptr))
    (tmp_path / "topk.txt").write_text("".join(
        f"{u}\t{','.join(map(str, ranked[u]))}\n" for u in evaluated))
    out = subprocess.run([sys.executable, str(BUNDLE_EVAL), "--data", str(tmp_path),
                          "--topk", str(tmp_path / "topk.txt")],
                         capture_output=True, text=True, check=True)
    official = json.loads(out.stdout)
    ours = ranking_metrics(matrix_scorer(scores), test, train, ks=(20, 40))
    for k in (20, 40):
        assert ours[f"recall_at_{k}"] == pytest.approx(official[f"recall@{k}"], abs=1e-6)
        assert ours[f"ndcg_at_{k}"] == pytest.approx(official[f"ndcg@{k}"], abs=1e-6)
    assert ours["users"] == official["users"]
