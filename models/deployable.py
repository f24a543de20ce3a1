"""The deployable-model contract: what training registers, publish scores and serving folds in.

Every model family Bouquet can serve implements :class:`DeployableModel`:

* **factor** models (:class:`~bouquet.models.factor.FactorModel`, ALS): resident, service
  and bundle vectors in one space; a resident's recent events are folded in by least
  squares;
* **linear** models (:class:`~bouquet.models.linear.LinearModel`, EASE, cross-view EASE,
  item kNN, the bundle scorer): item-to-item weight matrices; recent events are folded in
  by a product with the recent-event vector.

What every family shares lives here once: the ids and the bundle composition the model
was trained with, the :class:`~bouquet.models.confidence.ConfidenceRule` that built its
confidences (so serving folds in exactly as training counted), the popularity fallbacks
per neighbourhood, and the files. A model is saved as a directory ``meta.json`` +
``arrays.npz`` (no pickle: numpy and the standard library load it), and a **serving view**
(the same model without any resident's data) travels to Redis as one ``.npz`` blob.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp

from bouquet.models.confidence import ConfidenceRule, RecentEventLike, Strengths

FORMAT = "bouquet-model-artifact"
#: 1: factor models only (``dataset_params``, ``bundle_cf_factors``, ``gram`` arrays);
#: 2: a ``family`` and the ``rule``. Version 1 directories still load.
FORMAT_VERSION = 2
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
CITY = "_all"  # key of the city-wide popularity row / list
KINDS = ("b", "s")  # bundles, services: the two things a resident is offered


class RecentContributions(NamedTuple):
    """``values[r, j]``: what recent item ``sources[r]`` (``("s" | "b", index)``) adds to the
    ``j``-th asked item's recent score; no rows when nothing recent weighs."""

    sources: list[tuple[str, int]]
    values: np.ndarray


class ArtifactError(ValueError):
    """A directory or blob that is not a loadable model of this format."""


@dataclass(kw_only=True)
class DeployableModel(ABC):
    """A trained model with everything needed to score, fold in and explain it.

    ``kind`` arguments are ``"b"`` (bundles) or ``"s"`` (services). Rows are resident rows
    (``resident_ids`` order); a serving view has no residents.
    """

    family: ClassVar[str] = ""
    #: Arrays holding residents' data, one row per resident (absent from the serving view):
    #: the shared ones below and the family's own.
    resident_arrays: ClassVar[tuple[str, ...]] = (
        "resident_services", "resident_bundles", "service_drivers", "bundle_drivers")

    service_ids: list[str]
    bundle_ids: list[str]
    bundle_services: dict[str, list[str]]
    neighbourhoods: list[str]
    rule: ConfidenceRule
    #: ``(1 + neighbourhoods) × items``: the city-wide row, then one row per neighbourhood.
    popular_services: np.ndarray
    popular_bundles: np.ndarray
    resident_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    #: Catalog neighbourhood index per resident row, -1 when undeclared.
    resident_neighbourhood: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int16))
    #: The residents' training rows (confidences, as the model saw them) and, in the same
    #: structure, the event that drove each pair (:mod:`bouquet.models.reasons`).
    resident_services: sp.csr_matrix | None = None
    resident_bundles: sp.csr_matrix | None = None
    service_drivers: sp.csr_matrix | None = None
    bundle_drivers: sp.csr_matrix | None = None
    #: Provenance: model kind and parameters, catalog and dataset fingerprints, metrics…
    meta: dict[str, Any] = field(default_factory=dict)
    #: Segments (neighbourhood × age band × household, :func:`bouquet.core.profile.segment_id`)
    #: and their popularity, ``segments × items``: the cold start of consenting residents
    #: without history ("popular with residents like you"). Empty for models trained
    #: before segments existed.
    segments: list[str] = field(default_factory=list)
    segment_popular_services: np.ndarray | None = None
    segment_popular_bundles: np.ndarray | None = None
    #: Recommendations shown and taken per bundle, ``(1 + segments) × bundles`` (city-wide
    #: row first): the Beta–Bernoulli counts serving's exploration samples from.
    bundle_shown: np.ndarray | None = None
    bundle_taken: np.ndarray | None = None
    #: Use events per holder per week of each bundle, and per user per week of each
    #: service (:mod:`bouquet.models.cadence`): serving ranks bundles by expected cadence
    #: gain with the first, the outreach planner weighs every offer by both. Zeros (no
    #: weighting) for models trained before they were recorded.
    bundle_use_rate: np.ndarray | None = None
    service_use_rate: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.popular_services = np.asarray(self.popular_services, dtype=np.float32)
        self.popular_bundles = np.asarray(self.popular_bundles, dtype=np.float32)
        self.segments = list(self.segments)
        n_seg, n_s, n_b = len(self.segments), len(self.service_ids), len(self.bundle_ids)
        self.segment_popular_services = _table(self.segment_popular_services, (n_seg, n_s))
        self.segment_popular_bundles = _table(self.segment_popular_bundles, (n_seg, n_b))
        self.bundle_shown = _table(self.bundle_shown, (1 + n_seg, n_b))
        self.bundle_taken = _table(self.bundle_taken, (1 + n_seg, n_b))
        self.bundle_use_rate = np.zeros(n_b) if self.bundle_use_rate is None \
            else np.asarray(self.bundle_use_rate, dtype=np.float64)
        self.service_use_rate = np.zeros(n_s) if self.service_use_rate is None \
            else np.asarray(self.service_use_rate, dtype=np.float64)
        self.resident_ids = np.asarray(self.resident_ids, dtype=str)
        self.resident_neighbourhood = np.asarray(self.resident_neighbourhood, dtype=np.int16)
        n, n_s, n_b = len(self.resident_ids), len(self.service_ids), len(self.bundle_ids)
        self.resident_services = _rows(self.resident_services, (n, n_s), np.float32)
        self.resident_bundles = _rows(self.resident_bundles, (n, n_b), np.float32)
        self.service_drivers = _rows(self.service_drivers, (n, n_s), np.int64)
        self.bundle_drivers = _rows(self.bundle_drivers, (n, n_b), np.int64)
        self._check_shapes()

    # --- what a family implements -----------------------------------------------------
    @abstractmethod
    def score(self, rows: np.ndarray, kind: str) -> np.ndarray:
        """Scores of residents ``rows`` for every bundle (``b``) or service (``s``):
        ``(len(rows), n_items)`` float64, higher is better."""

    @abstractmethod
    def recent_scores(self, strengths: Strengths, kind: str) -> np.ndarray | None:
        """Every item's score for a resident whose history is ``strengths`` alone (the
        fold-in of recent events), float64; None when nothing weighs."""

    @abstractmethod
    def recent_contributions(self, strengths: Strengths, kind: str, items: Sequence[int]
                             ) -> RecentContributions:
        """How much each recent item adds to each of ``items``' :meth:`recent_scores` — the
        reasons of a re-ranked answer, for all its boosted items in one pass (a request
        names up to ``k`` of them, and one pass costs about what one item did)."""

    @abstractmethod
    def _contributions(self, row: int, kind: str, items: np.ndarray, services: np.ndarray,
                       bundles: np.ndarray) -> np.ndarray:
        """``(len(services) + len(bundles), len(items))``: how much each of the resident's
        history items (service indices, then bundle indices: their rows of the training
        matrices) adds to each item's score (the model's exact decomposition)."""

    @abstractmethod
    def _family_arrays(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        """The family's own arrays by name (sparse matrices allowed)."""

    @abstractmethod
    def _family_meta(self) -> dict[str, Any]:
        """The family's own scalars (JSON)."""

    @classmethod
    @abstractmethod
    def _from_parts(cls, common: dict[str, Any], meta: Mapping[str, Any],
                    arrays: Mapping[str, Any]) -> DeployableModel:
        """Rebuild from the shared fields, the family's meta and its arrays."""

    # --- shared ---------------------------------------------------------------------------
    @property
    def n_residents(self) -> int:
        return len(self.resident_ids)

    def item_ids(self, kind: str) -> list[str]:
        return self.bundle_ids if kind == "b" else self.service_ids

    @functools.cached_property
    def service_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.service_ids)}

    @functools.cached_property
    def bundle_index(self) -> dict[str, int]:
        return {b: i for i, b in enumerate(self.bundle_ids)}

    @functools.cached_property
    def bundle_members(self) -> list[list[int]]:
        """Service indices of each bundle, in the model's composition."""
        index = self.service_index
        return [[index[s] for s in self.bundle_services.get(b, ()) if s in index]
                for b in self.bundle_ids]

    @functools.cached_property
    def bundles_holding(self) -> list[frozenset[str]]:
        """Ids of the bundles that hold each service (by service index): a bundle event
        weighs on its services, so it can be the reason for one of them."""
        holding: list[set[str]] = [set() for _ in self.service_ids]
        for bundle_id, members in zip(self.bundle_ids, self.bundle_members, strict=True):
            for service in members:
                holding[service].add(bundle_id)
        return [frozenset(h) for h in holding]

    @functools.cached_property
    def _resident_index(self) -> Any:
        import pandas as pd

        return pd.Index(self.resident_ids)

    def resident_row(self, resident_id: str) -> int | None:
        """Row of a resident, None when the model never saw them."""
        try:
            row = self._resident_index.get_loc(resident_id)
        except KeyError:
            return None
        return int(row) if isinstance(row, (int, np.integer)) else None

    def strengths(self, events: Iterable[RecentEventLike], now: float) -> Strengths:
        """Recent events as strengths by the model's own rule and composition."""
        return self.rule.strengths(events, now, self.service_index, self.bundle_index,
                                   self.bundle_members)

    def popular_scores(self, kind: str) -> dict[str, np.ndarray]:
        """``{neighbourhood | "_all" | segment: scores}``: the no-consent fallbacks (city,
        neighbourhood) and the segment cold start of consenting residents."""
        table = self.popular_bundles if kind == "b" else self.popular_services
        segments = (self.segment_popular_bundles if kind == "b"
                    else self.segment_popular_services)
        return {**dict(zip([CITY, *self.neighbourhoods], table, strict=True)),
                **dict(zip(self.segments, segments, strict=True))}

    def without_residents(self, keep: np.ndarray) -> DeployableModel:
        """The same model with only the resident rows where ``keep`` is True (erasure: the
        other residents' scores do not depend on a removed row)."""
        keep = np.asarray(keep, dtype=bool)
        rows = {name: getattr(self, name)[keep] for name in self.resident_arrays}
        return replace(self, resident_ids=self.resident_ids[keep],
                       resident_neighbourhood=self.resident_neighbourhood[keep], **rows)

    def explain(self, rows: np.ndarray, kind: str, items: np.ndarray) -> np.ndarray:
        """For each resident row and each of its ``items`` (item indices, ``(len(rows), k)``;
        -1 entries ignored), the driver code of the resident's history item that adds most
        to that item's score, 0 when nothing the resident did adds to it (the model's score
        then comes from the population, not from them)."""
        items = np.asarray(items, dtype=np.int64)
        out = np.zeros(items.shape, dtype=np.int64)
        for n, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            s = self.resident_services.indices[self.resident_services.indptr[row]:
                                               self.resident_services.indptr[row + 1]]
            b = self.resident_bundles.indices[self.resident_bundles.indptr[row]:
                                              self.resident_bundles.indptr[row + 1]]
            wanted = items[n][items[n] >= 0]
            if not len(wanted) or not (len(s) or len(b)):
                continue
            contrib = self._contributions(row, kind, wanted, s, b)
            best = contrib.argmax(axis=0)
            positive = contrib[best, np.arange(len(wanted))] > 0
            drivers = np.concatenate([_row_data(self.service_drivers, row),
                                      _row_data(self.bundle_drivers, row)])
            out[n, :len(wanted)] = np.where(positive, drivers[best], 0)
        return out

    def serving_view(self) -> DeployableModel:
        """The same model without residents' data: what serving holds (and Redis stores)."""
        empty = {name: _empty_like(getattr(self, name)) for name in self.resident_arrays}
        return replace(self, resident_ids=np.zeros(0, dtype=str),
                       resident_neighbourhood=np.zeros(0, dtype=np.int16), **empty)

    def _check_shapes(self) -> None:
        n_nb = 1 + len(self.neighbourhoods)
        n_seg = len(self.segments)
        for name, shape in (("popular_services", (n_nb, len(self.service_ids))),
                            ("popular_bundles", (n_nb, len(self.bundle_ids))),
                            ("segment_popular_services", (n_seg, len(self.service_ids))),
                            ("segment_popular_bundles", (n_seg, len(self.bundle_ids))),
                            ("bundle_shown", (1 + n_seg, len(self.bundle_ids))),
                            ("bundle_taken", (1 + n_seg, len(self.bundle_ids))),
                            ("bundle_use_rate", (len(self.bundle_ids),)),
                            ("service_use_rate", (len(self.service_ids),)),
                            ("resident_neighbourhood", (len(self.resident_ids),))):
            if getattr(self, name).shape != shape:
                raise ArtifactError(f"{name} has shape {getattr(self, name).shape}, "
                                    f"expected {shape}")

    # --- files and blobs ----------------------------------------------------------------
    def _document(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {
            **self.meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "service_ids": list(self.service_ids),
            "bundle_ids": list(self.bundle_ids),
            "neighbourhoods": list(self.neighbourhoods),
            "segments": list(self.segments),
            "bundle_services": {b: list(self.bundle_services.get(b, ()))
                                for b in self.bundle_ids},
            "rule": self.rule.to_dict(),
            **self._family_meta(),
        }
        meta.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds"))
        arrays: dict[str, np.ndarray] = {
            "resident_ids": self.resident_ids,
            "resident_neighbourhood": self.resident_neighbourhood,
            "popular_services": self.popular_services,
            "popular_bundles": self.popular_bundles,
            "segment_popular_services": self.segment_popular_services,
            "segment_popular_bundles": self.segment_popular_bundles,
            "bundle_shown": self.bundle_shown,
            "bundle_taken": self.bundle_taken,
            "bundle_use_rate": self.bundle_use_rate,
            "service_use_rate": self.service_use_rate,
        }
        shared = {name: getattr(self, name) for name in DeployableModel.resident_arrays}
        for name, value in {**shared, **self._family_arrays()}.items():
            arrays.update(_flatten(name, value))
        meta["arrays"] = {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                          for name, a in arrays.items()}
        return meta, arrays

    def save(self, path: Path | str) -> Path:
        """Write ``meta.json`` and ``arrays.npz`` into directory ``path`` (each atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta, arrays = self._document()
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".arrays-", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, path / ARRAYS_FILE)
        tmp_meta = path / f".{META_FILE}.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default))
        os.replace(tmp_meta, path / META_FILE)
        return path

    def to_blob(self) -> bytes:
        """This model as one ``.npz`` (meta inside): publish stores the serving view so."""
        meta, arrays = self._document()
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.array(json.dumps(meta, default=_json_default)), **arrays)
        return buf.getvalue()


# --- loading ---------------------------------------------------------------------------------
_FAMILIES: dict[str, type[DeployableModel]] = {}


def register_family(cls: type[DeployableModel]) -> type[DeployableModel]:
    """Class decorator: make a family loadable by :func:`load_model_dir`/:func:`from_blob`."""
    _FAMILIES[cls.family] = cls
    return cls


def load_model_dir(path: Path | str) -> DeployableModel:
    """Load a model directory written by :meth:`DeployableModel.save` (or a format-1
    artifact of the first release)."""
    path = Path(path)
    meta_file, arrays_file = path / META_FILE, path / ARRAYS_FILE
    if not meta_file.is_file() or not arrays_file.is_file():
        raise ArtifactError(f"{path} is not a Bouquet model artifact (needs {META_FILE} and "
                            f"{ARRAYS_FILE})")
    meta = json.loads(meta_file.read_text())
    with np.load(arrays_file, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    return _assemble(meta, arrays, str(meta_file))


def find_model_dir(root: Path | str) -> Path:
    """Bouquet's model directory under ``root``: an MLflow Model's
    ``artifacts/bouquet_model`` (what ``bouquet train`` logs), or ``root`` itself (a plain
    directory, as the first release registered)."""
    root = Path(root)
    for candidate in (root / "artifacts" / "bouquet_model", root):
        if (candidate / META_FILE).is_file():
            return candidate
    raise ArtifactError(f"{root} holds no Bouquet model (no {META_FILE})")


def logged_model_id(source: str) -> str | None:
    """The MLflow logged model a registered version's source names (``models:/m-…``), None
    for a plain run artifact directory (the first release's registrations)."""
    found = source.removeprefix("models:/")
    return found if source.startswith("models:/") and "/" not in found else None


def model_location(client: Any, source: str) -> str:
    """The URI of a registered version's files: its logged model's artifact location, or
    the source itself. (MLflow resolves ``models:/m-…`` against the process's global tracking
    URI only; Bouquet passes the client of its own settings.)"""
    model_id = logged_model_id(source)
    return client.get_logged_model(model_id).artifact_location if model_id else source


def from_blob(blob: bytes) -> DeployableModel:
    """The model stored by :meth:`DeployableModel.to_blob`."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    if "__meta__" not in arrays:
        raise ArtifactError("the stored model has no meta document")
    meta = json.loads(str(arrays.pop("__meta__")))
    return _assemble(meta, arrays, "stored model")


def _assemble(meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str
              ) -> DeployableModel:
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{where}: format {meta.get('format')!r} is not {FORMAT!r}")
    version = int(meta.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{where}: format version {version} is newer than this Bouquet "
                            f"reads ({FORMAT_VERSION}); upgrade Bouquet")
    family = meta.get("family", "factor")  # format 1 held factor models only
    klass = _FAMILIES.get(family)
    if klass is None:
        _import_families()
        klass = _FAMILIES.get(family)
    if klass is None:
        raise ArtifactError(f"{where}: unknown model family {family!r}")
    rule = meta.get("rule") or meta.get("dataset_params")
    if rule is None:
        raise ArtifactError(f"{where}: no confidence rule recorded")
    try:
        common = {
            "service_ids": list(meta["service_ids"]),
            "bundle_ids": list(meta["bundle_ids"]),
            "bundle_services": {b: list(s) for b, s in meta["bundle_services"].items()},
            "neighbourhoods": list(meta["neighbourhoods"]),
            "rule": ConfidenceRule.from_dict(rule),
            "popular_services": arrays["popular_services"],
            "popular_bundles": arrays["popular_bundles"],
            "resident_ids": arrays["resident_ids"],
            "resident_neighbourhood": arrays["resident_neighbourhood"],
            # absent from models trained before segments existed
            "segments": list(meta.get("segments", [])),
            **{name: arrays.get(name) for name in _SEGMENT_ARRAYS},
        }
        unflat = _unflatten(arrays)
        common.update({name: unflat.get(name) for name in DeployableModel.resident_arrays})
    except KeyError as exc:
        raise ArtifactError(f"{where}: missing {exc}") from None
    provenance = {k: v for k, v in meta.items() if k not in _DOCUMENT_KEYS}
    common["meta"] = provenance
    return klass._from_parts(common, meta, unflat)


_DOCUMENT_KEYS = frozenset({"format", "format_version", "family", "service_ids",
                            "bundle_ids", "neighbourhoods", "segments", "bundle_services",
                            "rule", "dataset_params", "arrays"})
_SEGMENT_ARRAYS = ("segment_popular_services", "segment_popular_bundles", "bundle_shown",
                   "bundle_taken", "bundle_use_rate", "service_use_rate")


def _import_families() -> None:
    # The families register themselves on import; loading must not need the caller to
    # have imported them.
    import bouquet.models.factor  # noqa: F401
    import bouquet.models.linear  # noqa: F401


# --- helpers ---------------------------------------------------------------------------------
def _flatten(name: str, value: np.ndarray | sp.spmatrix) -> dict[str, np.ndarray]:
    """A dense array as itself; a sparse matrix as four arrays ``name.data`` etc."""
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        return {f"{name}.data": csr.data, f"{name}.indices": csr.indices,
                f"{name}.indptr": csr.indptr,
                f"{name}.shape": np.asarray(csr.shape, dtype=np.int64)}
    return {name: np.asarray(value)}


def _unflatten(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in arrays.items():
        if name.endswith(".shape"):
            base = name[:-len(".shape")]
            out[base] = sp.csr_matrix((arrays[f"{base}.data"], arrays[f"{base}.indices"],
                                       arrays[f"{base}.indptr"]),
                                      shape=tuple(int(v) for v in value))
        elif not name.endswith((".data", ".indices", ".indptr")):
            out[name] = value
    return out


def _rows(matrix: Any, shape: tuple[int, int], dtype: Any) -> sp.csr_matrix:
    """Residents' rows as canonical CSR of ``shape`` (None or an empty matrix: no rows)."""
    if matrix is None or (matrix.shape[0] == 0 and shape[0] == 0):
        return sp.csr_matrix(shape, dtype=dtype)
    out = sp.csr_matrix(matrix, dtype=dtype)
    if out.shape != shape:
        raise ArtifactError(f"resident rows have shape {out.shape}, expected {shape}")
    out.sort_indices()
    return out


def _table(value: Any, shape: tuple[int, int]) -> np.ndarray:
    """A float32 table of ``shape``; None (not recorded) is all zeros."""
    if value is None:
        return np.zeros(shape, dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def _row_data(matrix: sp.csr_matrix, row: int) -> np.ndarray:
    return matrix.data[matrix.indptr[row]:matrix.indptr[row + 1]]


def _empty_like(value: Any) -> Any:
    if sp.issparse(value):
        return sp.csr_matrix((0, value.shape[1]), dtype=value.dtype)
    value = np.asarray(value)
    return np.zeros((0, *value.shape[1:]), dtype=value.dtype)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
