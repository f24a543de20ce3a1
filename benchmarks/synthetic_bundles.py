"""A synthetic bundle dataset of any shape, laid out like the public Youshu split.

``bouquet bench bundles --synthetic USERS,BUNDLES,PAIRS`` runs the benchmark on data of a given
size without needing such data: the shape is what decides which solver the models can afford,
so a catalog that is too big for one machine can be rehearsed on a laptop-sized file set.

What is planted, so that models differ the way they do on real data:

* **low-rank taste**: a few dozen topics; each user likes a sparse mixture of them (a Dirichlet
  draw with a small concentration), each bundle and each item belongs to one main topic and
  leans towards a second one. A collaborative model can find these; popularity cannot.
* **heavy-tailed popularity**: within a topic, bundles and items are drawn with Zipf-like
  weights, and a share of interactions comes from global popularity alone, so the popularity
  baseline is respectable and a model must beat it.
* **heavy-tailed activity**: users' interaction counts are log-normal.

The files are those of ``../shared/data/youshu``: ``user_bundle_{train,tune,test}.txt``
(train gets exactly ``PAIRS`` pairs, tune and test about 1/7 and 2/7 of that, the Youshu
proportions), ``user_item.txt`` (about as many pairs as the bundle pairs, drawn from the same
tastes but independently of the split, so it leaks no held-out pair), ``bundle_item.txt`` and
``Synthetic_data_size.txt``. The same arguments and seed always give the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Topics of the planted taste structure.
TOPICS = 32
#: Dirichlet concentration of a user's topic mixture (small: one to three topics dominate).
USER_CONCENTRATION = 0.1
#: Weight of a bundle's or item's second topic.
SECOND_TOPIC = 0.25
#: Zipf exponent of popularity within the catalog.
POPULARITY_EXPONENT = 0.9
#: Share of interactions that follow global popularity only.
POPULARITY_SHARE = 0.1
#: Shares of the split (Youshu: 34 416 / 5 189 / 9 746 pairs).
TRAIN_SHARE, TUNE_SHARE = 0.70, 0.10
#: Mean number of item draws per bundle (at least 2).
MEAN_BUNDLE_SIZE = 8


@dataclass(frozen=True)
class SyntheticShape:
    """``USERS,BUNDLES,PAIRS[,ITEMS]`` as given on the command line."""

    users: int
    bundles: int
    pairs: int
    items: int

    @classmethod
    def parse(cls, text: str) -> SyntheticShape:
        """``"18528,22864,217864"`` → users, bundles, training pairs; items default to a
        quarter of the bundles (at least 20)."""
        try:
            values = [int(v.replace("_", "")) for v in text.split(",")]
        except ValueError as exc:
            raise ValueError(
                f"expected USERS,BUNDLES,PAIRS[,ITEMS] integers, got {text!r}"
            ) from exc
        if len(values) not in (3, 4) or min(values) <= 0:
            raise ValueError(f"expected USERS,BUNDLES,PAIRS[,ITEMS] > 0, got {text!r}")
        users, bundles, pairs = values[:3]
        items = values[3] if len(values) == 4 else max(20, bundles // 4)
        total = int(np.ceil(pairs / TRAIN_SHARE))
        if total > 0.5 * users * bundles:
            raise ValueError(
                f"{pairs} training pairs ({total} with tune and test) would fill more than half "
                f"of a {users} x {bundles} matrix; use fewer pairs or a larger shape"
            )
        return cls(users, bundles, pairs, items)

    def __str__(self) -> str:
        return f"{self.users},{self.bundles},{self.pairs},{self.items}"


def write_synthetic(root: Path, shape: SyntheticShape, seed: int = 0) -> Path:
    """Generate the dataset into ``root`` (created if needed) and return ``root``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_u, n_b, n_i = shape.users, shape.bundles, shape.items

    taste = rng.dirichlet(np.full(TOPICS, USER_CONCENTRATION), size=n_u)
    activity = rng.lognormal(0.0, 1.0, size=n_u)
    bundle_topics = _catalog_topics(rng, n_b)
    item_topics = _catalog_topics(rng, n_i)
    bundle_pop = _zipf_weights(rng, n_b)
    item_pop = _zipf_weights(rng, n_i)

    total = int(np.ceil(shape.pairs / TRAIN_SHARE))
    pairs = _draw_pairs(rng, total, taste, activity, bundle_topics, bundle_pop)
    rng.shuffle(pairs)
    n_tune = round(total * TUNE_SHARE)
    splits = {
        "train": pairs[: shape.pairs],
        "tune": pairs[shape.pairs : shape.pairs + n_tune],
        "test": pairs[shape.pairs + n_tune :],
    }
    for name, part in splits.items():
        _write_pairs(root / f"user_bundle_{name}.txt", part)
    user_items = _draw_pairs(rng, total, taste, activity, item_topics, item_pop)
    _write_pairs(root / "user_item.txt", user_items)
    _write_pairs(root / "bundle_item.txt", _compose(rng, bundle_topics, item_topics, item_pop))
    (root / "Synthetic_data_size.txt").write_text(f"{n_u}\t{n_b}\t{n_i}\n")
    return root


# ---------------------------------------------------------------------- helpers
def _catalog_topics(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 2)`` main and second topic of each catalog entry (topic sizes vary too)."""
    sizes = _zipf_weights(rng, TOPICS, exponent=0.5)
    main = rng.choice(TOPICS, size=n, p=sizes)
    second = (main + rng.integers(1, TOPICS, size=n)) % TOPICS
    return np.stack([main, second], axis=1)


def _zipf_weights(rng: np.random.Generator, n: int,
                  exponent: float = POPULARITY_EXPONENT) -> np.ndarray:
    """Zipf weights over a random order of ``n`` entries, summing to 1."""
    w = np.empty(n)
    w[rng.permutation(n)] = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def _by_topic(topics: np.ndarray, popularity: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per topic: the catalog ids leaning to it and their cumulative draw weights."""
    out = []
    for t in range(TOPICS):
        main, second = topics[:, 0] == t, topics[:, 1] == t
        ids = np.flatnonzero(main | second)
        w = popularity[ids] * np.where(main[ids], 1.0, SECOND_TOPIC)
        if ids.size == 0:  # tiny catalogs: a topic nobody leans to falls back to everything
            ids, w = np.arange(len(popularity)), popularity
        out.append((ids, np.cumsum(w) / w.sum()))
    return out


def _draw(rng: np.random.Generator, cum: np.ndarray, k: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cum, rng.random(k), side="right"), len(cum) - 1)


def _draw_pairs(rng: np.random.Generator, total: int, taste: np.ndarray, activity: np.ndarray,
                topics: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """``total`` distinct (user, catalog id) pairs from the planted model, as an int64 array."""
    n_u, n_c = len(taste), len(popularity)
    if total > n_u * n_c:
        raise ValueError(f"cannot draw {total} distinct pairs from {n_u} x {n_c}")
    groups = _by_topic(topics, popularity)
    user_cum = np.cumsum(activity) / activity.sum()
    pop_cum = np.cumsum(popularity)
    seen = np.empty(0, dtype=np.int64)
    while seen.size < total:
        k = int(1.3 * (total - seen.size)) + 16
        users = _draw(rng, user_cum, k)
        ids = _draw(rng, pop_cum, k)
        personal = rng.random(k) >= POPULARITY_SHARE
        # a topic per draw from the user's own mixture: inverse CDF on each user's row
        u_p = users[personal]
        topic = (np.cumsum(taste[u_p], axis=1) < rng.random(len(u_p))[:, None]).sum(axis=1)
        topic = np.minimum(topic, TOPICS - 1)
        picked = np.empty(len(u_p), dtype=np.int64)
        for t in range(TOPICS):
            sel = np.flatnonzero(topic == t)
            t_ids, t_cum = groups[t]
            picked[sel] = t_ids[_draw(rng, t_cum, len(sel))]
        ids[personal] = picked
        seen = np.unique(np.concatenate([seen, users.astype(np.int64) * n_c + ids]))
    keep = rng.choice(seen.size, size=total, replace=False)
    codes = seen[np.sort(keep)]
    return np.stack([codes // n_c, codes % n_c], axis=1)


def _compose(rng: np.random.Generator, bundle_topics: np.ndarray, item_topics: np.ndarray,
             item_pop: np.ndarray) -> np.ndarray:
    """(bundle, item) pairs: each bundle draws 2 + Poisson items, mostly of its topics
    (a popular item drawn twice counts once)."""
    n_b, n_i = len(bundle_topics), len(item_pop)
    sizes = np.minimum(2 + rng.poisson(MEAN_BUNDLE_SIZE - 2, size=n_b), n_i)
    groups = _by_topic(item_topics, item_pop)
    bundles = np.repeat(np.arange(n_b), sizes)
    # each slot takes the bundle's main topic, sometimes its second; 10 % any popular item
    which = (rng.random(len(bundles)) < SECOND_TOPIC).astype(int)
    topic = bundle_topics[bundles, which]
    items = _draw(rng, np.cumsum(item_pop), len(bundles))
    themed = rng.random(len(bundles)) >= 0.1
    for t in range(TOPICS):
        sel = np.flatnonzero(themed & (topic == t))
        t_ids, t_cum = groups[t]
        items[sel] = t_ids[_draw(rng, t_cum, len(sel))]
    codes = np.unique(bundles.astype(np.int64) * n_i + items)
    return np.stack([codes // n_i, codes % n_i], axis=1)


def _write_pairs(path: Path, pairs: np.ndarray) -> None:
    np.savetxt(path, pairs, fmt="%d", delimiter="\t")
