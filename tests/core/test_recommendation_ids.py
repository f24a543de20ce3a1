"""Recommendation ids are signed: only ids the server minted are credited to their arm;
anything a client makes up or alters is ``unattributed``."""

from __future__ import annotations

import os

import pytest

from bouquet.core.recommendation import UNATTRIBUTED, RecommendationIds, development_ids
from bouquet.core.settings import Settings

IDS = RecommendationIds.for_settings(Settings(env="test", server_secret="s" * 8 + "-a-test"))


def test_minted_ids_verify_and_name_their_arm() -> None:
    rid = IDS.mint("v7", "champion")
    found = IDS.verify(rid)
    assert found is not None and (found.model_version, found.variant) == ("v7", "champion")
    assert IDS.arm(rid) == ("v7", "champion")
    with pytest.raises(ValueError):
        IDS.mint("v7.1", "a")
    assert IDS.mint("v7", "a", nonce=42) == IDS.mint("v7", "a", nonce=42)  # reproducible


def test_made_up_altered_or_foreign_ids_are_unattributed() -> None:
    rid = IDS.mint("v7", "champion")
    head, token = rid.rsplit(".", 1)
    forged = [
        "v7.champion.9f2c41aa",                       # the unsigned shape clients used to echo
        rid.replace("champion", "challenger"),        # moved to another arm
        rid.replace("v7.", "v8."),                    # another model version
        f"{head}.{token[:-1]}{'0' if token[-1] != '0' else '1'}",  # one digit changed
        development_ids().mint("v7", "champion"),     # another deployment's key
        "external-campaign-42", rid + "0", "", None,
    ]
    for value in forged:
        assert IDS.verify(value) is None, value
        assert IDS.arm(value) == (UNATTRIBUTED, UNATTRIBUTED)


def test_ids_are_distinct_within_and_across_forked_processes() -> None:
    """The nonce comes from a PRNG: a forked worker must not repeat its parent's ids."""
    ids = {IDS.mint("v7", "champion") for _ in range(100_000)}
    assert len(ids) == 100_000
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write, IDS.mint("v7", "champion").encode())
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 200).decode()
    os.waitpid(child, 0)
    os.close(read)
    assert from_child != IDS.mint("v7", "champion")
    assert IDS.verify(from_child) is not None
