"""The deployable model artifact: what serving and publish load, without the training code.

A directory with two files (no pickle anywhere)::

    meta.json    format/version, model kind and parameters, the confidence rule (event
                 weights, half-life, log_alpha, spreading), ALS regularisation and alpha,
                 id lists (services, bundles, neighbourhoods), bundle composition, bundle
                 scoring weights, catalog version/fingerprint, dataset fingerprint, split
                 id, metrics, git commit, array shapes
    arrays.npz   resident_ids (str), resident_factors (n × f), resident_neighbourhood
                 (int16), service_factors (S × f), bundle_factors (B × f, the *scoring*
                 vectors), bundle_cf_factors (B × f, the learned part), gram (f × f, YᵀY of
                 the service factors), popular_services ((1+N) × S), popular_bundles
                 ((1+N) × B) — row 0 city-wide, then one row per neighbourhood

Scoring is linear in a resident vector ``u`` in the service factor space:

    service score(s) = u · y_s
    bundle score(b)  = u · v_b,   v_b = w_cf · x_b + w_aff · mean_{s ∈ b} y_s

(``x_b`` = learned bundle factors in the same space, ``w_cf``/``w_aff`` in meta.json; the
mean may be a size-normalised sum, ``aggregation_norm``), so
``bundle_factors`` is all a dot product needs, and a resident seen a second ago gets a
vector by the ALS fold-in of their recent service confidences (:meth:`Artifact.fold_in`)
with the precomputed Gram matrix. The reason of a bundle is the member service with the
largest ``u · y_s`` ("because you use …"). See docs/training.md.

The confidence rule lives here too, not in :mod:`bouquet.pipelines`, because training and
serving must apply it identically; the artifact records its parameters.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9
FORMAT = "bouquet-model-artifact"
FORMAT_VERSION = 1
META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
CITY = "_all"  # key of the city-wide popularity row / list
ARRAY_NAMES: tuple[str, ...] = (
    "resident_ids", "resident_factors", "resident_neighbourhood", "service_factors",
    "bundle_factors", "bundle_cf_factors", "gram", "popular_services", "popular_bundles",
)


class ArtifactError(ValueError):
    """A directory that is not a loadable artifact of this format."""


# --- the confidence rule -----------------------------------------------------------------


def decay_factor(age_days: np.ndarray | float, half_life_days: float | None) -> np.ndarray:
    """``0.5 ** (age / half_life)``: an event loses half its weight every half-life.

    Ages below zero (an event after the reference time, e.g. clock skew) count as fresh.
    ``half_life_days`` of ``None`` or ``0`` disables decay.
    """
    age = np.maximum(np.asarray(age_days, dtype=np.float64), 0.0)
    if not half_life_days:
        return np.ones_like(age)
    return np.exp2(-age / float(half_life_days))


def confidence(strength: np.ndarray | float, log_alpha: float) -> np.ndarray:
    """Confidence of a (resident, item) pair from its *strength*.

    ``strength`` = Σ over the pair's events of ``weight(type) · decay(age)``; the confidence
    is ``1 + log_alpha · log1p(strength)`` (Hu, Koren & Volinsky's log scaling): repeated
    events add diminishing returns, so a daily bus rider does not drown every other signal,
    and every observed pair is at least 1 — implicit's ALS reads a stored value as the
    pair's total confidence against an unobserved baseline of 1. Pairs of zero strength
    (only weight-0 events such as ``dismiss``) are not observations and are never stored.
    """
    s = np.asarray(strength, dtype=np.float64)
    return 1.0 + float(log_alpha) * np.log1p(s)


# --- the artifact ------------------------------------------------------------------------


@dataclass
class Recommendation:
    """One ranked item with the reason serving can show."""

    item_id: str
    score: float
    reason_service: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.item_id, "score": self.score, "because_of": self.reason_service}


@dataclass
class Artifact:
    """A loaded (or about to be saved) model artifact. Arrays are numpy, ids are str."""

    meta: dict[str, Any]
    resident_ids: np.ndarray
    resident_factors: np.ndarray
    resident_neighbourhood: np.ndarray
    service_factors: np.ndarray
    bundle_factors: np.ndarray
    bundle_cf_factors: np.ndarray
    gram: np.ndarray
    popular_services: np.ndarray
    popular_bundles: np.ndarray
    _resident_index: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ARRAY_NAMES:
            if name not in ("resident_ids", "resident_neighbourhood"):
                setattr(self, name, np.ascontiguousarray(getattr(self, name), np.float32))
        self.resident_ids = np.asarray(self.resident_ids, dtype=str)
        self.resident_neighbourhood = np.asarray(self.resident_neighbourhood, dtype=np.int16)
        self._check()

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        resident_ids: Sequence[str] | np.ndarray,
        resident_factors: np.ndarray,
        service_factors: np.ndarray,
        bundle_cf_factors: np.ndarray | None,
        service_ids: Sequence[str],
        bundle_ids: Sequence[str],
        bundle_services: Mapping[str, Sequence[str]],
        neighbourhoods: Sequence[str],
        popular_services: np.ndarray,
        popular_bundles: np.ndarray,
        resident_neighbourhood: np.ndarray | None = None,
        bundle_factors: np.ndarray | None = None,
        cf_weight: float = 1.0,
        affinity_weight: float = 1.0,
        aggregation_norm: float = 1.0,
        regularization: float,
        alpha: float = 1.0,
        dataset_params: Mapping[str, Any],
        model_kind: str,
        model_params: Mapping[str, Any],
        extra_meta: Mapping[str, Any] | None = None,
    ) -> Artifact:
        """Assemble an artifact from fitted arrays; computes the Gram matrix, and the bundle
        scoring vectors ``cf_weight · x_b + affinity_weight · Σ_s L_bs y_s`` (``L`` = the
        composition over ``|b| ** aggregation_norm``) unless ``bundle_factors`` is given."""
        service_factors = np.asarray(service_factors, dtype=np.float32)
        f = service_factors.shape[1]
        n_b = len(bundle_ids)
        cf = np.zeros((n_b, f), np.float32) if bundle_cf_factors is None \
            else np.asarray(bundle_cf_factors, np.float32)
        if bundle_factors is None:
            members = composition_means(bundle_ids, bundle_services, service_ids,
                                        service_factors, aggregation_norm)
            scoring = float(cf_weight) * cf + float(affinity_weight) * members
        else:
            scoring = np.asarray(bundle_factors, np.float32)
        y = service_factors.astype(np.float64)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_kind": model_kind,
            "model_params": dict(model_params),
            "dataset_params": dict(dataset_params),
            "regularization": float(regularization),
            "alpha": float(alpha),
            "factors": int(f),
            "service_ids": list(service_ids),
            "bundle_ids": list(bundle_ids),
            "neighbourhoods": list(neighbourhoods),
            "bundle_services": {b: list(bundle_services.get(b, ())) for b in bundle_ids},
            "bundle_scoring": {
                "formula": "u · (cf_weight · x_b + affinity_weight · "
                           "sum_{s in b} y_s / |b| ** aggregation_norm)",
                "cf_weight": float(cf_weight),
                "affinity_weight": float(affinity_weight),
                "aggregation_norm": float(aggregation_norm),
                "learned_bundle_factors": bundle_cf_factors is not None,
            },
            **dict(extra_meta or {}),
        }
        n = len(resident_ids)
        return cls(
            meta=meta, resident_ids=np.asarray(resident_ids, dtype=str),
            resident_factors=np.asarray(resident_factors, np.float32).reshape(n, f),
            resident_neighbourhood=np.full(n, -1, np.int16) if resident_neighbourhood is None
            else resident_neighbourhood,
            service_factors=service_factors, bundle_factors=scoring, bundle_cf_factors=cf,
            gram=(y.T @ y).astype(np.float32),
            popular_services=popular_services, popular_bundles=popular_bundles,
        )

    def _check(self) -> None:
        f = self.service_factors.shape[1]
        n_s, n_b = len(self.service_ids), len(self.bundle_ids)
        expected = {
            "resident_factors": (len(self.resident_ids), f),
            "service_factors": (n_s, f),
            "bundle_factors": (n_b, f),
            "bundle_cf_factors": (n_b, f),
            "gram": (f, f),
            "popular_services": (1 + len(self.neighbourhoods), n_s),
            "popular_bundles": (1 + len(self.neighbourhoods), n_b),
        }
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ArtifactError(f"{name} has shape {got}, expected {shape}")
        if self.resident_neighbourhood.shape != (len(self.resident_ids),):
            raise ArtifactError("resident_neighbourhood does not match resident_ids")

    # --- what meta.json says -----------------------------------------------------------------
    @property
    def service_ids(self) -> list[str]:
        return self.meta["service_ids"]

    @property
    def bundle_ids(self) -> list[str]:
        return self.meta["bundle_ids"]

    @property
    def neighbourhoods(self) -> list[str]:
        return self.meta["neighbourhoods"]

    @property
    def bundle_services(self) -> dict[str, list[str]]:
        return self.meta["bundle_services"]

    @property
    def regularization(self) -> float:
        return float(self.meta["regularization"])

    @property
    def alpha(self) -> float:
        return float(self.meta["alpha"])

    @property
    def log_alpha(self) -> float:
        return float(self.meta["dataset_params"]["log_alpha"])

    @property
    def half_life_days(self) -> float | None:
        return self.meta["dataset_params"].get("half_life_days")

    @property
    def event_weights(self) -> dict[str, float]:
        return dict(self.meta["dataset_params"]["event_weights"])

    @property
    def model_kind(self) -> str:
        return self.meta["model_kind"]

    @property
    def popular(self) -> dict[str, dict[str, np.ndarray]]:
        """``{"b" | "s": {neighbourhood | "_all": scores}}`` — the cold-start fallbacks."""
        names = [CITY, *self.neighbourhoods]
        return {"b": dict(zip(names, self.popular_bundles, strict=True)),
                "s": dict(zip(names, self.popular_services, strict=True))}

    # --- residents -----------------------------------------------------------------------------
    def resident_row(self, resident_id: str) -> int | None:
        """Row of a resident in ``resident_factors``, None when the model never saw them."""
        if self._resident_index is None:
            import pandas as pd

            self._resident_index = pd.Index(self.resident_ids)
        try:
            row = self._resident_index.get_loc(resident_id)
        except KeyError:
            return None
        return int(row) if isinstance(row, (int, np.integer)) else None

    def resident_vector(self, resident_id: str) -> np.ndarray | None:
        row = self.resident_row(resident_id)
        return None if row is None else self.resident_factors[row]

    # --- real time -----------------------------------------------------------------------------
    def strengths(self, events: Iterable[Mapping[str, Any]], now: datetime | float | None = None
                  ) -> dict[int, float]:
        """``{service_index: strength}`` of recent events (dicts with ``type``,
        ``service_id``/``bundle_id`` and ``ts`` as epoch seconds or datetime), by the
        training rule: weight · decay, bundle-only events shared over their services."""
        now_s = _epoch_s(now) if now is not None else datetime.now(UTC).timestamp()
        weights = self.event_weights
        half_life = self.half_life_days
        spread = self.meta["dataset_params"].get("spread_bundle_events", True)
        s_index = {s: i for i, s in enumerate(self.service_ids)}
        out: dict[int, float] = {}
        for event in events:
            weight = float(weights.get(event.get("type", ""), 0.0))
            if weight <= 0:
                continue
            ts = event.get("ts")
            if ts is not None:
                age = max(now_s - _epoch_s(ts), 0.0) / 86_400
                weight *= float(decay_factor(age, half_life))
            service, bundle = event.get("service_id"), event.get("bundle_id")
            if service is not None:
                if service in s_index:
                    out[s_index[service]] = out.get(s_index[service], 0.0) + weight
            elif bundle is not None and spread:
                members = [s_index[s] for s in self.bundle_services.get(bundle, ())
                           if s in s_index]
                for i in members:
                    out[i] = out.get(i, 0.0) + weight / len(members)
        return out

    def fold_in(self, strengths: Mapping[int, float] | Mapping[str, float]) -> np.ndarray | None:
        """Resident vector from service strengths alone (pure ALS least squares).

        ``u = (YᵀY + λI + Yᵣᵀ(Cᵣ − I)Yᵣ)⁻¹ Yᵣᵀ cᵣ`` with ``c = alpha · confidence(strength)``:
        the normal equations implicit's ALS solves for a user, restricted to the services
        in ``strengths`` (keys: service index or id). None when nothing weighs.
        """
        if not strengths:
            return None
        s_index = {s: i for i, s in enumerate(self.service_ids)}
        idx, s = [], []
        for key, value in strengths.items():
            i = s_index.get(key) if isinstance(key, str) else int(key)
            if i is not None and value > 0:
                idx.append(i)
                s.append(float(value))
        if not idx:
            return None
        c = self.alpha * confidence(np.array(s), self.log_alpha)
        y = self.service_factors[np.array(idx)].astype(np.float64)
        f = y.shape[1]
        a = self.gram.astype(np.float64) + self.regularization * np.eye(f) + (y.T * (c - 1)) @ y
        return np.linalg.solve(a, y.T @ c).astype(np.float32)

    # --- scoring -------------------------------------------------------------------------------
    def score_bundles(self, users: np.ndarray) -> np.ndarray:
        """Bundle scores of resident vectors ``users`` ((n, f) or (f,))."""
        return np.asarray(users, np.float32) @ self.bundle_factors.T

    def score_services(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(users, np.float32) @ self.service_factors.T

    def bundle_reasons(self, users: np.ndarray) -> np.ndarray:
        """Per (resident, bundle) the index of the member service with the largest
        ``u · y_s`` — the "because you use …" of the answer; -1 for an empty bundle."""
        users = np.atleast_2d(np.asarray(users, np.float32))
        affinity = users @ self.service_factors.T  # (n, S)
        members = self._members()  # (B, width), -1 padded
        valid = members >= 0
        gathered = affinity[:, np.where(valid, members, 0)]  # (n, B, width)
        gathered = np.where(valid[None], gathered, -np.inf)
        best = np.take_along_axis(members[None].repeat(len(users), 0),
                                  gathered.argmax(axis=2)[..., None], axis=2)[..., 0]
        return best

    def recommend_bundles(
        self,
        user: np.ndarray | None,
        *,
        k: int = 5,
        exclude: Iterable[str] = (),
        neighbourhood: str | None = None,
        allowed: Iterable[str] | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` bundles of one resident vector (None → popular in ``neighbourhood``),
        never one of ``exclude`` (holdings, dismissed), only ``allowed`` when given."""
        if user is None:
            row = 1 + self.neighbourhoods.index(neighbourhood) \
                if neighbourhood in self.neighbourhoods else 0
            scores = self.popular_bundles[row].astype(np.float64)
            reasons = np.full(len(scores), -1)
        else:
            scores = self.score_bundles(user).astype(np.float64).ravel()
            reasons = self.bundle_reasons(user)[0]
        ids = self.bundle_ids
        keep = np.ones(len(ids), dtype=bool)
        blocked = set(exclude)
        permitted = None if allowed is None else set(allowed)
        for i, b in enumerate(ids):
            if b in blocked or (permitted is not None and b not in permitted):
                keep[i] = False
        order = [i for i in np.argsort(-scores, kind="stable") if keep[i]][:k]
        return [Recommendation(ids[i], float(scores[i]),
                               self.service_ids[reasons[i]] if reasons[i] >= 0 else None)
                for i in order]

    def _members(self) -> np.ndarray:
        s_index = {s: i for i, s in enumerate(self.service_ids)}
        rows = [[s_index[s] for s in self.bundle_services.get(b, ()) if s in s_index]
                for b in self.bundle_ids]
        width = max((len(r) for r in rows), default=1) or 1
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    # --- files -----------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write ``meta.json`` and ``arrays.npz`` into directory ``path`` (atomically each)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in ARRAY_NAMES}
        meta = dict(self.meta)
        meta["arrays"] = {name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                          for name, a in arrays.items()}
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".arrays-", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
        os.replace(tmp, path / ARRAYS_FILE)
        tmp_meta = path / f".{META_FILE}.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1, sort_keys=True, default=_json_default))
        os.replace(tmp_meta, path / META_FILE)
        return path


def load_artifact(path: Path | str) -> Artifact:
    """Load an artifact directory written by :meth:`Artifact.save` (no pickle, no training
    code: numpy and the standard library are all it needs)."""
    path = Path(path)
    meta_file, arrays_file = path / META_FILE, path / ARRAYS_FILE
    if not meta_file.is_file() or not arrays_file.is_file():
        raise ArtifactError(f"{path} is not a Bouquet model artifact (needs {META_FILE} and "
                            f"{ARRAYS_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_file}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(f"{meta_file}: format version {meta['format_version']} is newer "
                            f"than this Bouquet reads ({FORMAT_VERSION}); upgrade Bouquet")
    with np.load(arrays_file, allow_pickle=False) as npz:
        missing = [name for name in ARRAY_NAMES if name not in npz.files]
        if missing:
            raise ArtifactError(f"{arrays_file} lacks arrays {missing}")
        arrays = {name: npz[name] for name in ARRAY_NAMES}
    meta.pop("arrays", None)
    return Artifact(meta=meta, **arrays)


def composition_means(bundle_ids: Sequence[str], bundle_services: Mapping[str, Sequence[str]],
                      service_ids: Sequence[str], service_factors: np.ndarray,
                      norm: float = 1.0) -> np.ndarray:
    """Per bundle the sum of its member services' factors over ``|b| ** norm`` (1: the
    mean; zeros for an empty bundle)."""
    index = {s: i for i, s in enumerate(service_ids)}
    out = np.zeros((len(bundle_ids), service_factors.shape[1]), dtype=np.float32)
    for row, bundle in enumerate(bundle_ids):
        members = [index[s] for s in bundle_services.get(bundle, ()) if s in index]
        if members:
            out[row] = service_factors[members].sum(axis=0) / len(members) ** float(norm)
    return out


def _epoch_s(moment: datetime | float | int) -> float:
    if isinstance(moment, datetime):
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    return float(moment)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
