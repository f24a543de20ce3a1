"""Synthetic residents of a catalog's city: public attributes and hidden tastes.

Everything is a column (numpy arrays, one row per resident), so a million residents
are drawn in about a second and take tens of megabytes; nothing here creates one
Python object per resident.

*Public* attributes are what a resident declares in a ``profile`` event (neighbourhood,
age band, household, student, low income) plus their personalisation consent. *Hidden*
tastes are latent factors that only the simulator knows: ``affinity = U @ V.T + bias``
over services, where the service factors ``V`` are structured by domain (one factor
per domain, plus a few cross-domain "lifestyle" factors). Domain structure is what gives
collaborative filtering a signal to learn: residents who use one mobility service tend
to use others. Demographics shift tastes (families lean to childhood services, students
to culture and sport, the eco-district to energy and environment) so that eligibility
and taste line up as they do in a real city.

Resident ids are pseudonymous: ``r`` + 10 hex digits, a seeded bijection of the row
index on 40 bits, so ids are unique within a run, differ between seeds and never
encode anything about the person.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bouquet.core.catalog import (
    AGE_BANDS,
    HOUSEHOLDS,
    Catalog,
    Domain,
    available_in,
    eligibility_failure,
)

log = logging.getLogger(__name__)

#: Cross-domain taste factors (beyond one factor per domain): car-free/active living,
#: digital-first, thrift, local community life.
LIFESTYLE_FACTORS = 4

#: Share of residents in each age band (order of ``AGE_BANDS``).
AGE_SHARES = np.array([0.14, 0.28, 0.36, 0.22])
#: Household by age band (rows: AGE_BANDS; columns: HOUSEHOLDS single, couple, family, shared).
HOUSEHOLD_BY_AGE = np.array([
    [0.42, 0.18, 0.08, 0.32],
    [0.32, 0.26, 0.36, 0.06],
    [0.24, 0.26, 0.47, 0.03],
    [0.45, 0.50, 0.04, 0.01],
])
#: Probability of being a student by age band.
STUDENT_BY_AGE = np.array([0.55, 0.07, 0.01, 0.0])
LOW_INCOME_BASE = 0.17
#: Personalisation consent is opt-in; this is the share who opt in.
CONSENT_RATE = 0.75

#: Demo-city neighbourhood priors: relative size and demographic tilts. A catalog with
#: other neighbourhood ids falls back to equal sizes and no tilt.
NEIGHBOURHOOD_PRIORS: dict[str, dict[str, float]] = {
    "centre": {"size": 1.3, "young": 0.3},
    "gare": {"size": 1.0, "young": 0.2},
    "rives": {"size": 1.1},
    "campus": {"size": 0.8, "young": 1.5, "student": 2.0},
    "faubourg": {"size": 1.2, "low_income": 2.0},
    "coteaux": {"size": 1.0, "family": 1.6, "old": 0.4},
    "port": {"size": 0.6, "low_income": 1.3},
    "jardins-du-canal": {"size": 0.5, "family": 1.3, "eco": 1.0},
}

#: Domain taste shifts by resident segment (added to the domain factor of the resident).
SEGMENT_SHIFTS: dict[str, dict[str, float]] = {
    "student": {"culture": 0.6, "sport": 0.4, "mobility": 0.4, "childhood": -0.6,
                "energy": -0.4},
    "family": {"childhood": 1.6, "sport": 0.3, "health": 0.2, "housing": 0.2},
    "senior": {"health": 0.9, "culture": 0.4, "civic": 0.3, "mobility": -0.3, "sport": -0.4},
    "young": {"mobility": 0.3, "culture": 0.2, "energy": -0.2},
    "low_income": {"civic": 0.4, "housing": 0.3, "payment": 0.3, "culture": -0.2},
    "eco": {"environment": 0.9, "energy": 0.8, "housing": 0.8, "mobility": 0.2},
}


@dataclass(frozen=True)
class ProfileClasses:
    """Every distinct combination of public attributes, with what it may have.

    Residents take one of ``n_neighbourhoods * 4 * 4 * 2 * 2`` attribute combinations;
    eligibility and zone rules are evaluated once per combination with the catalog's own
    :func:`eligibility_failure` and :func:`available_in` (the functions serving uses),
    then looked up by index — exact and vectorised.
    """

    neighbourhood: np.ndarray  # (C,) int16
    age_band: np.ndarray  # (C,) int8
    household: np.ndarray  # (C,) int8
    student: np.ndarray  # (C,) bool
    low_income: np.ndarray  # (C,) bool
    service_ok: np.ndarray  # (C, S) bool: available in the zone and eligible
    bundle_ok: np.ndarray  # (C, B) bool
    context_json: list[str]  # profile event context, canonical JSON

    @staticmethod
    def index(nb: np.ndarray, age: np.ndarray, hh: np.ndarray, student: np.ndarray,
              low: np.ndarray) -> np.ndarray:
        """Class index of residents from their attribute codes (vectorised)."""
        return ((((nb.astype(np.int32) * len(AGE_BANDS) + age) * len(HOUSEHOLDS) + hh) * 2
                 + student) * 2 + low).astype(np.int32)

    @classmethod
    def build(cls, catalog: Catalog) -> ProfileClasses:
        n_nb = len(catalog.neighbourhood_ids)
        grid = np.stack(np.meshgrid(np.arange(n_nb), np.arange(len(AGE_BANDS)),
                                    np.arange(len(HOUSEHOLDS)), [0, 1], [0, 1],
                                    indexing="ij"), -1).reshape(-1, 5)
        service_ok = np.zeros((len(grid), len(catalog.services)), bool)
        bundle_ok = np.zeros((len(grid), len(catalog.bundles)), bool)
        contexts = []
        for c, (nb, age, hh, st, low) in enumerate(grid):
            profile = {
                "neighbourhood": catalog.neighbourhood_ids[nb],
                "age_band": AGE_BANDS[age],
                "household": HOUSEHOLDS[hh],
                "student": bool(st),
                "low_income": bool(low),
            }
            contexts.append(json.dumps(profile, separators=(",", ":"), sort_keys=True))
            for j, service in enumerate(catalog.services):
                service_ok[c, j] = (available_in(service.zones, profile["neighbourhood"])
                                    and eligibility_failure(service.eligibility, profile) is None)
            for j, bundle in enumerate(catalog.bundles):
                bundle_ok[c, j] = (available_in(bundle.zones, profile["neighbourhood"])
                                   and eligibility_failure(bundle.eligibility, profile) is None)
        return cls(grid[:, 0].astype(np.int16), grid[:, 1].astype(np.int8),
                   grid[:, 2].astype(np.int8), grid[:, 3].astype(bool), grid[:, 4].astype(bool),
                   service_ok, bundle_ok, contexts)


@dataclass
class Residents:
    """N residents as columns. ``tastes`` and ``activity`` are hidden from every policy
    except the test oracle; everything else is what the resident declares."""

    seed: int
    ids: np.ndarray  # (N,) str, "r" + 10 hex
    neighbourhood: np.ndarray  # (N,) int16 index into catalog.neighbourhood_ids
    age_band: np.ndarray  # (N,) int8 index into AGE_BANDS
    household: np.ndarray  # (N,) int8 index into HOUSEHOLDS
    student: np.ndarray  # (N,) bool
    low_income: np.ndarray  # (N,) bool
    consent: np.ndarray  # (N,) bool, personalisation opt-in at the start
    activity: np.ndarray  # (N,) float32, heavy-tailed activity level (mean about 1)
    habit: np.ndarray  # (N,) float32 standard normal: propensity to several uses a day
    tastes: np.ndarray  # (N, K) float32 latent factors
    profile_class: np.ndarray  # (N,) int32 index into ProfileClasses

    def __len__(self) -> int:
        return len(self.ids)

    def public_table(self, catalog: Catalog) -> pa.Table:
        """Public attributes (no tastes, no activity) as an Arrow table."""
        return pa.table({
            "resident_id": pa.array(self.ids, pa.string()),
            "neighbourhood": pa.DictionaryArray.from_arrays(
                pa.array(self.neighbourhood.astype(np.int32)),
                pa.array(catalog.neighbourhood_ids)),
            "age_band": pa.DictionaryArray.from_arrays(
                pa.array(self.age_band.astype(np.int32)), pa.array(AGE_BANDS)),
            "household": pa.DictionaryArray.from_arrays(
                pa.array(self.household.astype(np.int32)), pa.array(HOUSEHOLDS)),
            "student": pa.array(self.student),
            "low_income": pa.array(self.low_income),
            "consent": pa.array(self.consent),
        })

    def write_parquet(self, path: Path, catalog: Catalog) -> Path:
        """Write the public attributes (for reports and tests) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.public_table(catalog), path, compression="zstd")
        return path

    def save_hidden(self, path: Path, world: TasteSpace) -> Path:
        """Save the hidden tastes and activity (closed-loop studies, never training)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=self.ids.astype("U11"), tastes=self.tastes,
                            activity=self.activity, habit=self.habit,
                            service_factors=world.service_factors,
                            service_bias=world.service_bias)
        return path


@dataclass(frozen=True)
class TasteSpace:
    """Service-side latent factors of a catalog: one domain factor plus lifestyle factors.

    ``affinity(U) = U @ service_factors.T + service_bias``; roughly standard normal per
    (resident, service), so ``exp(affinity)`` is a sensible relative usage weight.
    """

    domains: tuple[str, ...]
    service_factors: np.ndarray  # (S, K) float32
    service_bias: np.ndarray  # (S,) float32
    service_domain: np.ndarray  # (S,) int16 index into domains
    bundle_services: np.ndarray  # (B, S) bool membership

    @property
    def n_factors(self) -> int:
        return self.service_factors.shape[1]

    @classmethod
    def build(cls, catalog: Catalog, seed: int, popularity: np.ndarray) -> TasteSpace:
        domains = tuple(d.value for d in Domain)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A57E]))
        n_s = len(catalog.services)
        service_domain = np.array([domains.index(s.domain.value) for s in catalog.services],
                                  np.int16)
        factors = np.zeros((n_s, len(domains) + LIFESTYLE_FACTORS), np.float32)
        factors[np.arange(n_s), service_domain] = 1.0
        factors[:, len(domains):] = rng.normal(0, 0.6, (n_s, LIFESTYLE_FACTORS))
        bias = (0.35 * np.log(popularity) + rng.normal(0, 0.25, n_s)).astype(np.float32)
        membership = np.zeros((len(catalog.bundles), n_s), bool)
        index = {sid: j for j, sid in enumerate(catalog.service_ids)}
        for b, bundle in enumerate(catalog.bundles):
            membership[b, [index[s] for s in bundle.services]] = True
        return cls(domains, factors, bias - bias.mean(), service_domain, membership)

    def affinity(self, tastes: np.ndarray) -> np.ndarray:
        """Resident × service affinity for a block of residents (float32)."""
        return tastes @ self.service_factors.T + self.service_bias


def pseudonymous_ids(n: int, seed: int, start: int = 0) -> np.ndarray:
    """``r`` + 10 hex digits for rows ``start .. start+n-1``: a seeded bijection on 40 bits.

    Each step (add, xor-shift, multiply by an odd constant, modulo 2**40) is invertible,
    so distinct rows never collide, while the seed changes every id.
    """
    mask = np.uint64((1 << 40) - 1)
    keys = np.random.default_rng(np.random.SeedSequence([seed, 0x1D5])).integers(
        1, 1 << 40, size=3, dtype=np.uint64)
    x = (np.arange(start, start + n, dtype=np.uint64) + keys[0]) & mask
    with np.errstate(over="ignore"):
        for odd, shift in ((keys[1] | np.uint64(1), 19), (keys[2] | np.uint64(1), 23)):
            x ^= x >> np.uint64(shift)
            x = (x * odd) & mask
        x ^= x >> np.uint64(17)
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    chars = np.empty((n, 11), np.uint8)
    chars[:, 0] = ord("r")
    for k in range(10):
        chars[:, 10 - k] = digits[((x >> np.uint64(4 * k)) & np.uint64(15)).astype(np.intp)]
    return chars.view("S11").ravel().astype("U11")


def _categorical(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray | None = None,
                 size: int | None = None) -> np.ndarray:
    """Vectorised categorical draws: one row of ``probs`` per draw (``rows`` selects it)."""
    cdf = np.cumsum(probs, axis=-1)
    cdf /= cdf[..., -1:]
    if rows is None:
        u = rng.random(size)
        return np.searchsorted(cdf, u, side="right").clip(0, probs.shape[-1] - 1)
    u = rng.random(len(rows))
    return (u[:, None] >= cdf[rows]).sum(axis=1).clip(0, probs.shape[-1] - 1)


def generate_residents(catalog: Catalog, n: int, seed: int, world: TasteSpace,
                       classes: ProfileClasses, *, consent_rate: float = CONSENT_RATE,
                       activity_sigma: float = 1.6) -> Residents:
    """Draw ``n`` residents deterministically from ``seed`` (see the module docstring).

    ``activity`` is log-normal with median about 0.28 and heavy right tail
    (``activity_sigma``), normalised so its mean is 1: a few residents carry most of the
    activity, as in the real bike-share log.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E51D]))
    nb_ids = catalog.neighbourhood_ids
    priors = [NEIGHBOURHOOD_PRIORS.get(nid, {}) for nid in nb_ids]
    size = np.array([p.get("size", 1.0) for p in priors])
    nb = _categorical(rng, size / size.sum(), size=n).astype(np.int16)

    age_tilt = np.ones((len(nb_ids), len(AGE_BANDS)))
    for k, p in enumerate(priors):
        age_tilt[k, 0] += p.get("young", 0.0)
        age_tilt[k, 3] *= 1.0 - 0.5 * p.get("old", 0.0) if "old" in p else 1.0
    age_probs = AGE_SHARES[None, :] * age_tilt
    age = _categorical(rng, age_probs, rows=nb).astype(np.int8)

    hh_probs = np.repeat(HOUSEHOLD_BY_AGE[None], len(nb_ids), 0).copy()  # (nb, age, hh)
    for k, p in enumerate(priors):
        hh_probs[k, :, 2] *= p.get("family", 1.0)
    hh = _categorical(rng, hh_probs.reshape(-1, len(HOUSEHOLDS)),
                      rows=nb.astype(np.int32) * len(AGE_BANDS) + age).astype(np.int8)

    student_boost = np.array([p.get("student", 1.0) for p in priors])
    student = rng.random(n) < np.minimum(0.9, STUDENT_BY_AGE[age] * student_boost[nb])
    low_boost = np.array([p.get("low_income", 1.0) for p in priors])
    low_income = rng.random(n) < np.minimum(0.8, LOW_INCOME_BASE * low_boost[nb]
                                            * np.where(student, 1.6, 1.0))
    consent = rng.random(n) < consent_rate

    activity = rng.lognormal(0.0, activity_sigma, n)
    activity = (activity / np.exp(activity_sigma**2 / 2)).astype(np.float32)
    habit = rng.standard_normal(n).astype(np.float32)

    n_dom = len(world.domains)
    tastes = np.empty((n, world.n_factors), np.float32)
    tastes[:, :n_dom] = rng.normal(0.0, 0.8, (n, n_dom))
    tastes[:, n_dom:] = rng.normal(0.0, 0.8, (n, world.n_factors - n_dom))
    eco = np.array([p.get("eco", 0.0) for p in priors])[nb] > 0
    segments = {
        "student": student, "family": hh == HOUSEHOLDS.index("family"),
        "senior": age == AGE_BANDS.index("65+"), "young": age == AGE_BANDS.index("18-25"),
        "low_income": low_income, "eco": eco,
    }
    for segment, members in segments.items():
        for domain, shift in SEGMENT_SHIFTS[segment].items():
            tastes[members, world.domains.index(domain)] += shift

    profile_class = ProfileClasses.index(nb, age, hh, student, low_income)
    return Residents(seed, pseudonymous_ids(n, seed), nb, age, hh, student, low_income,
                     consent, activity, habit, tastes, profile_class)
