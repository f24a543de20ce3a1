"""The pieces the consumer and publish call: the cascade after ``erase`` events, the late-event
mask, and publish leaving erased residents out."""

from __future__ import annotations

import time

from bouquet.core.catalog import load_catalog
from bouquet.core.keys import Keys
from bouquet.pipelines.erasure import ErasureCascade, ErasureRegister, without_erased
from tests.serving.support import publish, redis_client, small_model

CATALOG = load_catalog()


def test_after_erase_records_the_register_and_clears_every_published_version(settings) -> None:
    model = small_model(CATALOG)
    first = publish(settings, model, model_version="v1")
    second = publish(settings, model, model_version="v2")
    client = redis_client(settings)
    keys = Keys(settings.redis_key_prefix)
    cascade = ErasureCascade(settings, client)
    erased_at = time.time() - 60
    assert cascade.after_erase(["r3", ("r4", erased_at)]) == 8  # 2 residents × 2 kinds × 2
    for version in (first.version, second.version):
        for rid in ("r3", "r4"):
            assert not client.exists(keys.recs(version, rid, "b"), keys.recs(version, rid, "s"))
        assert client.exists(keys.recs(version, "r5", "b"))
    register = ErasureRegister.for_settings(settings)
    assert register.cutoff("r4") == erased_at and register.cutoff("r3") >= erased_at
    late = cascade.drop_late(["r3", "r5", "r4", "r4"],
                             [erased_at - 10, erased_at - 10, erased_at - 1, erased_at + 1])
    assert late.tolist() == [True, False, True, False]
    client.close()


def test_publish_leaves_out_residents_erased_after_the_model_was_trained(settings) -> None:
    model = small_model(CATALOG)
    register = ErasureRegister.for_settings(settings)
    trained = time.time() - 3600
    register.record("r1", trained + 60, "test")  # erased after training: left out
    register.record("r2", trained - 60, "test")  # erased before: the model only has new data
    filtered, left_out = without_erased(model, register, created_at=trained)
    assert left_out == ["r1"]
    assert "r1" not in filtered.resident_ids and "r2" in filtered.resident_ids
    assert len(filtered.resident_ids) == filtered.resident_factors.shape[0] == 49
    row = list(model.resident_ids).index("r7")
    assert (filtered.resident_factors[list(filtered.resident_ids).index("r7")]
            == model.resident_factors[row]).all()
    conservative, gone = without_erased(model, register)  # training time unknown
    assert gone == ["r1", "r2"] and len(conservative.resident_ids) == 48
