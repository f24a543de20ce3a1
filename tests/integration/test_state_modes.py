"""State on disk is private to the account that runs Bouquet: files 0600, directories 0700
— the event log, Redis's append-only file, the MLflow store, the erasure register and the
audit log, the outreach plan ledger — whatever the umask of the process that created them."""

from __future__ import annotations

import os
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bouquet.core.eventlog import EventLog
from bouquet.core.outreach import LEDGER_SCHEMA, NudgeLedger
from bouquet.core.settings import Settings
from bouquet.privacy.audit import AuditLog
from bouquet.privacy.erasure import ErasureRegister


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private(root: Path) -> int:
    """Every file under ``root`` is 0600 and every directory 0700 (root included);
    returns how many paths were checked."""
    checked = 0
    for path in [root, *root.rglob("*")]:
        expected = 0o700 if path.is_dir() else 0o600
        assert mode(path) == expected, f"{path}: {oct(mode(path))}, expected {oct(expected)}"
        checked += 1
    return checked


@pytest.fixture
def open_umask():
    previous = os.umask(0o022)  # what a shell usually has: files 0644, directories 0755
    yield
    os.umask(previous)


def test_event_log_register_and_audit_are_private(tmp_path: Path, open_umask) -> None:
    settings = Settings(env="test", state_dir=tmp_path / "state")
    EventLog(settings.event_log_path).append([{
        "event_id": "e1", "resident_id": "r1", "type": "use", "service_id": "bike-share",
        "ts": datetime(2026, 3, 1, tzinfo=UTC), "channel": "app", "schema_version": 1}])
    ErasureRegister.for_settings(settings).record("r2", 1.0e9, "test")
    AuditLog(settings).record("export", actor="cli:test", target="resident:x")
    NudgeLedger(settings.outreach_ledger_path).write(date(2026, 3, 2),
                                                     LEDGER_SCHEMA.empty_table())
    assert assert_private(settings.state_dir) >= 10  # state, eventlog, date=, a file,
    # privacy…, outreach, its ledger, a day's plan


def test_local_stack_keeps_redis_and_mlflow_private(stack: Settings) -> None:
    redis_dir = stack.state_dir / "redis"
    assert assert_private(redis_dir) >= 2  # the folder and Redis's append-only files
    assert mode(stack.stack_dir) == 0o700
    assert mode(Path(stack.mlflow_uri.removeprefix("sqlite:///"))) == 0o600
    assert mode(stack.mlflow_artifact_root) == 0o700
