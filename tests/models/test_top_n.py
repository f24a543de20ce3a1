"""The one ranking routine every model's ``recommend`` uses."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.models.base import check_csr, top_n


def test_ties_are_broken_by_ascending_id() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.5, 3.0, 2.0]])
    ids, vals = top_n(scores, 4)
    assert ids.tolist() == [[1, 2, 4, 5]]
    assert vals.tolist() == [[3.0, 3.0, 3.0, 2.0]]


def test_ties_straddling_the_cut_keep_the_smallest_ids() -> None:
    scores = np.array([[5.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    ids, _ = top_n(scores, 3)
    assert ids.tolist() == [[0, 1, 2]]


def test_matches_a_full_stable_sort_on_random_rows() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(50, 30)).astype(float)  # many ties
    ids, vals = top_n(scores, 7)
    for r in range(50):
        expected = sorted(range(30), key=lambda j: (-scores[r, j], j))[:7]
        assert ids[r].tolist() == expected
        assert vals[r].tolist() == scores[r, expected].tolist()


def test_minus_infinity_is_reported_as_missing() -> None:
    scores = np.array([[-np.inf, 2.0, -np.inf, 1.0]])
    ids, vals = top_n(scores, 4)
    assert ids.tolist() == [[1, 3, -1, -1]]
    assert np.isneginf(vals[0, 2:]).all()


@pytest.mark.parametrize("n", [0, 4, 10])
def test_n_is_capped_at_the_number_of_items(n: int) -> None:
    ids, vals = top_n(np.arange(4.0)[None, :], n)
    assert ids.shape == vals.shape == (1, min(n, 4))


def test_check_csr_refuses_dense_input() -> None:
    with pytest.raises(TypeError, match="scipy.sparse"):
        check_csr(np.eye(3))
