"""Redis key names: one prefix everywhere, and resident ids that cannot escape their keys."""

from __future__ import annotations

import inspect

import pytest

from bouquet.core.keys import RESIDENT_KINDS, Keys, UnsafeKeyPart


def test_per_resident_keys_share_a_cluster_hash_tag() -> None:
    keys = Keys("city:")
    names = [keys.recent("r1"), keys.profile("r1"), keys.holdings("r1"), keys.dismissed("r1")]
    assert all(name.startswith("city:r:{r1}:") for name in names)


@pytest.mark.parametrize("hostile", ["", "a" * 65, "r1*", "r1}:x", "r 1", "r1\r\nFLUSHALL",
                                     "../r1", "r1:profile", None, 42])
def test_hostile_resident_ids_are_refused(hostile) -> None:
    with pytest.raises(UnsafeKeyPart):
        Keys().recent(hostile)


def test_active_keys_name_period_bucket_and_dimension() -> None:
    assert Keys().active("week", "2026-W09", "nb", "north") == \
        "bq:{eng}:active:week:2026-W09:nb=north"
    with pytest.raises(UnsafeKeyPart):
        Keys().active("year", "2026")


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
