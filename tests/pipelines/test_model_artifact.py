"""The deployable artifact: round trip, loading without training code, fold-in, reasons."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.models.artifact import (
    Artifact,
    ArtifactError,
    confidence,
    load_artifact,
)

CATALOG = load_catalog()
F = 6


def make_artifact(seed: int = 0, residents: int = 40) -> Artifact:
    rng = np.random.default_rng(seed)
    n_s, n_b, n_nb = len(CATALOG.service_ids), len(CATALOG.bundle_ids), len(
        CATALOG.neighbourhood_ids)
    return Artifact.build(
        resident_ids=[f"r{i:04d}" for i in range(residents)],
        resident_factors=rng.normal(size=(residents, F)),
        service_factors=rng.normal(size=(n_s, F)),
        bundle_cf_factors=rng.normal(size=(n_b, F)),
        service_ids=CATALOG.service_ids, bundle_ids=CATALOG.bundle_ids,
        bundle_services={b.id: b.services for b in CATALOG.bundles},
        neighbourhoods=CATALOG.neighbourhood_ids,
        popular_services=rng.random((1 + n_nb, n_s)), popular_bundles=rng.random((1 + n_nb, n_b)),
        resident_neighbourhood=rng.integers(-1, n_nb, residents).astype(np.int16),
        cf_weight=0.7, affinity_weight=0.3, regularization=0.05, alpha=2.0,
        dataset_params={"event_weights": {"use": 3.0, "subscribe": 8.0, "view": 0.0},
                        "half_life_days": 30.0, "log_alpha": 2.0, "spread_bundle_events": True},
        model_kind="test", model_params={"factors": F},
        extra_meta={"catalog_fingerprint": CATALOG.fingerprint})


def test_round_trip_scores_identical(tmp_path: Path) -> None:
    artifact = make_artifact()
    artifact.save(tmp_path / "model")
    loaded = load_artifact(tmp_path / "model")
    users = artifact.resident_factors
    np.testing.assert_array_equal(artifact.score_bundles(users), loaded.score_bundles(users))
    np.testing.assert_array_equal(artifact.score_services(users), loaded.score_services(users))
    np.testing.assert_array_equal(artifact.bundle_reasons(users), loaded.bundle_reasons(users))
    assert loaded.resident_ids.tolist() == artifact.resident_ids.tolist()
    assert loaded.bundle_services == {b.id: b.services for b in CATALOG.bundles}
    assert loaded.meta["catalog_fingerprint"] == CATALOG.fingerprint
    assert loaded.popular["b"]["_all"].shape == (len(CATALOG.bundle_ids),)
    # the scoring vectors are exactly the documented formula
    index = {s: i for i, s in enumerate(CATALOG.service_ids)}
    b0 = CATALOG.bundles[0]
    mean = artifact.service_factors[[index[s] for s in b0.services]].mean(axis=0)
    np.testing.assert_allclose(loaded.bundle_factors[0],
                               0.7 * artifact.bundle_cf_factors[0] + 0.3 * mean, rtol=1e-6)


def test_files_hold_no_pickle(tmp_path: Path) -> None:
    make_artifact().save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["arrays.npz", "meta.json"]
    json.loads((tmp_path / "model" / "meta.json").read_text())
    with zipfile.ZipFile(tmp_path / "model" / "arrays.npz") as npz:
        for name in npz.namelist():
            header = npz.read(name)[:128]
            assert b"'descr': '|O'" not in header  # no object arrays (which need pickle)
    with np.load(tmp_path / "model" / "arrays.npz", allow_pickle=False) as arrays:
        assert arrays["resident_ids"].dtype.kind == "U"


def test_loads_and_scores_in_a_process_without_training_code(tmp_path: Path) -> None:
    artifact = make_artifact(seed=3)
    artifact.save(tmp_path / "model")
    expected = artifact.score_bundles(artifact.resident_factors[:5])
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import sys
for banned in ("implicit", "sklearn", "mlflow", "bouquet.pipelines", "bouquet.models.als"):
    sys.modules[banned] = None  # importing any of them now fails
import numpy as np
from bouquet.models.artifact import load_artifact
a = load_artifact({str(tmp_path / "model")!r})
got = a.score_bundles(a.resident_factors[:5])
assert np.array_equal(got, np.load({str(tmp_path / "expected.npy")!r}))
user = a.fold_in(a.strengths([{{"type": "use", "service_id": a.service_ids[0], "ts": 0}}], now=0))
print(a.recommend_bundles(user, k=2)[0].item_id)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in CATALOG.bundle_ids


def test_fold_in_solves_the_als_normal_equations() -> None:
    artifact = make_artifact()
    strengths = {2: 3.0, 5: 0.5}
    user = artifact.fold_in(strengths)
    y = artifact.service_factors.astype(np.float64)
    c = np.zeros(len(y))
    for i, s in strengths.items():
        c[i] = 2.0 * confidence(s, 2.0)
    p = (c > 0).astype(float)
    cu = np.where(c > 0, c, 1.0)  # unobserved pairs: confidence 1, preference 0
    a = (y.T * cu) @ y + 0.05 * np.eye(F)
    expected = np.linalg.solve(a, (y.T * cu) @ p)
    np.testing.assert_allclose(user, expected, rtol=1e-4, atol=1e-5)
    assert artifact.fold_in({}) is None
    assert artifact.fold_in({"no-such-service": 1.0}) is None


def test_strengths_follow_the_training_rule() -> None:
    artifact = make_artifact()
    s = {i: s for i, s in enumerate(CATALOG.service_ids)}
    bundle = CATALOG.bundles[0]
    got = artifact.strengths([
        {"type": "use", "service_id": s[0], "ts": 86_400 * 70},  # 30 days old
        {"type": "view", "service_id": s[1], "ts": 86_400 * 100},  # weight 0
        {"type": "subscribe", "bundle_id": bundle.id, "ts": 86_400 * 100},
    ], now=86_400 * 100)
    share = 8.0 / len(bundle.services)
    expected = {CATALOG.service_ids.index(m): share for m in bundle.services}
    expected[0] = expected.get(0, 0.0) + 3.0 * 0.5
    assert got == pytest.approx(expected)


def test_recommend_excludes_holdings_and_gives_reasons() -> None:
    artifact = make_artifact()
    user = artifact.resident_factors[0]
    full = artifact.recommend_bundles(user, k=len(CATALOG.bundle_ids))
    assert [r.score for r in full] == sorted((r.score for r in full), reverse=True)
    held = full[0].item_id
    top = artifact.recommend_bundles(user, k=3, exclude=[held])
    assert held not in [r.item_id for r in top] and len(top) == 3
    for rec in top:
        members = CATALOG.bundle_by_id[rec.item_id].services
        assert rec.reason_service in members
        affinity = {m: float(artifact.score_services(user)[CATALOG.service_ids.index(m)])
                    for m in members}
        assert rec.reason_service == max(affinity, key=affinity.get)
    cold = artifact.recommend_bundles(None, k=2, neighbourhood=CATALOG.neighbourhood_ids[1])
    row = artifact.popular_bundles[2]
    assert [r.item_id for r in cold] == [CATALOG.bundle_ids[i] for i in np.argsort(-row)[:2]]


def test_publish_adapter_reads_the_artifact(tmp_path: Path) -> None:
    publish = pytest.importorskip("bouquet.pipelines.publish")
    artifact = make_artifact()
    artifact.save(tmp_path / "model")
    model = publish.adapt_artifact(load_artifact(tmp_path / "model"))
    chunk = model.score_chunk(0, 5, 3)
    expected = np.argsort(-artifact.score_bundles(artifact.resident_factors[:5]), axis=1)[:, :3]
    np.testing.assert_array_equal(chunk.bundle_items, expected)
    assert model.log_alpha == 2.0 and model.half_life_days == 30.0 and model.alpha == 2.0


def test_refuses_what_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a Bouquet model artifact"):
        load_artifact(tmp_path)
    make_artifact().save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="newer"):
        load_artifact(tmp_path / "m")
