"""Redis key names: one prefix everywhere, and resident ids that cannot escape their keys."""

from __future__ import annotations

import inspect
import os

import pytest

from bouquet.core.keys import RESIDENT_KINDS, Keys, UnsafeKeyPart
from bouquet.core.recommendation import make_recommendation_id, parse_recommendation_id


def test_per_resident_keys_share_a_cluster_hash_tag() -> None:
    keys = Keys("city:")
    names = [keys.recent("r1"), keys.profile("r1"), keys.holdings("r1"), keys.dismissed("r1")]
    assert all(name.startswith("city:r:{r1}:") for name in names)
    assert keys.resident_pattern("r1") == "city:r:{r1}:*"


@pytest.mark.parametrize("hostile", ["", "a" * 65, "r1*", "r1}:x", "r 1", "r1\r\nFLUSHALL",
                                     "../r1", "r1:profile", None, 42])
def test_hostile_resident_ids_are_refused(hostile) -> None:
    with pytest.raises(UnsafeKeyPart):
        Keys().recent(hostile)


def test_active_keys_name_period_bucket_and_dimension() -> None:
    assert Keys().active("week", "2026-W09", "nb", "north") == \
        "bq:eng:active:week:2026-W09:nb=north"
    with pytest.raises(UnsafeKeyPart):
        Keys().active("year", "2026")


def test_recommendation_ids_round_trip() -> None:
    rid = make_recommendation_id("v7", "champion")
    attribution = parse_recommendation_id(rid)
    assert attribution is not None
    assert (attribution.model_version, attribution.variant) == ("v7", "champion")
    assert parse_recommendation_id("external-campaign-42") is None
    assert parse_recommendation_id(None) is None
    with pytest.raises(ValueError):
        make_recommendation_id("v7.1", "a")


def test_recommendation_ids_are_distinct_within_and_across_forked_processes() -> None:
    """The token comes from a PRNG: a forked worker must not repeat its parent's ids."""
    ids = {make_recommendation_id("v7", "champion") for _ in range(100_000)}
    assert len(ids) == 100_000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, make_recommendation_id("v7", "champion").encode())
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 200).decode()
    os.waitpid(child, 0)
    os.close(read)
    assert from_child != make_recommendation_id("v7", "champion")
    assert parse_recommendation_id(from_child) is not None


def test_resident_kinds_name_every_per_resident_key() -> None:
    """Erasure deletes RESIDENT_KINDS: every Keys method that builds one resident's key
    from the id alone must be listed there."""
    keys = Keys("p:")
    base = "p:r:{R0}:"
    per_resident = set()
    for name, method in inspect.getmembers(keys, callable):
        if name.startswith("_") or list(inspect.signature(method).parameters) != ["resident_id"]:
            continue
        built = method("R0")
        if isinstance(built, str) and built.startswith(base) and "*" not in built:
            per_resident.add(built[len(base):])
    assert per_resident == set(RESIDENT_KINDS)
    assert keys.resident_keys("R0") == [base + kind for kind in RESIDENT_KINDS]
