"""The catalog: services, the bundles made of them, and who may have each.

Every part of Bouquet (simulator, consumer validation, training, serving, reports) reads
the catalog through :func:`load_catalog`, so an operator replaces the demo city by
pointing ``BOUQUET_CATALOG_PATH`` at their own JSON file. A bad file is refused with a
precise message naming the entry and the field, because catalog files are edited by hand.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Domain(StrEnum):
    MOBILITY = "mobility"
    ENERGY = "energy"
    HOUSING = "housing"  # housing & concierge
    PAYMENT = "payment"
    CULTURE = "culture"
    SPORT = "sport"
    HEALTH = "health"
    CHILDHOOD = "childhood"  # childhood & education
    ENVIRONMENT = "environment"  # waste & environment
    CIVIC = "civic"  # civic administration


class AggregationFactor(StrEnum):
    """Where the aggregator's hold on the service comes from (see MISSION.md)."""

    DATA = "data"
    INFRASTRUCTURE = "infrastructure"
    LAND = "land"


AgeBand = Literal["18-25", "26-40", "41-64", "65+"]
AGE_BANDS: tuple[str, ...] = ("18-25", "26-40", "41-64", "65+")
Household = Literal["single", "couple", "family", "shared"]
HOUSEHOLDS: tuple[str, ...] = ("single", "couple", "family", "shared")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Eligibility(_Strict):
    """Who may have a service or bundle. An empty rule admits everyone."""

    age_bands: list[AgeBand] | None = None
    student: bool | None = Field(default=None, description="True: students only")
    low_income: bool | None = Field(default=None, description="True: low-income only")
    households: list[Household] | None = None
    resident_zones: list[str] | None = Field(
        default=None, description="Only residents living in these neighbourhoods"
    )


class Price(_Strict):
    model: Literal["free", "per_use", "monthly", "annual", "post_paid"]
    amount_eur: float = Field(ge=0)
    cap_eur_month: float | None = Field(default=None, ge=0, description="post-paid best fare cap")


class Neighbourhood(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)


class Service(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)
    domain: Domain
    partner: str = Field(min_length=1)
    aggregation_factor: AggregationFactor
    zones: list[str] = Field(min_length=1, description="neighbourhood ids, or ['*'] for all")
    eligibility: Eligibility = Field(default_factory=Eligibility)
    price: Price


class Bundle(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)
    description: str = ""
    domain: Domain = Field(description="primary domain, for reports")
    services: list[str] = Field(min_length=2)
    price: Price
    zones: list[str] = Field(min_length=1)
    eligibility: Eligibility = Field(default_factory=Eligibility)


class Catalog(_Strict):
    """A validated catalog; look-ups by id are O(1) through the ``*_by_id`` maps."""

    version: str = Field(min_length=1)
    city: str
    neighbourhoods: list[Neighbourhood] = Field(min_length=1)
    services: list[Service] = Field(min_length=1)
    bundles: list[Bundle] = Field(min_length=1)

    @functools.cached_property
    def service_by_id(self) -> dict[str, Service]:
        return {s.id: s for s in self.services}

    @functools.cached_property
    def bundle_by_id(self) -> dict[str, Bundle]:
        return {b.id: b for b in self.bundles}

    @functools.cached_property
    def neighbourhood_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.neighbourhoods)

    @functools.cached_property
    def service_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.services)

    @functools.cached_property
    def bundle_ids(self) -> tuple[str, ...]:
        return tuple(b.id for b in self.bundles)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash, logged with every model so a run names the catalog it saw."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def domain_of(self, service_id: str | None, bundle_id: str | None) -> str | None:
        """Service domain of an event (a bundle event counts in the bundle's primary domain)."""
        if service_id and service_id in self.service_by_id:
            return self.service_by_id[service_id].domain.value
        if bundle_id and bundle_id in self.bundle_by_id:
            return self.bundle_by_id[bundle_id].domain.value
        return None

    def aggregation_factor_of(self, service_id: str | None, bundle_id: str | None) -> str | None:
        """Aggregation factor of an event; a bundle takes its first service's factor."""
        if service_id and service_id in self.service_by_id:
            return self.service_by_id[service_id].aggregation_factor.value
        if bundle_id and bundle_id in self.bundle_by_id:
            first = self.bundle_by_id[bundle_id].services[0]
            return self.service_by_id[first].aggregation_factor.value
        return None


class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the entry and the field."""


def available_in(zones: Iterable[str], neighbourhood: str | None) -> bool:
    """True when an offer listed for ``zones`` can be had in ``neighbourhood``."""
    zones = list(zones)
    return "*" in zones or (neighbourhood is not None and neighbourhood in zones)


def eligibility_failure(rule: Eligibility, profile: dict[str, Any]) -> str | None:
    """Why a resident with ``profile`` may not have an offer, or None when they may.

    ``profile`` keys: age_band, household, student, low_income, neighbourhood. Unknown
    attributes never grant a restricted offer: a rule on an attribute the resident has
    not declared fails, because offering a student pass to someone who may not be a
    student is the worse mistake.
    """
    if rule.age_bands is not None and profile.get("age_band") not in rule.age_bands:
        return f"age band must be one of {', '.join(rule.age_bands)}"
    if rule.student and not profile.get("student"):
        return "students only"
    if rule.low_income and not profile.get("low_income"):
        return "low-income residents only"
    if rule.households is not None and profile.get("household") not in rule.households:
        return f"household must be one of {', '.join(rule.households)}"
    if rule.resident_zones is not None and profile.get("neighbourhood") not in rule.resident_zones:
        return "residents of " + ", ".join(rule.resident_zones) + " only"
    return None


def _entry_label(raw: Any, loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as ``services[3] (id='bike-share').zones``."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and "id" in node:
                parts[-1] += f" (id={node['id']!r})"
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "<root>"


def _cross_reference_errors(catalog: Catalog) -> list[str]:
    errors: list[str] = []
    zones = set(catalog.neighbourhood_ids) | {"*"}
    for kind, entries in (("neighbourhoods", catalog.neighbourhoods),
                          ("services", catalog.services), ("bundles", catalog.bundles)):
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry.id in seen:
                errors.append(f"{kind}[{i}] (id={entry.id!r}).id: duplicate id")
            seen.add(entry.id)
    for kind, entries in (("services", catalog.services), ("bundles", catalog.bundles)):
        for i, entry in enumerate(entries):
            for j, zone in enumerate(entry.zones):
                if zone not in zones:
                    errors.append(f"{kind}[{i}] (id={entry.id!r}).zones[{j}]: "
                                  f"unknown neighbourhood {zone!r}")
            for j, zone in enumerate(entry.eligibility.resident_zones or []):
                if zone not in zones:
                    errors.append(f"{kind}[{i}] (id={entry.id!r}).eligibility.resident_zones"
                                  f"[{j}]: unknown neighbourhood {zone!r}")
    for i, bundle in enumerate(catalog.bundles):
        for j, service_id in enumerate(bundle.services):
            if service_id not in catalog.service_by_id:
                errors.append(f"bundles[{i}] (id={bundle.id!r}).services[{j}]: "
                              f"unknown service {service_id!r}")
        if len(set(bundle.services)) != len(bundle.services):
            errors.append(f"bundles[{i}] (id={bundle.id!r}).services: a service is listed twice")
    return errors


def parse_catalog(raw: Any, source: str = "<catalog>") -> Catalog:
    """Validate a decoded catalog document; raise :class:`CatalogError` listing every problem."""
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{_entry_label(raw, err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise CatalogError(f"{source}: invalid catalog:\n  " + "\n  ".join(lines)) from None
    problems = _cross_reference_errors(catalog)
    if problems:
        raise CatalogError(f"{source}: invalid catalog:\n  " + "\n  ".join(problems))
    return catalog


def load_catalog(path: Path | None = None) -> Catalog:
    """Load and validate a catalog file; ``None`` loads the demo city shipped with Bouquet."""
    if path is None:
        text = resources.files("bouquet.core").joinpath("data/demo_city.json").read_text("utf-8")
        source = "demo_city.json"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"cannot read catalog {path}: {exc.strerror}") from None
        source = str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: "
                           f"{exc.msg}") from None
    return parse_catalog(raw, source)
