"""Popularity baselines: overall, and per user group (e.g. neighbourhood).

Every offline evaluation reports these beside the learned models: a model that does not beat
"what most residents use" is not worth serving. The group variant is also the cold-start
answer in serving for a resident with no history, keyed by their neighbourhood; for a
consenting one, "popular with residents like you" is their segment's rate, pooled over
segments by their attributes (:func:`additive_group_rates`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from bouquet.models.base import Recommender, check_csr

log = logging.getLogger(__name__)


def _item_counts(x: sp.csr_matrix, binary: bool) -> np.ndarray:
    if binary:
        x = x.copy()
        x.data = (x.data > 0).astype(np.float64)
    return np.asarray(x.sum(axis=0), dtype=np.float64).ravel()


def group_counts(user_items: sp.csr_matrix, group: np.ndarray, n_groups: int,
                 binary: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(groups, items)`` users of each group with each item (or their summed
    confidences when not ``binary``) and ``(groups,)`` users of each group; ``group`` is
    each row's group index, -1 for none (left out of both)."""
    group = np.asarray(group, dtype=np.int64)
    known = group >= 0
    membership = sp.csr_matrix(
        (np.ones(int(known.sum())), (group[known], np.flatnonzero(known))),
        shape=(n_groups, user_items.shape[0]),
    )
    x = user_items.copy()
    if binary:
        x.data = (x.data > 0).astype(np.float64)
    counts = np.asarray((membership @ x).todense(), dtype=np.float64)
    return counts, np.asarray(membership.sum(axis=1)).ravel()


class PopularityRecommender(Recommender):
    """Rank items by how many users interacted with them (the same list for everyone).

    Parameters
    ----------
    binary : bool
        Count users (True) rather than summing confidences (False), so one heavy user cannot
        make an item "popular".

    Attributes
    ----------
    item_popularity_ : numpy.ndarray
        ``(n_items,)`` share of users who interacted with each item (or mean confidence).
    n_users_, n_items_ : int
        Training matrix shape.
    """

    def __init__(self, binary: bool = True) -> None:
        self.binary = binary

    def fit(self, user_items: sp.csr_matrix, **kwargs: Any) -> PopularityRecommender:
        """Count item popularity in ``user_items``."""
        x = check_csr(user_items)
        self.n_users_, self.n_items_ = x.shape
        self.item_popularity_ = _item_counts(x, self.binary) / max(1, self.n_users_)
        return self

    def _score(
        self, ids: np.ndarray, user_items: sp.csr_matrix | None = None, **kwargs: Any
    ) -> np.ndarray:
        """The popularity vector, repeated for each user."""
        return np.tile(self.item_popularity_, (len(ids), 1))


class GroupPopularityRecommender(Recommender):
    """Popularity within each user's group, shrunk towards overall popularity.

    A small neighbourhood's counts are noisy, so each group's rate is the Bayesian average
    ``(count_g + shrinkage * p_all) / (n_g + shrinkage)``: ``shrinkage`` pseudo-users who behave
    like the whole population. Users whose group is unknown get overall popularity.

    Parameters
    ----------
    shrinkage : float
        Pseudo-count pulling small groups towards overall popularity.
    binary : bool
        Count users rather than summing confidences.

    Attributes
    ----------
    groups_ : list of str
        Group labels seen in training (labels are compared as strings).
    group_popularity_ : numpy.ndarray
        ``(n_groups, n_items)`` shrunk rates.
    item_popularity_ : numpy.ndarray
        ``(n_items,)`` overall rates (fallback).
    user_group_ : numpy.ndarray
        ``(n_users,)`` index into ``groups_`` of each training user, ``-1`` if unknown.
    """

    def __init__(self, shrinkage: float = 10.0, binary: bool = True) -> None:
        self.shrinkage = shrinkage
        self.binary = binary

    def fit(
        self, user_items: sp.csr_matrix, groups: Any = None, **kwargs: Any
    ) -> GroupPopularityRecommender:
        """Count popularity per group.

        Parameters
        ----------
        user_items : scipy.sparse.csr_matrix
            Users × items.
        groups : sequence
            One label per user (row); ``None`` entries mean "unknown group".
        """
        if groups is None:
            raise ValueError("GroupPopularityRecommender.fit needs groups=, one label per user")
        x = check_csr(user_items)
        labels = [None if g is None else str(g) for g in groups]
        if len(labels) != x.shape[0]:
            raise ValueError(f"groups has {len(labels)} labels for {x.shape[0]} users")
        self.groups_ = sorted({g for g in labels if g is not None})
        index = {g: k for k, g in enumerate(self.groups_)}
        self.user_group_ = np.array([index.get(g, -1) for g in labels], dtype=np.int64)
        self.n_users_, self.n_items_ = x.shape
        overall = _item_counts(x, self.binary) / max(1, self.n_users_)
        counts, sizes = group_counts(x, self.user_group_, len(self.groups_), self.binary)
        m = float(self.shrinkage)
        self.group_popularity_ = (counts + m * overall) / (sizes + m)[:, None]
        self.item_popularity_ = overall
        return self

    def _score(
        self,
        ids: np.ndarray,
        user_items: sp.csr_matrix | None = None,
        groups: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Group popularity of each user's group.

        Parameters
        ----------
        groups : sequence, optional
            Labels for the requested users (e.g. a new resident's neighbourhood); overrides the
            training-time group. Without it, training users get their training group and
            unknown ids get overall popularity.
        """
        if groups is not None:
            labels = [groups] if isinstance(groups, str) or np.isscalar(groups) else groups
            index = {g: k for k, g in enumerate(self.groups_)}
            g_idx = np.array([index.get(str(g), -1) for g in labels], dtype=np.int64)
            if g_idx.size != ids.size:
                raise ValueError("groups must have one label per user id")
        else:
            known = (ids >= 0) & (ids < self.n_users_)
            g_idx = np.full(ids.size, -1, dtype=np.int64)
            g_idx[known] = self.user_group_[ids[known]]
        table = np.vstack([self.group_popularity_, self.item_popularity_[None, :]])
        return table[np.where(g_idx >= 0, g_idx, len(self.groups_))]


def additive_group_rates(counts: np.ndarray, sizes: np.ndarray, levels: np.ndarray,
                         l2: float = 10.0) -> np.ndarray:
    """Per group and item, the share of the group's users with the item, from a logistic
    model additive in the groups' attributes: ``logit p = b_item + Σ_f w_item[f, level_f]``.

    A segment (neighbourhood × age band × household) holds a few dozen residents, too few
    for its own counts — shrinking them towards the city, as
    :class:`GroupPopularityRecommender` does, mostly returns the city's list — but what
    sets residents' tastes apart is carried by the attributes one by one (families take
    childcare, students culture), which every segment sharing an attribute helps to
    measure. So the cells are pooled: each item's rate is fitted on all segments at once,
    with one effect per attribute level, and a segment with no residents still gets the
    rate its attributes predict.

    Parameters
    ----------
    counts : numpy.ndarray
        ``(groups, items)`` users of each group with each item.
    sizes : numpy.ndarray
        ``(groups,)`` users of each group (counts never exceed it).
    levels : numpy.ndarray
        ``(groups, attributes)`` integer level of each attribute of each group.
    l2 : float
        Weight of the L2 penalty on the attribute effects, in users: an effect needs about
        that many users' evidence to grow (the intercept is not penalised).

    Returns
    -------
    numpy.ndarray
        ``(groups, items)`` rates in ``[0, 1]``: 0 for an item no user has, 1 for one every
        user has, and the model's for the others.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if counts.shape[0] != len(sizes) or len(levels) != len(sizes):
        raise ValueError(f"counts {counts.shape}, sizes {sizes.shape} and levels "
                         f"{np.shape(levels)} must have one row per group")
    if np.any(counts > sizes[:, None]) or np.any(counts < 0):
        raise ValueError("counts must lie between 0 and the group's size")
    x = OneHotEncoder(sparse_output=False).fit_transform(np.asarray(levels))
    seen = sizes > 0
    rows = np.concatenate([x[seen], x[seen]])
    total = counts[seen].sum(axis=0)
    out = np.zeros(counts.shape)
    out[:, total >= sizes.sum()] = 1.0
    for item in np.flatnonzero((total > 0) & (total < sizes.sum())):
        taken = counts[seen, item]
        weights = np.concatenate([taken, sizes[seen] - taken])
        labels = np.concatenate([np.ones(len(taken)), np.zeros(len(taken))])
        keep = weights > 0
        model = LogisticRegression(C=1.0 / l2, max_iter=1000)
        model.fit(rows[keep], labels[keep], sample_weight=weights[keep])
        out[:, item] = model.predict_proba(x)[:, 1]
    return out
