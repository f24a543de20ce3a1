"""Bundle recommendation on Youshu (or any directory laid out the same way), official protocol.

Protocol (BGCN / CrossCBR, see ``../shared/data/README.md``): for every user with at least one
bundle in the evaluated split, rank **all** bundles, mask only that user's *training* bundles,
and average over users Recall@K = hits in the top K / number of the user's positives and
NDCG@K = DCG / ideal DCG over min(positives, K), for K = 20 and 40.

What we do (and only this):

* every model is trained on ``user_bundle_train`` (+ the unsplit ``user_item`` and
  ``bundle_item`` when present, which the protocol allows); ``tune`` and ``test`` pairs are
  never trained on;
* hyper-parameters are chosen by Recall@20 on ``tune`` (train masked), on small grids;
* the chosen configuration is refitted from scratch (that fit is ``train_s``), turned into
  the deployable :class:`~bouquet.models.linear.LinearModel` that ``bouquet train`` would
  register and publish — in its serving form, the ``k`` largest weights of each bundle
  column, ``k`` the smallest of :data:`SERVING_TOP_K` within 0.001 of the dense model's tune
  Recall@20 — saved, loaded back, and scored on ``test``: the headline is that model's, and
  the fitted dense model's figures are reported beside it (``*_dense``). The same top-40
  lists are written with ``--topk-out`` so the independent scorer
  (``/work/shared/tools/bundle_eval.py``) can recompute every headline figure.

Run: ``bouquet bench bundles --data DIR [--topk-out FILE] [--json FILE] [--quick]``, or
``--synthetic USERS,BUNDLES,PAIRS`` instead of ``--data`` for a generated dataset of that shape
(:mod:`bouquet.benchmarks.synthetic_bundles`), on which everything runs the same way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.benchmarks.harness import BenchResult, peak_rss_mb, print_result, write_json
from bouquet.benchmarks.synthetic_bundles import SyntheticShape, write_synthetic
from bouquet.core.settings import Settings
from bouquet.models.als import ALSRecommender
from bouquet.models.base import Recommender, top_n
from bouquet.models.bpr import BPRRecommender
from bouquet.models.bundles import BundleScorer
from bouquet.models.deployable import load_model_dir
from bouquet.models.ease import CrossViewEASE, EASERecommender
from bouquet.models.knn import ItemKNNRecommender
from bouquet.models.linear import LinearModel
from bouquet.models.popularity import PopularityRecommender

log = logging.getLogger(__name__)

KS = (20, 40)
TOP = max(KS)

#: Published Youshu test results (Recall@20 / NDCG@20) as tabulated in later papers (copied
#: from ../shared/data/README.md, which gives venues only for BGCN and CrossCBR).
PUBLISHED: list[dict[str, Any]] = [
    {"method": "BGCN", "venue": "SIGIR 2020", "recall@20": 0.2436, "ndcg@20": 0.1329},
    {"method": "MIDGN", "venue": None, "recall@20": 0.2682, "ndcg@20": 0.1527},
    {"method": "CrossCBR", "venue": "KDD 2022", "recall@20": 0.2823, "ndcg@20": 0.1670},
    {"method": "MultiCBR", "venue": None, "recall@20": 0.2847, "ndcg@20": 0.1681},
    {"method": "BundleGT", "venue": None, "recall@20": 0.2905, "ndcg@20": 0.1737},
]

#: The configuration selected on ``tune`` by the full run (``docs/benchmarks-bundles.md``);
#: ``quick`` mode uses it directly instead of searching again. Never chosen on test.
SELECTED: dict[str, Any] = {
    "l2": 1000.0,
    "side_weight": 1.0,
    "projected_weight": 1.0,
    "composition_weight": 2.0,
    "item_K": 200,
    "mix": 0.3,
    "aggregation_norm": 0.5,
}

#: Weights kept per bundle column in the served model, tried in order on tune.
SERVING_TOP_K: tuple[int, ...] = (400, 1000, 2000)
#: Tune Recall@20 the serving form may lose against the dense model when choosing k.
SERVING_TOLERANCE = 0.001

# Small grids, searched on tune in the full run.
GRID_L2 = (500.0, 1000.0, 2000.0)
GRID_COMPOSITION_WEIGHT = (1.0, 2.0)
GRID_MIX = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
GRID_AGGREGATION = (0.25, 0.5, 1.0)


# ---------------------------------------------------------------------- data
@dataclass
class BundleData:
    """One bundle-recommendation dataset as sparse matrices (all 0/1, float32)."""

    name: str
    n_users: int
    n_bundles: int
    n_items: int
    train: sp.csr_matrix
    tune: sp.csr_matrix
    test: sp.csr_matrix
    user_items: sp.csr_matrix | None
    bundle_items: sp.csr_matrix | None


def _read_pairs(path: Path) -> np.ndarray:
    pairs = np.loadtxt(path, dtype=np.int64, ndmin=2, usecols=(0, 1))
    return pairs.reshape(-1, 2)


def _matrix(pairs: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def load_bundle_data(data_dir: Path) -> BundleData:
    """Read a BGCN-layout directory; ``user_item``/``bundle_item`` are optional.

    Sizes come from ``<Name>_data_size.txt`` (users, bundles[, items]) when present, else
    from the largest ids seen.
    """
    data_dir = Path(data_dir)
    split = {s: _read_pairs(data_dir / f"user_bundle_{s}.txt") for s in ("train", "tune", "test")}
    ui_path, bi_path = data_dir / "user_item.txt", data_dir / "bundle_item.txt"
    ui = _read_pairs(ui_path) if ui_path.exists() else None
    bi = _read_pairs(bi_path) if bi_path.exists() else None
    size_files = sorted(data_dir.glob("*_data_size.txt"))
    name = size_files[0].name.removesuffix("_data_size.txt") if size_files else data_dir.name
    if size_files:
        sizes = [int(v) for v in size_files[0].read_text().split()]
        n_users, n_bundles = sizes[0], sizes[1]
        n_items = sizes[2] if len(sizes) > 2 else 0
    else:
        n_users = 1 + max(int(p[:, 0].max()) for p in split.values())
        n_bundles = 1 + max(int(p[:, 1].max()) for p in split.values())
        n_items = 0
    if ui is not None:
        n_users = max(n_users, 1 + int(ui[:, 0].max()))
        n_items = max(n_items, 1 + int(ui[:, 1].max()))
    if bi is not None:
        n_items = max(n_items, 1 + int(bi[:, 1].max()))
    return BundleData(
        name=name,
        n_users=n_users,
        n_bundles=n_bundles,
        n_items=n_items,
        train=_matrix(split["train"], (n_users, n_bundles)),
        tune=_matrix(split["tune"], (n_users, n_bundles)),
        test=_matrix(split["test"], (n_users, n_bundles)),
        user_items=None if ui is None else _matrix(ui, (n_users, n_items)),
        bundle_items=None if bi is None else _matrix(bi, (n_bundles, n_items)),
    )


# ---------------------------------------------------------------------- protocol
def rank_users(
    model: Recommender,
    data: BundleData,
    users: np.ndarray,
    n: int = TOP,
    batch: int = 1024,
) -> np.ndarray:
    """Top-``n`` bundles of each user, training bundles masked (the protocol's only mask)."""
    out = np.empty((len(users), n), dtype=np.int64)
    side = data.user_items if _uses_side(model) else None
    for lo in range(0, len(users), batch):
        u = users[lo : lo + batch]
        kw = {} if side is None else {"side_items": side[u]}
        ids, _ = model.recommend(u, data.train[u], n=n, exclude=data.train[u], **kw)
        out[lo : lo + batch] = ids
    return out


def metrics_from_lists(top: np.ndarray, users: np.ndarray, truth: sp.csr_matrix) -> dict:
    """Recall@K and NDCG@K from ranked lists, exactly as the independent scorer computes them.

    Recall divides by the number of positives (not min(K, n)); the ideal DCG is over
    min(positives, K) positions.
    """
    rows = truth[users]
    n_pos = np.diff(rows.indptr)
    if np.any(n_pos == 0):
        raise ValueError("every evaluated user must have at least one positive")
    hits = np.zeros(top.shape, dtype=bool)
    for r in range(len(users)):
        pos = rows.indices[rows.indptr[r] : rows.indptr[r + 1]]
        hits[r] = np.isin(top[r], pos)
    disc = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    ideal = np.concatenate([[0.0], np.cumsum(disc)])
    out = {}
    for k in KS:
        h = hits[:, :k]
        out[f"recall@{k}"] = float(np.mean(h.sum(axis=1) / n_pos))
        dcg = (h * disc[:k]).sum(axis=1)
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal[np.minimum(n_pos, k)]))
    return out


def evaluate(
    model: Recommender, data: BundleData, split: str
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of ``model`` on ``split`` ("tune" or "test"); also the users and their lists."""
    truth = getattr(data, split)
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    top = rank_users(model, data, users)
    return metrics_from_lists(top, users, truth), users, top


def deployable_of(scorer: BundleScorer, data: BundleData, top_k: int | None) -> LinearModel:
    """The fitted bundle scorer as the deployable linear model ``bouquet train`` registers:
    users are residents, items are services (their rows: ``user_items``), bundles are
    bundles (their rows: the training pairs); ``top_k`` weights kept per bundle column."""
    from bouquet.models.confidence import ConfidenceRule
    from bouquet.models.linear import bundle_scorer_terms

    items = [f"i{i}" for i in range(data.n_items)]
    bundles = [f"b{b}" for b in range(data.n_bundles)]
    composition = sp.csr_matrix((data.n_bundles, data.n_items)) if data.bundle_items is None \
        else data.bundle_items
    services_model = scorer.item_model_ or _identity_model(data.n_items)
    terms, groups = bundle_scorer_terms(scorer, services_model, top_k)
    history = data.user_items if data.user_items is not None \
        else sp.csr_matrix((data.n_users, data.n_items))
    return LinearModel(
        service_ids=items, bundle_ids=bundles,
        bundle_services={b: [items[i] for i in composition.indices[
            composition.indptr[n]:composition.indptr[n + 1]]] for n, b in enumerate(bundles)},
        neighbourhoods=[], rule=ConfidenceRule({}, log_alpha=0.0),
        popular_services=np.zeros((1, data.n_items)),
        popular_bundles=np.zeros((1, data.n_bundles)),
        resident_ids=np.array([f"u{u}" for u in range(data.n_users)]),
        resident_neighbourhood=np.full(data.n_users, -1, np.int16),
        resident_services=history, resident_bundles=data.train,
        meta={"model_kind": "crossview", "dataset": data.name},
        terms=terms, groups=groups, top_k=top_k)


def _identity_model(n: int) -> Any:
    """A services model that scores nothing (datasets without item side data)."""
    return type("NoServices", (), {"similarity_": sp.csr_matrix((n, n)), "binary": False})()


def rank_deployable(model: LinearModel, data: BundleData, users: np.ndarray,
                    n: int = TOP, batch: int = 1024) -> np.ndarray:
    """Top-``n`` bundles of each user by the deployable model, training bundles masked."""
    out = np.empty((len(users), n), dtype=np.int64)
    for lo in range(0, len(users), batch):
        u = users[lo:lo + batch]
        scores = model.score(u, "b")
        train = data.train[u].tocoo()
        scores[train.row, train.col] = -np.inf
        out[lo:lo + batch] = top_n(scores, n)[0]
    return out


def evaluate_deployable(model: LinearModel, data: BundleData, split: str
                        ) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate` for a deployable model."""
    truth = getattr(data, split)
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    top = rank_deployable(model, data, users)
    return metrics_from_lists(top, users, truth), users, top


def serving_form(scorer: BundleScorer, data: BundleData, dense_tune_recall: float,
                 cap_bytes: int) -> tuple[LinearModel, list[dict[str, Any]]]:
    """The smallest ``k`` of :data:`SERVING_TOP_K` whose model is within
    :data:`SERVING_TOLERANCE` of the dense model's tune Recall@20 and fits ``cap_bytes``
    (else the best on tune that fits); the trials, for the record."""
    trials: list[dict[str, Any]] = []
    best: tuple[float, LinearModel] | None = None
    for k in SERVING_TOP_K:
        model = deployable_of(scorer, data, k)
        size = len(model.serving_view().to_blob())
        recall = evaluate_deployable(model, data, "tune")[0]["recall@20"]
        trials.append({"top_k": k, "tune_recall@20": round(recall, 6),
                       "blob_mb": round(size / 2**20, 1), "weights_nnz": model.weights_nnz})
        if size > cap_bytes:
            break
        if recall >= dense_tune_recall - SERVING_TOLERANCE:
            return model, trials
        if best is None or recall > best[0]:
            best = (recall, model)
    if best is None:
        raise ValueError(f"no serving form of this model fits {cap_bytes / 2**20:.0f} MB")
    return best[1], trials


def write_topk(path: Path, users: np.ndarray, top: np.ndarray) -> None:
    """``user<TAB>b1,b2,...`` per line, best first (the scorer's input format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for u, row in zip(users.tolist(), top.tolist(), strict=True):
            fh.write(f"{u}\t{','.join(map(str, row))}\n")


def _solver_of(model: Recommender) -> dict[str, Any]:
    """The solver a closed-form model chose (``{}`` for other models)."""
    inner = getattr(model, "bundle_model_", model)
    if not hasattr(inner, "solver_"):
        return {}
    return {"solver": inner.solver_, "solver_estimate": inner.solver_estimate_}


def _uses_side(model: Recommender) -> bool:
    if isinstance(model, BundleScorer):
        return model.n_side_items_ > 0 or _uses_side(model.bundle_model_)
    return isinstance(model, CrossViewEASE) and model.side_weights_ is not None


def _fit_kwargs(model: Recommender, data: BundleData) -> dict[str, Any]:
    if isinstance(model, (BundleScorer, CrossViewEASE)):
        return {"side_items": data.user_items, "composition": data.bundle_items}
    return {}


# ---------------------------------------------------------------------- the run
def _tune_grid(
    name: str,
    candidates: Iterable[dict[str, Any]],
    build: Callable[[dict[str, Any]], Recommender],
    data: BundleData,
    progress: bool,
) -> tuple[dict[str, Any], Recommender, float, list[dict[str, Any]]]:
    """Fit each candidate on train, score Recall@20 on tune, keep the best (first on ties)."""
    from tqdm.auto import tqdm

    best: tuple[float, dict[str, Any], Recommender] | None = None
    trials = []
    candidates = list(candidates)
    for params in tqdm(candidates, desc=f"tune {name}", disable=not progress, leave=False):
        model = build(params)
        t0 = time.perf_counter()
        model.fit(data.train, **_fit_kwargs(model, data))
        fit_s = time.perf_counter() - t0
        recall = evaluate(model, data, "tune")[0]["recall@20"]
        trials.append({**params, "tune_recall@20": round(recall, 6), "fit_s": round(fit_s, 2),
                       **_solver_of(model)})
        log.info("%s %s: tune recall@20 %.4f (fit %.1fs)", name, params, recall, fit_s)
        if best is None or recall > best[0]:
            best = (recall, params, model)
    assert best is not None
    return best[1], best[2], best[0], trials


def _baselines(data: BundleData, quick: bool, progress: bool) -> dict[str, dict[str, Any]]:
    """Each baseline: tuned on tune (small grid), then its test figures."""
    grids: dict[str, tuple[list[dict[str, Any]], Callable[[dict[str, Any]], Recommender]]] = {
        "popularity": ([{}], lambda p: PopularityRecommender()),
    }
    if not quick:
        grids.update(
            {
                # the library's defaults, not tuned: the floor any tuned model should clear
                "als_untuned": ([{}], lambda p: ALSRecommender()),
                "itemknn": (
                    [{"K": k} for k in (50, 200, 1000)],
                    lambda p: ItemKNNRecommender(K=p["K"]),
                ),
                "als": (
                    [
                        {"factors": f, "alpha": a, "regularization": 1.0}
                        for f in (16, 64)
                        for a in (5.0, 20.0)
                    ],
                    lambda p: ALSRecommender(iterations=15, random_state=0, **p),
                ),
                "bpr": (
                    [{"factors": 64, "learning_rate": lr} for lr in (0.01, 0.05)],
                    lambda p: BPRRecommender(iterations=100, random_state=0, num_threads=1, **p),
                ),
                "ease": (
                    [{"l2": v} for v in (100.0, 300.0, 1000.0)],
                    lambda p: EASERecommender(**p),
                ),
            }
        )
    out = {}
    for name, (grid, build) in grids.items():
        params, model, tune_r20, trials = _tune_grid(name, grid, build, data, progress)
        test = evaluate(model, data, "test")[0]
        out[name] = {"params": params, "tune_recall@20": tune_r20, "test": test, "trials": trials}
    return out


def _tune_bouquet(
    data: BundleData, has_side: bool, progress: bool, search: list[dict[str, Any]]
) -> dict[str, Any]:
    """Stage-wise search on tune: CrossViewEASE's l2, then its composition weight, then the
    mixing weight and aggregation of the service-affinity term on the fitted parts.

    Appends every trial to ``search`` and, last, the collaborative model's own figures.
    """
    grid = [{"l2": v, "composition_weight": SELECTED["composition_weight"]} for v in GRID_L2]
    params, cv, r20, trials = _tune_grid(
        "crossview", grid, lambda p: CrossViewEASE(**p), data, progress
    )
    search += trials
    if data.bundle_items is not None:
        grid = [
            {"l2": params["l2"], "composition_weight": w}
            for w in GRID_COMPOSITION_WEIGHT
            if w != params["composition_weight"]
        ]
        p2, cv2, r2, trials = _tune_grid(
            "crossview", grid, lambda p: CrossViewEASE(**p), data, progress
        )
        search += trials
        if r2 > r20:
            params, cv, r20 = p2, cv2, r2
        del cv2
    out: dict[str, Any] = dict(params)
    collab = {"tune_recall@20": r20, "test": evaluate(cv, data, "test")[0], "params": params}
    if has_side:
        knn = ItemKNNRecommender(K=SELECTED["item_K"]).fit(data.user_items)
        best = (-1.0, 0.0, SELECTED["aggregation_norm"])
        combos = [(0.0, GRID_AGGREGATION[0])] + [
            (mix, agg) for agg in GRID_AGGREGATION for mix in GRID_MIX if mix > 0
        ]
        from tqdm.auto import tqdm

        for mix, agg in tqdm(combos, desc="tune mix", disable=not progress, leave=False):
            scorer = BundleScorer.from_parts(
                cv, knn, data.bundle_items, mix=mix, aggregation_norm=agg
            )
            recall = evaluate(scorer, data, "tune")[0]["recall@20"]
            search.append({"mix": mix, "aggregation_norm": agg, "tune_recall@20": round(recall, 6)})
            log.info("mix %.3f aggregation %.2f: tune recall@20 %.4f", mix, agg, recall)
            if recall > best[0]:
                best = (recall, mix, agg)
        out["mix"], out["aggregation_norm"] = best[1], best[2]
    search.append(collab)
    return out


def run_bundles(
    data_dir: Path,
    topk_out: Path | None = None,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the benchmark; return ``{"params", "figures", "published"}``.

    Parameters
    ----------
    data_dir : pathlib.Path
        A BGCN-layout directory (``user_bundle_{train,tune,test}.txt``, optionally
        ``user_item.txt``, ``bundle_item.txt``, ``<Name>_data_size.txt``).
    topk_out : pathlib.Path, optional
        Where to write the final model's top-40 test lists for the independent scorer.
    quick : bool
        Skip the hyper-parameter search: use :data:`SELECTED` (chosen on tune by a full run)
        and only the popularity baseline. The final model and protocol are identical.
    progress : bool
        Show progress bars (stderr).
    """
    t_start = time.perf_counter()
    load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    data = load_bundle_data(Path(data_dir))
    has_side = data.user_items is not None and data.bundle_items is not None
    log.info(
        "%s: %d users, %d bundles, %d items; train/tune/test %d/%d/%d pairs; side data: %s",
        data.name,
        data.n_users,
        data.n_bundles,
        data.n_items,
        data.train.nnz,
        data.tune.nnz,
        data.test.nnz,
        has_side,
    )
    baselines = _baselines(data, quick, progress)

    # ---- the Bouquet method: BundleScorer(CrossViewEASE + item-kNN affinity), tuned on tune
    selected = dict(SELECTED)
    search: list[dict[str, Any]] = []
    collab_only: dict[str, Any] | None = None
    if not quick:
        selected.update(_tune_bouquet(data, has_side, progress, search))
        collab_only = search.pop()  # the collaborative part alone, as an extra baseline row

    # ---- final model: refit from scratch with the selected configuration (timed)
    final = build_final(selected, has_side)
    t0, c0 = time.perf_counter(), time.process_time()
    final.fit(data.train, **_fit_kwargs(final, data))
    train_s = time.perf_counter() - t0
    train_cpu_s = time.process_time() - c0  # all threads; tells contention from real cost
    dense_tune = evaluate(final, data, "tune")[0]
    dense_test = evaluate(final, data, "test")[0]

    # ---- the deployable model, in its serving form, through save -> load -> score
    served, serving_trials = serving_form(final, data, dense_tune["recall@20"],
                                          Settings().publish_model_max_bytes)
    with tempfile.TemporaryDirectory(prefix="bouquet-bundles-model-") as tmp:
        served.save(Path(tmp) / "model")
        loaded = load_model_dir(Path(tmp) / "model")
    blob_mb = len(loaded.serving_view().to_blob()) / 2**20
    tune_m = evaluate_deployable(loaded, data, "tune")[0]
    test_m, users, top = evaluate_deployable(loaded, data, "test")
    if topk_out is not None:
        write_topk(Path(topk_out), users, top)

    figures: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, unit: str = "") -> None:
        figures[name] = {"value": float(value), "unit": unit}

    for k in KS:
        add(f"test_recall@{k}", test_m[f"recall@{k}"])
        add(f"test_ndcg@{k}", test_m[f"ndcg@{k}"])
    add("tune_recall@20", tune_m["recall@20"])
    add("tune_ndcg@20", tune_m["ndcg@20"])
    for k in KS:
        add(f"test_recall@{k}_dense", dense_test[f"recall@{k}"])
        add(f"test_ndcg@{k}_dense", dense_test[f"ndcg@{k}"])
    add("tune_recall@20_dense", dense_tune["recall@20"])
    add("serving_top_k", served.top_k or 0, "weights per bundle column")
    add("serving_blob_mb", blob_mb, "MB")
    add("train_s", train_s, "s")
    add("train_cpu_s", train_cpu_s, "s")
    add("test_users", len(users), "users")
    rows = dict(baselines)
    if collab_only is not None:
        rows["crossview"] = collab_only
    for name, res in rows.items():
        for k in KS:
            add(f"test_recall@{k}_{name}", res["test"][f"recall@{k}"])
            add(f"test_ndcg@{k}_{name}", res["test"][f"ndcg@{k}"])
        add(f"tune_recall@20_{name}", res["tune_recall@20"])
    add("total_s", time.perf_counter() - t_start, "s")
    add("peak_rss_mb", peak_rss_mb(), "MB")

    params = {
        "dataset": data.name,
        "data_dir": str(data_dir),
        "users": data.n_users,
        "bundles": data.n_bundles,
        "items": data.n_items,
        "side_data": has_side,
        "quick": quick,
        "method": "BundleScorer(CrossViewEASE + ItemKNN affinity)"
        if has_side
        else "BundleScorer(EASE on user x bundle)",
        "trained_on": "user_bundle_train" + (" + user_item + bundle_item" if has_side else ""),
        "selected_on": "tune (Recall@20, train masked)"
        if not quick
        else "tune, by an earlier full run (SELECTED)",
        "selected": selected,
        "final_solver": _solver_of(final),
        "headline_model": "the deployable LinearModel of the selected BundleScorer in its "
        "serving form (top-k weights per bundle column), saved and loaded; *_dense rows are "
        "the fitted model before that",
        "serving_trials": serving_trials,
        "search": search,
        "baselines": {k: v["params"] for k, v in baselines.items()},
        "protocol": "rank all bundles, mask train only, recall=hits/|pos|, "
        "ndcg idcg over min(|pos|,K), mean over users with >=1 positive",
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": load_1m,
    }
    return {"params": params, "figures": figures, "published": PUBLISHED}


def build_final(selected: dict[str, Any], has_side: bool) -> BundleScorer:
    """The Bouquet bundle model for a configuration.

    Side views the data lacks are simply absent at fit time (CrossViewEASE drops their
    blocks, the scorer its affinity term), so one builder serves both cases.
    """
    return BundleScorer(
        bundle_model=CrossViewEASE(
            l2=selected["l2"],
            side_weight=selected["side_weight"],
            projected_weight=selected["projected_weight"],
            composition_weight=selected["composition_weight"],
        ),
        item_model=ItemKNNRecommender(K=selected["item_K"]),
        mix=selected["mix"] if has_side else 0.0,
        aggregation_norm=selected["aggregation_norm"],
    )


# ---------------------------------------------------------------------- output
def print_table(result: dict[str, Any], console: Any = None) -> None:
    """Ours beside the published results (same protocol), then the cost figures."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    fig = {k: v["value"] for k, v in result["figures"].items()}
    table = Table(
        title=f"bench bundles — {result['params'].get('dataset', '')}, test split",
        title_justify="left",
    )
    for col in ("method", "Recall@20", "NDCG@20", "Recall@40", "NDCG@40", "tune R@20"):
        table.add_column(col, justify="left" if col == "method" else "right")

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.4f}"

    table.add_row(
        "[bold]Bouquet (ours, as served)[/bold]",
        *(f(fig.get(f"test_{m}@{k}")) for k in KS for m in ("recall", "ndcg")),
        f(fig.get("tune_recall@20")),
    )
    names = sorted({k.removeprefix("test_recall@20_") for k in fig
                    if k.startswith("test_recall@20_")})
    for name in names:
        table.add_row(
            "Bouquet, fitted (dense weights)" if name == "dense" else f"{name} (ours)",
            *(f(fig.get(f"test_{m}@{k}_{name}")) for k in KS for m in ("recall", "ndcg")),
            f(fig.get(f"tune_recall@20_{name}")),
        )
    for row in result.get("published", []):
        table.add_row(
            f"{row['method']} ({row['venue'] + ', ' if row.get('venue') else ''}published)",
            f(row.get("recall@20")),
            f(row.get("ndcg@20")),
            "–",
            "–",
            "–",
        )
    console.print(table)
    console.print(
        f"train_s {fig.get('train_s', float('nan')):.1f} s (final model) · "
        f"peak RSS {fig.get('peak_rss_mb', float('nan')):.0f} MB · "
        f"total {fig.get('total_s', float('nan')):.0f} s · "
        f"{result['params'].get('cpus')} CPUs · selected {result['params'].get('selected')}"
        f" · solver {result['params'].get('final_solver', {}).get('solver', '–')}"
        f" · served with the top {fig.get('serving_top_k', 0):.0f} weights per bundle column "
        f"({fig.get('serving_blob_mb', float('nan')):.1f} MB)"
    )


def to_bench_result(result: dict[str, Any]) -> BenchResult:
    """The run in the benchmark output contract (published rows go with the params)."""
    bench = BenchResult("bundles", params={**result["params"],
                                           "published": result["published"]})
    bench.figures = dict(result["figures"])
    return bench


#: Where the public data lives beside the repository (``../shared/data``).
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "youshu"


def run_synthetic(
    shape: SyntheticShape,
    seed: int = 0,
    topk_out: Path | None = None,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`run_bundles` on a dataset of ``shape`` generated into a temporary directory
    (removed afterwards); the shape and seed are added to the params."""
    with tempfile.TemporaryDirectory(prefix="bouquet-synthetic-") as tmp:
        t0 = time.perf_counter()
        write_synthetic(Path(tmp), shape, seed=seed)
        generate_s = time.perf_counter() - t0
        result = run_bundles(Path(tmp), topk_out, quick=quick, progress=progress)
    result["params"]["synthetic"] = {"shape": str(shape), "seed": seed,
                                     "generate_s": round(generate_s, 2)}
    result["params"]["data_dir"] = f"synthetic {shape} seed {seed} (temporary)"
    result["published"] = []  # the published rows are Youshu's
    return result


def DEFAULT(settings: Any) -> BenchResult:  # noqa: N802 - the harness's entry-point name
    """``bench all``: the full run (hyper-parameters tuned on ``tune``) on Youshu."""
    result = run_bundles(DEFAULT_DATA, quick=False, progress=True)
    print_table(result)
    return to_bench_result(result)


def register(bench_app: Any) -> None:
    import typer

    @bench_app.command("bundles")
    def bundles(
        data: Path = typer.Option(DEFAULT_DATA, "--data", help="BGCN-layout data directory."),
        synthetic: str | None = typer.Option(
            None, "--synthetic", metavar="USERS,BUNDLES,PAIRS[,ITEMS]",
            help="Instead of --data: generate a dataset of this shape (PAIRS training pairs; "
            "items default to BUNDLES/4) in a temporary directory and run on it."),
        seed: int = typer.Option(0, "--seed", help="Seed of the --synthetic generator."),
        json_path: Path | None = typer.Option(None, "--json", help="Write contract JSON here."),
        topk_out: Path | None = typer.Option(None, "--topk-out", help="Write the top-40 test "
                                             "lists here (user<TAB>b1,b2,...)."),
        quick: bool = typer.Option(False, "--quick", help="Skip tuning; use the configuration "
                                   "an earlier full run selected on tune."),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Bundle recommendation on Youshu-layout data, official protocol, vs published."""
        if synthetic is not None:
            try:
                shape = SyntheticShape.parse(synthetic)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--synthetic") from exc
            result = run_synthetic(shape, seed, topk_out, quick=quick, progress=progress)
        else:
            result = run_bundles(data, topk_out, quick=quick, progress=progress)
        print_table(result)
        bench = to_bench_result(result)
        print_result(bench)
        if json_path is not None:
            write_json(bench, json_path)
