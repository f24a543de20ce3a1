"""The deployable-model contract: files, blobs, loading without training code, the serving
view, erasure of rows, and both families' fold-in."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from bouquet.core.catalog import load_catalog
from bouquet.core.settings import DEFAULT_EVENT_WEIGHTS
from bouquet.models.confidence import ConfidenceRule, Strengths
from bouquet.models.deployable import (
    ArtifactError,
    DeployableModel,
    from_blob,
    load_model_dir,
)
from bouquet.models.factor import FactorModel
from bouquet.models.linear import LinearModel, LinearTerm, TermGroup, top_k_per_column

CATALOG = load_catalog()
F = 6
RULE = ConfidenceRule(dict(DEFAULT_EVENT_WEIGHTS), half_life_days=30.0, log_alpha=2.0)


def _common(rng: np.random.Generator, residents: int) -> dict:
    n_s, n_b = len(CATALOG.service_ids), len(CATALOG.bundle_ids)
    n_nb = len(CATALOG.neighbourhood_ids)
    return {"service_ids": list(CATALOG.service_ids), "bundle_ids": list(CATALOG.bundle_ids),
            "bundle_services": {b.id: list(b.services) for b in CATALOG.bundles},
            "neighbourhoods": list(CATALOG.neighbourhood_ids), "rule": RULE,
            "popular_services": rng.random((1 + n_nb, n_s)),
            "popular_bundles": rng.random((1 + n_nb, n_b)),
            "resident_ids": np.array([f"r{i:04d}" for i in range(residents)]),
            "resident_neighbourhood": rng.integers(-1, n_nb, residents).astype(np.int16),
            "meta": {"model_kind": "test", "catalog_fingerprint": CATALOG.fingerprint}}


def factor_model(seed: int = 0, residents: int = 40) -> FactorModel:
    rng = np.random.default_rng(seed)
    n_s, n_b = len(CATALOG.service_ids), len(CATALOG.bundle_ids)
    return FactorModel(**_common(rng, residents), service_factors=rng.normal(size=(n_s, F)),
                       bundle_factors=rng.normal(size=(n_b, F)),
                       resident_factors=rng.normal(size=(residents, F)), regularization=0.05,
                       alpha=2.0)


def linear_model(seed: int = 0, residents: int = 40) -> LinearModel:
    rng = np.random.default_rng(seed)
    n_s, n_b = len(CATALOG.service_ids), len(CATALOG.bundle_ids)

    def weights(rows: int, cols: int) -> sp.csr_matrix:
        return sp.random(rows, cols, density=0.3, random_state=rng, format="csr",
                         dtype=np.float32)

    terms = [LinearTerm("b", "b", weights(n_b, n_b), True, 0),
             LinearTerm("s", "b", weights(n_s, n_b), True, 0),
             LinearTerm("s", "b", weights(n_s, n_b), False, 1),
             LinearTerm("s", "s", weights(n_s, n_s), False, 0)]
    groups = [TermGroup("b", 0, 1.0, True), TermGroup("b", 1, 0.2, True), TermGroup("s", 0)]
    history = sp.random(residents, n_s, density=0.1, random_state=rng, format="csr") * 3 + 0
    held = sp.random(residents, n_b, density=0.1, random_state=rng, format="csr")
    return LinearModel(**_common(rng, residents), terms=terms, groups=groups,
                       resident_services=history, resident_bundles=held)


FAMILIES = {"factor": factor_model, "linear": linear_model}


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_scores_identical(tmp_path: Path, family: str) -> None:
    model = FAMILIES[family]()
    model.save(tmp_path / "model")
    loaded = load_model_dir(tmp_path / "model")
    assert type(loaded) is type(model) and loaded.family == family
    rows = np.arange(10)
    for kind in ("b", "s"):
        np.testing.assert_array_equal(model.score(rows, kind), loaded.score(rows, kind))
    assert loaded.resident_ids.tolist() == model.resident_ids.tolist()
    assert loaded.bundle_services == {b.id: list(b.services) for b in CATALOG.bundles}
    assert loaded.meta["catalog_fingerprint"] == CATALOG.fingerprint
    assert loaded.rule == RULE
    assert loaded.popular_scores("b")["_all"].shape == (len(CATALOG.bundle_ids),)


@pytest.mark.parametrize("family", FAMILIES)
def test_files_hold_no_pickle(tmp_path: Path, family: str) -> None:
    FAMILIES[family]().save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["arrays.npz", "meta.json"]
    json.loads((tmp_path / "model" / "meta.json").read_text())
    with zipfile.ZipFile(tmp_path / "model" / "arrays.npz") as npz:
        for name in npz.namelist():
            assert b"'descr': '|O'" not in npz.read(name)[:128]  # object arrays need pickle


@pytest.mark.parametrize("family", FAMILIES)
def test_the_serving_view_holds_no_resident_and_folds_in_alike(family: str) -> None:
    model = FAMILIES[family]()
    view = from_blob(model.serving_view().to_blob())
    assert view.n_residents == 0 and view.family == family
    for name in type(model).resident_arrays:
        assert getattr(view, name).shape[0] == 0
    events = [_Event("use", CATALOG.service_ids[3], None, 99.0),
              _Event("subscribe", None, CATALOG.bundle_ids[2], 50.0)]
    for kind in ("b", "s"):
        np.testing.assert_allclose(view.recent_scores(view.strengths(events, 100.0), kind),
                                   model.recent_scores(model.strengths(events, 100.0), kind))
    assert model.recent_scores(Strengths({}, {}), "b") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_rows_leaves_the_others_scores(family: str) -> None:
    model = FAMILIES[family]()
    keep = np.ones(model.n_residents, dtype=bool)
    keep[[0, 5]] = False
    smaller = model.without_residents(keep)
    assert "r0000" not in smaller.resident_ids and smaller.n_residents == model.n_residents - 2
    np.testing.assert_array_equal(smaller.score(np.arange(3), "b"),
                                  model.score(np.flatnonzero(keep)[:3], "b"))


def test_linear_scores_are_the_documented_sum_of_products() -> None:
    model = linear_model()
    rows = np.arange(6)
    x = model.resident_bundles[rows]
    u = model.resident_services[rows]
    binary = lambda m: (m != 0).astype(np.float32)  # noqa: E731

    def z(a: np.ndarray) -> np.ndarray:
        sd = a.std(axis=1, keepdims=True)
        return np.divide(a - a.mean(axis=1, keepdims=True), sd, out=np.zeros_like(a),
                         where=sd > 0)

    t = model.terms
    expected = z((binary(x) @ t[0].weights + binary(u) @ t[1].weights).toarray()) \
        + 0.2 * z((u @ t[2].weights).toarray())
    np.testing.assert_allclose(model.score(rows, "b"), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(rows, "s"), (u @ t[3].weights).toarray(), rtol=1e-5)


def test_top_k_per_column_keeps_the_largest_magnitudes() -> None:
    dense = np.array([[0.1, -5.0], [3.0, 0.2], [-2.0, 0.3], [0.5, 0.0]], np.float32)
    kept = top_k_per_column(dense, 2).toarray()
    np.testing.assert_array_equal(kept, np.array([[0, -5.0], [3.0, 0], [-2.0, 0.3], [0, 0]],
                                                 np.float32))


def test_a_first_release_artifact_still_loads(tmp_path: Path) -> None:
    """The format-1 directory (factor models only, ``dataset_params``, a stored Gram
    matrix) written by the first release is read as a factor model."""
    model = factor_model(seed=4)
    directory = tmp_path / "v1"
    directory.mkdir()
    y = model.service_factors.astype(np.float64)
    arrays = {"resident_ids": model.resident_ids, "resident_factors": model.resident_factors,
              "resident_neighbourhood": model.resident_neighbourhood,
              "service_factors": model.service_factors, "bundle_factors": model.bundle_factors,
              "bundle_cf_factors": np.zeros_like(model.bundle_factors),
              "gram": (y.T @ y).astype(np.float32), "popular_services": model.popular_services,
              "popular_bundles": model.popular_bundles}
    np.savez_compressed(directory / "arrays.npz", **arrays)
    meta = {"format": "bouquet-model-artifact", "format_version": 1, "model_kind": "als",
            "model_params": {"factors": F}, "dataset_params": RULE.to_dict(),
            "regularization": 0.05, "alpha": 2.0, "factors": F,
            "service_ids": model.service_ids, "bundle_ids": model.bundle_ids,
            "neighbourhoods": model.neighbourhoods, "bundle_services": model.bundle_services,
            "bundle_scoring": {"cf_weight": 1.0}, "created_at": "2026-11-27T10:00:00+00:00"}
    (directory / "meta.json").write_text(json.dumps(meta))
    loaded = load_model_dir(directory)
    assert isinstance(loaded, FactorModel) and loaded.rule == RULE and loaded.alpha == 2.0
    np.testing.assert_array_equal(loaded.score(np.arange(5), "b"),
                                  model.score(np.arange(5), "b"))


def test_loads_and_scores_in_a_process_without_training_code(tmp_path: Path) -> None:
    model = linear_model(seed=3)
    model.save(tmp_path / "model")
    np.save(tmp_path / "expected.npy", model.score(np.arange(5), "b"))
    script = f"""
import sys
for banned in ("implicit", "sklearn", "mlflow", "bouquet.pipelines", "bouquet.models.als"):
    sys.modules[banned] = None  # importing any of them now fails
import numpy as np
from bouquet.models.deployable import load_model_dir
m = load_model_dir({str(tmp_path / "model")!r})
assert np.array_equal(m.score(np.arange(5), "b"), np.load({str(tmp_path / "expected.npy")!r}))
print(m.family)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "linear"


def test_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a Bouquet model artifact"):
        load_model_dir(tmp_path)
    factor_model().save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer"):
        load_model_dir(tmp_path / "m")
    with pytest.raises(ArtifactError, match="shape"):
        FactorModel(**{**_common(np.random.default_rng(0), 3)},
                    service_factors=np.zeros((2, F)), bundle_factors=np.zeros((2, F)))
    assert issubclass(FactorModel, DeployableModel)


class _Event:
    def __init__(self, type: str, service_id: str | None, bundle_id: str | None,
                 ts: float | None) -> None:
        self.type, self.service_id, self.bundle_id, self.ts = type, service_id, bundle_id, ts


def _recent_strengths(model: DeployableModel) -> Strengths:
    events = [_Event("use", CATALOG.service_ids[3], None, 99.0),
              _Event("click", CATALOG.service_ids[7], None, 98.0),
              _Event("subscribe", None, CATALOG.bundle_ids[2], 50.0)]
    return model.strengths(events, 100.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_recent_contributions_of_many_items_equal_one_item_at_a_time(family: str) -> None:
    model = FAMILIES[family]()
    strengths = _recent_strengths(model)
    for kind in ("b", "s"):
        items = [0, 5, 2, len(model.item_ids(kind)) - 1]
        together = model.recent_contributions(strengths, kind, items)
        assert together.values.shape == (len(together.sources), len(items))
        assert together.sources and np.abs(together.values).sum() > 0
        for j, item in enumerate(items):
            alone = model.recent_contributions(strengths, kind, [item])
            assert alone.sources == together.sources
            np.testing.assert_allclose(alone.values[:, 0], together.values[:, j])
    assert model.recent_contributions(Strengths({}, {}), "b", [0, 1]).values.shape[0] == 0


def test_factor_contributions_add_up_to_the_recent_score() -> None:
    """The fold-in's exact decomposition: what each recent item adds sums to the score."""
    model = factor_model()
    strengths = _recent_strengths(model)
    for kind in ("b", "s"):
        items = list(range(len(model.item_ids(kind))))
        found = model.recent_contributions(strengths, kind, items)
        np.testing.assert_allclose(found.values.sum(axis=0),
                                   model.recent_scores(strengths, kind), rtol=1e-9)
