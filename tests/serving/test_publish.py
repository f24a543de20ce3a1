"""Publish: a new versioned keyspace, one atomic switch, expiry, failure and rollback."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from datetime import date

import numpy as np
import pytest

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.models.base import top_n
from bouquet.models.factor import FactorModel
from bouquet.models.online import ENTRY, pack_list, pack_rows, unpack_list
from bouquet.pipelines.publish import (
    Publisher,
    PublishError,
    ReasonVocabulary,
    score_chunk,
)
from tests.serving.support import client_for, publish, redis_client, set_profile, small_model

CATALOG = load_catalog()


class Exploding(FactorModel):
    """Scores one chunk, then fails, as a publish dying half-way would."""

    def score(self, rows, kind):
        if rows[0] > 0:
            raise RuntimeError("scoring failed half-way")
        return super().score(rows, kind)


def test_packed_lists_round_trip_and_are_compact() -> None:
    items, scores = np.array([3, 1, 7]), np.array([0.9, 0.5, -0.25])
    entries = unpack_list(pack_list(items, scores, np.array([2, 0, 1])))
    assert entries.dtype == ENTRY and entries["i"].tolist() == [3, 1, 7]
    assert entries["r"].tolist() == [2, 0, 1]
    assert np.allclose(entries["s"], scores)
    rows = pack_rows(np.array([[1, 2], [2, 1]]), np.array([[0.5, 0.4], [0.3, 0.2]]),
                     np.zeros((2, 2), dtype=int))
    assert [unpack_list(r)["i"].tolist() for r in rows] == [[1, 2], [2, 1]]
    assert len(rows[0]) == 1 + 2 * ENTRY.itemsize
    assert unpack_list(None).size == 0 and unpack_list(b"\x09junk").size == 0
    idx, sc = top_n(np.array([[0.1, 0.9, 0.5, 0.7]]), 3)
    assert idx.tolist() == [[1, 3, 2]] and sc.tolist() == [[0.9, 0.7, 0.5]]


def test_publish_writes_a_versioned_keyspace_and_switches_once(settings) -> None:
    model = small_model(CATALOG, n=120)
    settings = settings.model_copy(update={"publish_chunk": 50})
    report = publish(settings, model)
    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    assert r.get(keys.current_version()).decode() == report.version
    meta = {k.decode(): v.decode() for k, v in r.hgetall(keys.version_meta(report.version)).items()}
    assert meta["state"] == "live" and meta["model_version"] == "v1"
    assert meta["run_id"] == "run-v1" and meta["published_at"] and meta["residents"] == "120"
    assert r.zscore(keys.versions(), report.version) is not None
    for rid in ("r0", "r77", "r119"):
        for kind in ("b", "s"):
            assert r.ttl(keys.recs(report.version, rid, kind)) == -1  # permanent once live
    assert r.ttl(keys.version_model(report.version)) == -1
    popular = unpack_list(r.get(keys.popular(report.version, "gare", "b")))
    assert popular.size == len(CATALOG.bundles)
    # The stored top list is the model's top list for that resident.
    stored = unpack_list(r.get(keys.recs(report.version, "r5", "b")))
    expected = np.argsort(-(model.bundle_factors @ model.resident_factors[5]), kind="stable")
    assert stored["i"].tolist() == expected.tolist()
    r.close()


def test_older_versions_expire_and_the_previous_is_kept_for_rollback(settings) -> None:
    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    first = publish(settings, small_model(CATALOG, seed=1), "v1")
    second = publish(settings, small_model(CATALOG, seed=2), "v2")
    assert second.previous == first.version and second.expired == []
    assert r.ttl(keys.recs(first.version, "r1", "b")) == -1  # previous: kept
    third = publish(settings, small_model(CATALOG, seed=3), "v3")
    assert third.expired == [first.version]
    ttl = r.ttl(keys.recs(first.version, "r1", "b"))
    assert 0 < ttl <= settings.publish_old_version_ttl_s
    assert r.ttl(keys.recs(second.version, "r1", "b")) == -1
    # Roll back: current goes to the previous version, which is still whole.
    old, new = Publisher(settings, r).rollback()
    assert (old, new) == (third.version, second.version)
    assert r.get(keys.current_version()).decode() == second.version
    assert r.hget(keys.version_meta(third.version), "state") == b"rolled-back"
    # A second rollback steps further back, never forward: the version before `second` is
    # expiring, so it is refused, and the pointer stays.
    with pytest.raises(PublishError, match="already expiring"):
        Publisher(settings, r).rollback()
    assert r.get(keys.current_version()).decode() == second.version
    status = Publisher(settings, r).status()
    assert status["current"] == second.version
    assert {v["version"] for v in status["versions"]} >= {second.version, third.version}
    r.close()


def test_a_failed_publish_leaves_the_previous_version_serving(settings, anyio_backend) -> None:
    import anyio

    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    good = publish(settings, small_model(CATALOG, n=40), "v1")
    settings = settings.model_copy(update={"publish_chunk": 10})
    healthy = small_model(CATALOG, n=40, seed=9)
    broken = Exploding(**{f.name: getattr(healthy, f.name)
                          for f in dataclasses.fields(FactorModel)})
    with pytest.raises(RuntimeError, match="half-way"):
        publish(settings, broken, "v2")
    assert r.get(keys.current_version()).decode() == good.version
    partial = [k for k in r.scan_iter(match=f"{settings.redis_key_prefix}rec:v2-*", count=1000)]
    assert partial, "the failed publish wrote a first chunk"
    assert all(0 < r.ttl(k) <= settings.publish_old_version_ttl_s for k in partial)
    set_profile(settings, "r3", consent="1", neighbourhood="centre")

    async def ask() -> dict:
        async with client_for(settings) as c:
            return (await c.get("/v1/residents/r3/bundles")).json()

    answer = anyio.run(ask)
    assert answer["keyspace_version"] == good.version and answer["personalised"]
    r.close()


def test_a_killed_publish_never_moves_the_pointer_and_cleans_itself_up(settings) -> None:
    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    good = publish(settings, small_model(CATALOG, n=30), "v1")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parents[2])!r})
        from bouquet.core.catalog import load_catalog
        from bouquet.core.settings import Settings
        from bouquet.pipelines.publish import Publisher
        from tests.serving.support import small_model
        settings = Settings.model_validate_json({settings.model_copy(
            update={"publish_chunk": 10}).model_dump_json()!r})
        def slow(n):
            print("chunk", n, flush=True)
            time.sleep(30)
        Publisher(settings).publish(small_model(load_catalog(), n=100), model_version="v2",
                                    on_chunk=slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("chunk 0")
        proc.kill()
    finally:
        proc.wait(timeout=10)
    assert r.get(keys.current_version()).decode() == good.version
    partial = list(r.scan_iter(match=f"{settings.redis_key_prefix}rec:v2-*", count=1000))
    assert partial and all(0 < r.ttl(k) <= settings.publish_staging_ttl_s for k in partial)
    r.close()


def test_a_publish_does_not_switch_a_pointer_moved_under_it(settings) -> None:
    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    publish(settings, small_model(CATALOG, n=20), "v1")

    def meddle(_: int) -> None:
        r.set(keys.current_version(), "v9-someone-else")

    with pytest.raises(PublishError, match="moved"):
        Publisher(settings, r).publish(small_model(CATALOG, n=20), model_version="v2",
                                       on_chunk=meddle)
    assert r.get(keys.current_version()) == b"v9-someone-else"
    r.close()


def test_packed_values_are_smaller_than_json(settings) -> None:
    """The measured reason for the packed format (also in docs/serving.md)."""
    model = small_model(CATALOG, n=10)
    vocabulary = ReasonVocabulary(model, date(2026, 12, 1))
    chunk = score_chunk(model, np.arange(10), 50, vocabulary)
    vocab = vocabulary.codes
    packed = sum(len(v) for v in pack_rows(chunk.bundle_items, chunk.bundle_scores,
                                            chunk.bundle_reasons))
    as_json = sum(len(json.dumps([[model.bundle_ids[i], round(float(s), 4), vocab[r]]
                                  for i, s, r in zip(items, scores, reasons, strict=True)],
                                 separators=(",", ":")))
                  for items, scores, reasons in zip(chunk.bundle_items, chunk.bundle_scores,
                                                    chunk.bundle_reasons, strict=True))
    assert packed * 4 < as_json
    time.sleep(0)  # keep the test cheap


def test_a_publish_dying_after_its_switch_is_recorded_by_the_next(settings,
                                                                   monkeypatch) -> None:
    """The switch is the pointer's one write; recording the version in ``rec:versions``
    follows it. A publish that dies between the two serves its version unrecorded, and
    the next publish records it, so it still expires in its turn (and erasure finds it)."""
    keys, r = Keys(settings.redis_key_prefix), redis_client(settings)
    first = publish(settings, small_model(CATALOG, n=20, seed=1), "v1")

    def die(self, version: str) -> None:
        raise ConnectionError("the publish process died after the switch")

    with monkeypatch.context() as patched:
        patched.setattr(Publisher, "_record_live", die)
        with pytest.raises(ConnectionError):
            publish(settings, small_model(CATALOG, n=20, seed=2), "v2")
    crashed = r.get(keys.current_version()).decode()
    assert crashed != first.version and r.zscore(keys.versions(), crashed) is None
    publish(settings, small_model(CATALOG, n=20, seed=3), "v3")
    assert r.zscore(keys.versions(), crashed) is not None
    assert r.hget(keys.version_meta(crashed), "state") == b"live"
    fourth = publish(settings, small_model(CATALOG, n=20, seed=4), "v4")
    assert crashed in fourth.expired
    r.close()
