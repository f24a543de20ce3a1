"""Hold-out splits: temporal for the city's own log (default), random per user for public data.

**Temporal** (:func:`temporal_split`): the model is trained on events strictly before the
cut-off ``T`` (decay measured from ``T``) and judged on what residents *took up* in the
next ``W`` weeks — events of ``positive_types`` (default subscribe, use, pay) in
``[T, T + W)``. The protocol is the one a deployed model faces: it only ever sees the past.

- *Masking*: items a resident already has a training confidence for, or holds at ``T``,
  are removed from their ranking (serving never re-offers a held bundle, and re-using a
  known service is not a discovery) and therefore also from their test positives, so a
  ranking is judged only on items it was allowed to show — and so are offers serving may
  not make them (not available where they live, eligibility they lack by their declared
  profile): a model is judged on the list serving would show, not on how it ranks what
  the filters remove anyway.
- *Positives*: with ``positives="organic"`` (the default) a take-up attributed to a
  recommendation (it carries a recommendation id) is not a positive: it says what the
  serving policy of the time chose to show as much as what the resident wanted, so a
  hold-out full of them judges a candidate by how closely it imitates that policy (under
  popular lists, popularity always wins). ``"all"`` counts every take-up.
- *Cold start*: consenting residents with test positives but no training history are not
  in the warm evaluation (no model can personalise them); they form a separate cold group,
  on which the fallbacks serving uses for them (popularity, popularity in their
  neighbourhood or segment) are evaluated and reported under ``*.cold.*``.
- Residents who withdrew consent or never gave it are in neither group.

**Random per user** (:func:`random_split`): each user's observed items are shuffled and a
fraction held out; for public datasets without time stamps.

A split's ``id`` hashes its definition, the raw events it covers, and its masks and
positives: two runs with the same split id were evaluated on exactly the same question,
so their metrics are comparable as they stand (see :mod:`bouquet.pipelines.registry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bouquet.models.confidence import ConfidenceRule
from bouquet.pipelines.dataset import (
    TYPES,
    Dataset,
    EventArrays,
    _ts_value,
    build_dataset,
)

log = logging.getLogger(__name__)

DEFAULT_POSITIVE_TYPES: tuple[str, ...] = ("subscribe", "use", "pay")
#: Weeks held out after the cut-off: what ``bouquet train`` evaluates candidates on.
DEFAULT_TEST_WEEKS = 4
#: Which take-ups are test positives: ``organic`` (not attributed to a recommendation) or
#: ``all``.
POSITIVES: tuple[str, ...] = ("organic", "all")


@dataclass
class ColdGroup:
    """Consenting residents with test positives and no training history."""

    services: sp.csr_matrix
    bundles: sp.csr_matrix
    neighbourhood: np.ndarray  # int16 catalog neighbourhood index, -1 undeclared
    segment: np.ndarray  # index into the catalog's segments, -1 undeclared

    @property
    def n_residents(self) -> int:
        return int(self.services.shape[0])


@dataclass
class Split:
    """A training set and the question it is judged on (positives and masks by row)."""

    definition: dict[str, Any]
    train: Dataset
    test_services: sp.csr_matrix
    test_bundles: sp.csr_matrix
    mask_services: sp.csr_matrix
    mask_bundles: sp.csr_matrix
    cold: ColdGroup | None = None
    id: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def truth(self, target: str) -> sp.csr_matrix:
        return self.test_services if target == "services" else self.test_bundles

    def mask(self, target: str) -> sp.csr_matrix:
        return self.mask_services if target == "services" else self.mask_bundles

    def describe(self) -> dict[str, Any]:
        """The split as logged to MLflow."""
        return {**self.definition, "id": self.id, **self.stats}


def default_cutoff(arrays: EventArrays, test_weeks: int) -> pd.Timestamp:
    """Midnight UTC ``test_weeks`` before the day after the latest event."""
    if arrays.n_events == 0:
        raise ValueError("the event log is empty: nothing to train on")
    last = pd.Timestamp(int(arrays.ts.max()), tz="UTC")
    return (last.floor("D") + pd.Timedelta(days=1)) - pd.Timedelta(weeks=test_weeks)


def temporal_split(
    arrays: EventArrays,
    params: ConfidenceRule,
    *,
    cutoff: pd.Timestamp | None = None,
    test_weeks: int = DEFAULT_TEST_WEEKS,
    positive_types: tuple[str, ...] = DEFAULT_POSITIVE_TYPES,
    positives: str = "organic",
) -> Split:
    """Train on events before ``cutoff``, test on positives in the next ``test_weeks``."""
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, not {positives!r}")
    cutoff = default_cutoff(arrays, test_weeks) if cutoff is None else pd.Timestamp(cutoff)
    if cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize("UTC")
    end = cutoff + pd.Timedelta(weeks=test_weeks)
    train = build_dataset(arrays, params, until=cutoff)
    if train.n_residents == 0:
        raise ValueError(f"no consenting resident has events before the cut-off "
                         f"{cutoff.isoformat()}: choose an earlier --cutoff or fewer test weeks")
    t0, t1 = _ts_value(cutoff), _ts_value(end)
    unknown = sorted(set(positive_types) - set(TYPES))
    if unknown:
        raise ValueError(f"unknown positive event types {unknown}")
    codes = np.array([TYPES.index(t) for t in positive_types], dtype=np.int8)
    in_test = (arrays.ts >= t0) & (arrays.ts < t1) & arrays.consent[arrays.resident] \
        & np.isin(arrays.kind, codes)
    if positives == "organic":
        in_test &= ~arrays.recommended

    row = np.full(len(arrays.resident_ids), -1, dtype=np.int64)
    row[train.codes] = np.arange(train.n_residents)
    mask_s = _union(train.services, train.held_services,
                    sp.csr_matrix(~arrays.offerable(train.codes, "services")))
    mask_b = _union(train.bundles, train.held_bundles,
                    sp.csr_matrix(~arrays.offerable(train.codes, "bundles")))
    test_s, cold_s = _positives(arrays, in_test, arrays.service, row, mask_s)
    test_b, cold_b = _positives(arrays, in_test, arrays.bundle, row, mask_b)

    cold_codes = np.union1d(cold_s[0], cold_b[0])
    cold = None
    if len(cold_codes):
        cold = ColdGroup(services=_cold_matrix(cold_s, cold_codes, len(arrays.service_ids)),
                         bundles=_cold_matrix(cold_b, cold_codes, len(arrays.bundle_ids)),
                         neighbourhood=arrays.neighbourhood_codes(cold_codes),
                         segment=arrays.segment_codes(cold_codes))
    definition = {
        "kind": "temporal",
        "cutoff": cutoff.isoformat(),
        "test_end": end.isoformat(),
        "test_weeks": int(test_weeks),
        "positive_types": list(positive_types),
        "positives": positives,
        "masking": "training positives, holdings at the cut-off, offers serving may not make",
        "cold_start": "separate group, popularity fallbacks only",
    }
    split = Split(definition=definition, train=train, test_services=test_s, test_bundles=test_b,
                  mask_services=mask_s, mask_bundles=mask_b, cold=cold)
    split.stats = {
        "train_residents": train.n_residents,
        "test_residents_services": int((np.diff(test_s.indptr) > 0).sum()),
        "test_residents_bundles": int((np.diff(test_b.indptr) > 0).sum()),
        "test_pairs_services": int(test_s.nnz),
        "test_pairs_bundles": int(test_b.nnz),
        "cold_residents": 0 if cold is None else cold.n_residents,
    }
    window = (arrays.ts < t1) & arrays.consent[arrays.resident]
    split.id = _split_id(definition, arrays.digest(window), [test_s, test_b, mask_s, mask_b])
    log.info("temporal split at %s: %d training residents, %d/%d test residents "
             "(services/bundles), %d cold", cutoff.date(), train.n_residents,
             split.stats["test_residents_services"], split.stats["test_residents_bundles"],
             split.stats["cold_residents"])
    return split


def random_split(matrix: sp.csr_matrix, *, test_fraction: float = 0.2, seed: int = 0,
                 min_items: int = 2) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out ``test_fraction`` of each user's items (users with ``min_items``+ items).

    Vectorised: one random key per non-zero, ranked within its row; the lowest
    ``round(fraction · n)`` (at least 1) of each eligible row go to the test matrix.
    """
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    rng = np.random.default_rng(seed)
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    order = np.lexsort((rng.random(matrix.nnz), rows))
    rank = np.empty(matrix.nnz, dtype=np.int64)
    rank[order] = np.arange(matrix.nnz) - matrix.indptr[rows[order]]
    n_test = np.where(counts >= min_items,
                      np.maximum(1, np.round(counts * test_fraction)).astype(np.int64), 0)
    is_test = rank < n_test[rows]
    coo = matrix.tocoo()
    test = sp.csr_matrix((coo.data[is_test], (coo.row[is_test], coo.col[is_test])),
                         shape=matrix.shape)
    train = sp.csr_matrix((coo.data[~is_test], (coo.row[~is_test], coo.col[~is_test])),
                          shape=matrix.shape)
    return train, test


# --- helpers -----------------------------------------------------------------------------


def _union(*matrices: sp.csr_matrix) -> sp.csr_matrix:
    """0/1 matrix of the pairs present in any of ``matrices``."""
    both = sum((m != 0).astype(np.float32) for m in matrices)
    both = sp.csr_matrix(both)
    both.data[:] = 1.0
    both.eliminate_zeros()
    return both


def _positives(arrays: EventArrays, in_test: np.ndarray, items: np.ndarray, row: np.ndarray,
               mask: sp.csr_matrix) -> tuple[sp.csr_matrix, tuple[np.ndarray, np.ndarray]]:
    """Warm test positives (train rows × items, masked pairs removed) and the cold pairs
    (resident codes, item indices) of residents without a training row."""
    sel = in_test & (items >= 0)
    codes, cols = arrays.resident[sel], items[sel].astype(np.int64)
    rows = row[codes]
    warm = rows >= 0
    n_items = mask.shape[1]
    truth = sp.csr_matrix((np.ones(int(warm.sum()), dtype=np.float32), (rows[warm], cols[warm])),
                          shape=(mask.shape[0], n_items))
    truth.sum_duplicates()
    truth.data[:] = 1.0
    truth = truth - truth.multiply(mask)
    truth.eliminate_zeros()
    return sp.csr_matrix(truth), (codes[~warm], cols[~warm])


def _cold_matrix(pairs: tuple[np.ndarray, np.ndarray], cold_codes: np.ndarray,
                 n_items: int) -> sp.csr_matrix:
    codes, cols = pairs
    rows = np.searchsorted(cold_codes, codes)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                           shape=(len(cold_codes), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _split_id(definition: dict[str, Any], events_digest: str,
              matrices: list[sp.csr_matrix]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(definition, sort_keys=True).encode())
    h.update(events_digest.encode())
    for matrix in matrices:
        matrix.sort_indices()
        h.update(matrix.indptr.tobytes())
        h.update(matrix.indices.tobytes())
    return h.hexdigest()[:16]

