"""The catalog loader: the demo city is complete, and a bad file is refused precisely.

Catalog files are edited by hand, so every refusal must name the entry (kind, index and
id) and the field that is wrong; these tests pin that down one mistake at a time.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from bouquet.core.catalog import (
    AggregationFactor,
    CatalogError,
    Domain,
    available_in,
    eligibility_failure,
    load_catalog,
    parse_catalog,
)

DEMO = Path(__file__).resolve().parents[2] / "core" / "data" / "demo_city.json"


@pytest.fixture
def raw() -> dict[str, Any]:
    """A fresh, mutable copy of the demo city document."""
    return json.loads(DEMO.read_text("utf-8"))


def _index(entries: list[dict[str, Any]], entry_id: str) -> int:
    return next(i for i, e in enumerate(entries) if e["id"] == entry_id)


def _refusal(raw: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(raw), "utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    return str(info.value)


# --- the demo city ------------------------------------------------------------------------

def test_demo_city_loads_and_meets_the_issue_requirements() -> None:
    catalog = load_catalog()
    assert catalog == load_catalog(DEMO)
    assert len(catalog.services) >= 40
    assert len({s.domain for s in catalog.services}) >= 8
    assert len(catalog.bundles) >= 15
    assert 6 <= len(catalog.neighbourhoods) <= 10
    assert {f for f in AggregationFactor} == {s.aggregation_factor for s in catalog.services}
    for service in catalog.services:
        assert service.partner.strip() and service.zones and service.price
    # the replay maps every ValleyBike trip to this service, available everywhere
    assert available_in(catalog.service_by_id["bike-share"].zones, "centre")
    for expected in ("compte-mobilite", "maas-pay-as-you-go", "maas-urban", "maas-unlimited",
                     "student-pass", "senior-pass", "canal-neighbourhood-pack", "family-pack",
                     "culture-pass", "sport-pass"):
        assert expected in catalog.bundle_by_id, expected


def test_demo_bundles_have_meaningful_rules() -> None:
    catalog = load_catalog()
    student = catalog.bundle_by_id["student-pass"].eligibility
    assert eligibility_failure(student, {"student": True, "age_band": "18-25"}) is None
    assert eligibility_failure(student, {"student": False, "age_band": "18-25"}) == "students only"
    senior = catalog.bundle_by_id["senior-pass"].eligibility
    assert eligibility_failure(senior, {"age_band": "65+"}) is None
    assert eligibility_failure(senior, {"age_band": "26-40"}) is not None
    # the land operator's pack: only in, and only for residents of, the eco-district
    pack = catalog.bundle_by_id["canal-neighbourhood-pack"]
    eco = "jardins-du-canal"
    assert pack.zones == [eco]
    assert eligibility_failure(pack.eligibility, {"neighbourhood": eco}) is None
    assert eligibility_failure(pack.eligibility, {"neighbourhood": "centre"}) is not None
    land = [s for s in catalog.services if s.aggregation_factor == AggregationFactor.LAND]
    assert any(s.zones == [eco] for s in land)
    mobility = catalog.bundle_by_id["compte-mobilite"]
    assert mobility.price.model == "post_paid" and mobility.price.cap_eur_month
    assert {"bus", "tram", "bike-share", "car-share", "parking"} <= set(mobility.services)
    assert catalog.bundle_by_id["family-pack"].domain == Domain.CHILDHOOD


def test_fingerprint_is_stable_and_content_sensitive(raw: dict[str, Any]) -> None:
    assert parse_catalog(raw).fingerprint == load_catalog().fingerprint
    changed = copy.deepcopy(raw)
    changed["bundles"][0]["price"]["amount_eur"] = 1.0
    assert parse_catalog(changed).fingerprint != load_catalog().fingerprint


# --- precise refusals: which entry, which field --------------------------------------------

def test_unknown_zone_names_the_service_and_the_zone(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["services"], "tram")
    raw["services"][i]["zones"].append("atlantis")
    message = _refusal(raw, tmp_path)
    assert f"services[{i}] (id='tram').zones[" in message
    assert "unknown neighbourhood 'atlantis'" in message


def test_unknown_resident_zone_in_eligibility(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["bundles"], "canal-neighbourhood-pack")
    raw["bundles"][i]["eligibility"]["resident_zones"] = ["canal"]
    message = _refusal(raw, tmp_path)
    assert (f"bundles[{i}] (id='canal-neighbourhood-pack').eligibility.resident_zones[0]: "
            "unknown neighbourhood 'canal'") in message


def test_unknown_service_in_bundle(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["bundles"], "compte-mobilite")
    raw["bundles"][i]["services"][2] = "bikeshare"
    message = _refusal(raw, tmp_path)
    assert f"bundles[{i}] (id='compte-mobilite').services[2]: unknown service 'bikeshare'" \
        in message


def test_duplicate_id(raw: dict, tmp_path: Path) -> None:
    duplicate = copy.deepcopy(raw["services"][0])
    raw["services"].append(duplicate)
    last = len(raw["services"]) - 1
    message = _refusal(raw, tmp_path)
    assert f"services[{last}] (id={duplicate['id']!r}).id: duplicate id" in message


def test_service_listed_twice_in_a_bundle(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["bundles"], "sport-pass")
    raw["bundles"][i]["services"].append("gym")
    assert f"bundles[{i}] (id='sport-pass').services: a service is listed twice" \
        in _refusal(raw, tmp_path)


def test_missing_field(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["services"], "library")
    del raw["services"][i]["partner"]
    message = _refusal(raw, tmp_path)
    assert f"services[{i}] (id='library').partner: Field required" in message


def test_wrong_type(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["bundles"], "culture-pass")
    raw["bundles"][i]["price"]["amount_eur"] = "sixty"
    message = _refusal(raw, tmp_path)
    assert f"bundles[{i}] (id='culture-pass').price.amount_eur:" in message
    assert "number" in message


def test_zones_must_be_a_list(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["services"], "gym")
    raw["services"][i]["zones"] = "centre"
    assert f"services[{i}] (id='gym').zones: Input should be a valid list" \
        in _refusal(raw, tmp_path)


def test_bad_enum_values(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["services"], "bus")
    raw["services"][i]["domain"] = "transport"
    j = _index(raw["services"], "museums")
    raw["services"][j]["aggregation_factor"] = "platform"
    k = _index(raw["bundles"], "senior-pass")
    raw["bundles"][k]["eligibility"]["age_bands"] = ["70+"]
    message = _refusal(raw, tmp_path)
    # every problem is reported at once, each with its own location
    assert f"services[{i}] (id='bus').domain: Input should be 'mobility'" in message
    assert f"services[{j}] (id='museums').aggregation_factor:" in message
    assert f"bundles[{k}] (id='senior-pass').eligibility.age_bands[0]:" in message


def test_unknown_field_and_bad_id(raw: dict, tmp_path: Path) -> None:
    i = _index(raw["services"], "cinema")
    raw["services"][i]["colour"] = "red"
    raw["neighbourhoods"][0]["id"] = "Centre Ville"
    message = _refusal(raw, tmp_path)
    assert f"services[{i}] (id='cinema').colour: Extra inputs are not permitted" in message
    assert "neighbourhoods[0] (id='Centre Ville').id: String should match pattern" in message


def test_a_bundle_needs_two_services_and_prices_are_non_negative(raw: dict,
                                                                  tmp_path: Path) -> None:
    i = _index(raw["bundles"], "zero-waste")
    raw["bundles"][i]["services"] = ["bulky-waste"]
    j = _index(raw["services"], "theatre")
    raw["services"][j]["price"]["amount_eur"] = -3
    message = _refusal(raw, tmp_path)
    assert f"bundles[{i}] (id='zero-waste').services: List should have at least 2 items" \
        in message
    assert f"services[{j}] (id='theatre').price.amount_eur: Input should be greater than" \
        in message


def test_invalid_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "version": "x",\n  "city": "y",,\n}\n', "utf-8")
    with pytest.raises(CatalogError, match=r"broken\.json: not valid JSON at line 3 column 15"):
        load_catalog(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"cannot read catalog .*nope\.json: No such file"):
        load_catalog(tmp_path / "nope.json")
    with pytest.raises(CatalogError, match=r"cannot read catalog .*: Is a directory"):
        load_catalog(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unreadable_file(tmp_path: Path) -> None:
    locked = tmp_path / "locked.json"
    locked.write_text(DEMO.read_text("utf-8"), "utf-8")
    locked.chmod(0)
    try:
        with pytest.raises(CatalogError, match=r"cannot read catalog .*: Permission denied"):
            load_catalog(locked)
    finally:
        locked.chmod(0o644)


def test_not_an_object_and_empty_lists(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[]", "utf-8")
    with pytest.raises(CatalogError, match="invalid catalog"):
        load_catalog(path)
    with pytest.raises(CatalogError, match=r"bundles: List should have at least 1 item"):
        parse_catalog({"version": "1", "city": "c", "neighbourhoods": [{"id": "a", "name": "A"}],
                       "services": json.loads(DEMO.read_text("utf-8"))["services"][:1],
                       "bundles": []})


def test_available_in_and_unknown_attributes_never_grant() -> None:
    assert available_in(["*"], None)
    assert available_in(["centre"], "centre")
    assert not available_in(["centre"], "port")
    assert not available_in(["centre"], None)
    catalog = load_catalog()
    daycare = catalog.service_by_id["daycare"].eligibility
    assert eligibility_failure(daycare, {}) is not None
    assert eligibility_failure(daycare, {"household": "family"}) is None
