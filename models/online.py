"""What a serving process holds of one published version, and the packed-list format.

``bouquet publish`` writes, beside every resident's precomputed lists, the model's serving
view (the :class:`~bouquet.models.deployable.DeployableModel` without any resident's data)
under the version's own key. A serving process therefore loads the model *and* the lists of
one version from one place, atomically with the pointer, and never needs MLflow on the
request path (MLflow down does not stop serving).

Lists are stored packed (8 bytes an entry: item index, reason index, float32 score) rather
than as JSON: see :func:`pack_list` and docs/serving.md for the measured sizes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bouquet.models.deployable import DeployableModel, from_blob

#: One entry of a packed list: index into the version's id list, index into its reason
#: vocabulary, score. Little-endian, 8 bytes.
ENTRY = np.dtype([("i", "<u2"), ("r", "<u2"), ("s", "<f4")])
_FORMAT = b"\x01"  # first byte of every packed list: format version


def pack_list(items: np.ndarray, scores: np.ndarray, reasons: np.ndarray | None = None) -> bytes:
    """Pack one ranked list (best first) into bytes."""
    out = np.empty(len(items), dtype=ENTRY)
    out["i"] = items
    out["r"] = 0 if reasons is None else reasons
    out["s"] = scores
    return _FORMAT + out.tobytes()


def pack_rows(items: np.ndarray, scores: np.ndarray, reasons: np.ndarray) -> list[bytes]:
    """Pack many lists of equal length at once (rows of 2-D arrays); returns one value per row."""
    n, k = items.shape
    out = np.empty((n, k), dtype=ENTRY)
    out["i"] = items
    out["r"] = reasons
    out["s"] = scores
    raw = out.tobytes()
    width = k * ENTRY.itemsize
    return [_FORMAT + raw[row * width:(row + 1) * width] for row in range(n)]


def unpack_list(raw: bytes | None) -> np.ndarray:
    """The entries of a packed list (empty for None or an unknown format)."""
    if not raw or raw[:1] != _FORMAT or (len(raw) - 1) % ENTRY.itemsize:
        return np.empty(0, dtype=ENTRY)
    return np.frombuffer(raw, dtype=ENTRY, offset=1)


@dataclass(frozen=True)
class Audience:
    """What a published version gives a consenting resident of a personalising variant:
    written to the version's meta by publish, read back by serving and the outreach
    planner (one representation for the three).

    ``personalised``: their own precomputed list, re-ranked by their recent events (a
    champion's version). ``segment_lists``: when they have no list of their own, the popular
    list of their segment rather than their neighbourhood's — always for a personalised
    version; for a version published without a champion only when the segment lists beat
    popularity on the training run's hold-out
    (:func:`~bouquet.pipelines.promotion.decide_segment_lists`).
    """

    personalised: bool = True
    segment_lists: bool = True

    @property
    def tailors(self) -> bool:
        """Anything beyond the popular lists of where the resident lives."""
        return self.personalised or self.segment_lists

    def as_meta(self) -> dict[str, str]:
        return {"personalised": "1" if self.personalised else "0",
                "segment_lists": "1" if self.tailors else "0"}

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Audience:
        """Read back; a version published before segment lists were gated serves them
        exactly when it is personalised."""
        personalised = meta.get("personalised", "1") != "0"
        segment = meta.get("segment_lists", "1" if personalised else "0") == "1"
        return cls(personalised, personalised or segment)


@dataclass
class PublishedVersion:
    """One published keyspace version as a serving process holds it (immutable once
    loaded): its model's serving view, its reason vocabulary and its popular lists."""

    version: str
    model_version: str
    run_id: str
    model: DeployableModel
    reason_vocab: list[str]
    published_at: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    #: Popular lists of this version: (kind, neighbourhood) -> packed entries.
    popular: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @property
    def bundle_ids(self) -> list[str]:
        return self.model.bundle_ids

    @functools.cached_property
    def audience(self) -> Audience:
        """Read once: a loaded version does not change, and every answer asks."""
        return Audience.from_meta(self.meta)

    @property
    def personalised(self) -> bool:
        """False for a popular-lists-only version (published while there is no champion)."""
        return self.audience.personalised

    @property
    def service_ids(self) -> list[str]:
        return self.model.service_ids

    @classmethod
    def from_stored(cls, version: str, meta: Mapping[str, str], blob: bytes
                    ) -> PublishedVersion:
        """Rebuild from a version's meta hash and model blob (as written by publish)."""
        return cls(version=version, model_version=meta["model_version"],
                   run_id=meta.get("run_id", ""), model=from_blob(blob),
                   reason_vocab=json.loads(meta["reason_vocab"]),
                   published_at=meta.get("published_at", ""), meta=dict(meta))


def decode_meta(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash reply (bytes keys and values) as ``str -> str``."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in raw.items()}
