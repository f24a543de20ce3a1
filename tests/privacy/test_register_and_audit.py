"""The erasure register and the audit log: durable, keyed, append-only, multi-process safe."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bouquet.core.settings import Settings
from bouquet.privacy.audit import (
    AuditLog,
    api_actor,
    audit_path,
    chain_key,
    resident_ref,
    verify_chain,
)
from bouquet.privacy.erasure import ErasureRegister, RegisterKeyMismatch, register_path
from bouquet.privacy.pseudonyms import pseudonymise


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    return Settings(env="test", state_dir=tmp_path / "state",
                    redis_url="redis://127.0.0.1:1/0")  # nothing listens: file only


def test_register_keeps_keyed_references_not_ids(local: Settings) -> None:
    register = ErasureRegister.for_settings(local)
    assert register.record("rErased01", 1000.0, "test")
    assert not register.record("rErased01", 900.0, "test")  # older: nothing to add
    assert register.record("rErased01", 1100.0, "test")  # later erasure wins
    raw = register_path(local).read_text()
    assert "rErased01" not in raw
    assert resident_ref("rErased01", local.pseudonym_secret) in raw
    # another process (a fresh reader) sees the same, and only with the same secret
    again = ErasureRegister.for_settings(local)
    assert again.cutoff("rErased01") == 1100.0 and "rErased01" in again
    assert again.cutoff("rOther") is None and len(again) == 1
    with pytest.raises(RegisterKeyMismatch):
        ErasureRegister(register_path(local), "another-secret")


def test_register_masks_events_at_or_before_the_erasure(local: Settings) -> None:
    register = ErasureRegister.for_settings(local)
    register.record_many([("a", 100.0), ("b", 50.0)], "test")
    mask = register.erased_mask(["a", "a", "a", "b", "c"], [99.0, 100.0, 101.0, 10.0, 1.0])
    assert mask.tolist() == [True, True, False, True, False]
    assert register.erased_among(["a", "c", "b", "a"]) == {"a": 100.0, "b": 50.0}
    assert not register.erased_mask(np.array([], dtype=object), []).any()


def test_reload_sees_entries_appended_by_another_writer(local: Settings) -> None:
    reader = ErasureRegister.for_settings(local)
    ErasureRegister.for_settings(local).record("late", 5.0, "other-process")
    assert "late" not in reader
    reader.reload()
    assert reader.cutoff("late") == 5.0


def _append_records(state_dir: str, worker: int, n: int) -> None:
    settings = Settings(env="test", state_dir=Path(state_dir), redis_url="redis://127.0.0.1:1/0")
    log = AuditLog(settings)
    for i in range(n):
        log.record("export", actor=f"test:{worker}", target=f"resident:{i}", n=i)


def test_audit_file_is_a_hash_chain_even_with_concurrent_writers(local: Settings) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_records, args=(str(local.state_dir), w, 40))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ok, count, problem = verify_chain(audit_path(local), chain_key(local))
    assert ok, problem
    assert count == 160
    records = [json.loads(line) for line in audit_path(local).read_text().splitlines()]
    assert {r["actor"] for r in records} == {f"test:{w}" for w in range(4)}
    # tampering is detected: edit one record, or drop one
    lines = audit_path(local).read_text().splitlines()
    edited = lines.copy()
    edited[10] = edited[10].replace('"export"', '"exp0rt"')
    audit_path(local).write_text("\n".join(edited) + "\n")
    assert verify_chain(audit_path(local), chain_key(local))[0] is False
    audit_path(local).write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    assert verify_chain(audit_path(local), chain_key(local))[0] is False


def test_api_actor_names_the_key_without_storing_it() -> None:
    actor = api_actor("admin", "dev-admin-key", "server-secret-a")
    assert actor.startswith("api:admin:key-") and "dev-admin-key" not in actor
    assert actor != api_actor("admin", "another-key", "server-secret-a")
    # keyed: without the server secret, a candidate key cannot be tested against the log
    assert actor == api_actor("admin", "dev-admin-key", "server-secret-a")
    assert actor != api_actor("admin", "dev-admin-key", "server-secret-b")
    plain = hashlib.sha256(b"dev-admin-key").hexdigest()[:12]
    assert plain not in actor


def test_a_chain_rewritten_after_an_edit_does_not_verify_without_the_secret(
        local: Settings) -> None:
    """Whoever can write the audit file could edit a line and recompute every later
    ``prev``; with a keyed chain that takes the server secret."""
    log = AuditLog(local)
    for i in range(6):
        log.record("export", actor="cli:test", target=f"resident:{i}")
    lines = audit_path(local).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[2]["target"] = "resident:someone-else"
    forged, previous = [], "0" * 64
    for record in records:  # the best an editor without the secret can do
        record["prev"] = previous
        line = json.dumps(record, separators=(",", ":"), sort_keys=True)
        previous = hashlib.sha256(line.encode()).hexdigest()
        forged.append(line)
    audit_path(local).write_text("\n".join(forged) + "\n")
    ok, _, problem = verify_chain(audit_path(local), chain_key(local))
    assert not ok and "line 2" in problem
    audit_path(local).write_text("\n".join(lines) + "\n")
    assert verify_chain(audit_path(local), chain_key(local)) == (True, 6, "")
    other = local.model_copy(update={"server_secret": "another-server-secret"})
    assert verify_chain(audit_path(local), chain_key(other))[0] is False


def test_audit_reaches_the_redis_stream(settings: Settings) -> None:
    import redis

    from bouquet.core.keys import Keys
    from bouquet.privacy.audit import read_stream

    client = redis.Redis.from_url(settings.redis_url)
    AuditLog(settings, client).record("promotion", actor="cli:test", target="model:x",
                                      to_version="3")
    latest = read_stream(client, Keys(settings.redis_key_prefix), 5)
    assert latest[0]["action"] == "promotion" and latest[0]["detail"] == {"to_version": "3"}
    assert AuditLog(settings).tail(1)[0]["action"] == "promotion"  # and the file has it
    client.close()


def test_cli_pseudonymise_matches_the_library(local: Settings, monkeypatch) -> None:
    from bouquet.cli import app
    from bouquet.core import settings as settings_module

    monkeypatch.setenv("BOUQUET_PSEUDONYM_SECRET", "s3cret-for-this-test")
    settings_module.get_settings.cache_clear()
    try:
        runner = CliRunner()
        one = runner.invoke(app, ["pseudonymise", "ACC-0042"])
        assert one.exit_code == 0, one.output
        assert one.output.strip() == pseudonymise("ACC-0042", "s3cret-for-this-test")
        many = runner.invoke(app, ["pseudonymise"], input="ACC-1\nACC-2\n")
        rows = [line.split("\t") for line in many.output.strip().splitlines()]
        assert rows == [[a, pseudonymise(a, "s3cret-for-this-test")] for a in ("ACC-1", "ACC-2")]
        bad = runner.invoke(app, ["pseudonymise", "--prefix", "a b", "x"])
        assert bad.exit_code == 1 and "prefix" in bad.output
    finally:
        settings_module.get_settings.cache_clear()
