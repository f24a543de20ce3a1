"""The audit log of administrative actions: who did what to which resident or model, when.

A public authority must be able to show, long after the fact, that an erasure was carried
out, who exported a resident's data, who moved the serving model. Two sinks, one record:

* **a durable file** — ``STATE_DIR/audit/audit.jsonl``, one JSON object per line, appended
  under an exclusive ``flock`` with ``O_APPEND`` and ``fsync``ed before :meth:`AuditLog.record`
  returns, so several processes (serving workers, the CLI) can append and a record that was
  reported is on disk. Each line carries ``prev``, the HMAC-SHA256 of the line before it
  under a key derived from ``BOUQUET_SERVER_SECRET``: the file is a keyed hash chain, and
  :func:`verify_chain` detects a line edited, removed or reordered after the fact — also when
  the editor rewrote every later ``prev``, which takes the secret (append-only by evidence,
  not only by convention).
* **the Redis stream** ``Keys.audit()`` (``XADD``, capped at :data:`STREAM_MAXLEN` entries,
  approximately) — what an operator API or dashboard reads. Best effort: Redis being down
  never loses an audit record (the file is the record of truth) and never blocks the action.

Records never hold a raw resident id: a resident is named by its *erasure reference*
(:func:`resident_ref`, a keyed HMAC), so the audit log of an erasure does not itself keep the
erased id, yet an administrator who holds the secret can still answer "was this resident
erased, and when?" by computing the reference.

Who: ``api:<role>:key-<fingerprint>`` for an API call (a keyed fingerprint of the key,
never the key), ``cli:<user>@<host>`` for a command, ``system:<component>`` for automatic actions
(e.g. a promotion decided by ``bouquet train``).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bouquet.core.keyring import derived_key, key_fingerprint, resident_ref
from bouquet.core.keys import Keys
from bouquet.core.settings import Settings
from bouquet.core.statefiles import open_private, private_dir

log = logging.getLogger(__name__)

__all__ = ["AuditLog", "api_actor", "cli_actor", "entry", "read_stream", "record_action",
           "resident_ref", "verify_chain"]

#: Approximate cap of the Redis stream (the file keeps everything).
STREAM_MAXLEN = 100_000
#: Actions recorded (free text is allowed; these are the ones Bouquet writes).
ACTIONS = ("erasure", "export", "consent", "profile", "promotion", "rollback", "publish",
           "publish-rollback", "compaction", "model-scrub")
_GENESIS = "0" * 64


def api_actor(role: str, api_key: str | None, secret: str) -> str:
    """``api:<role>:key-<fingerprint>``: which key acted, without storing the key. The
    fingerprint is keyed (``BOUQUET_SERVER_SECRET``): a plain hash of a short or guessable
    key could be matched against candidate keys by anyone who reads the log."""
    return f"api:{role}:key-{key_fingerprint(secret, api_key or '')[:12]}"


def cli_actor() -> str:
    """``cli:<user>@<host>`` of the person running a command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = f"uid{os.getuid()}"
    return f"cli:{user}@{socket.gethostname()}"


def audit_path(settings: Settings) -> Path:
    return settings.state_dir / "audit" / "audit.jsonl"


def chain_key(settings: Settings) -> bytes:
    """The key of the audit chain, derived from ``BOUQUET_SERVER_SECRET``."""
    return derived_key(settings.server_secret, "audit-chain")


def _line_hash(line: bytes, key: bytes) -> str:
    """HMAC-SHA256 of a line: keyed, so that whoever can write the file but does not hold
    the server secret cannot rewrite the chain after editing a line."""
    return hmac.new(key, line.rstrip(b"\n"), hashlib.sha256).hexdigest()


def _last_line(handle: Any) -> bytes | None:
    """The last complete line of an open binary file (reads backwards in 4 KB steps)."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    if end == 0:
        return None
    block, data, position = 4096, b"", end
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
        stripped = data.rstrip(b"\n")
        if b"\n" in stripped:
            return stripped.rsplit(b"\n", 1)[1]
    return data.rstrip(b"\n") or None


def entry(action: str, *, actor: str, target: str | None = None, outcome: str = "ok",
          **detail: Any) -> dict[str, Any]:
    """One audit record, not yet chained or written (see :meth:`AuditLog.record_many`)."""
    return {"at": datetime.now(UTC).isoformat(timespec="microseconds"), "action": action,
            "actor": actor, "target": target, "outcome": outcome, "detail": detail}


class AuditLog:
    """Append audit records to the file (durable) and the Redis stream (best effort)."""

    def __init__(self, settings: Settings, redis_client: Any = None) -> None:
        self.settings = settings
        self.path = audit_path(settings)
        self.key = chain_key(settings)
        self.keys = Keys(settings.redis_key_prefix)
        self.redis = redis_client

    def record(self, action: str, *, actor: str, target: str | None = None,
               outcome: str = "ok", **detail: Any) -> dict[str, Any]:
        """Append one record; returns it (with its ``prev`` hash). Durable on return."""
        return self.record_many([entry(action, actor=actor, target=target, outcome=outcome,
                                       **detail)])[0]

    def record_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append several records (made by :func:`entry`) in order, chained, with one write
        and one fsync; returns them with their ``prev`` hashes. Durable on return."""
        if not entries:
            return []
        private_dir(self.path.parent)
        fd = open_private(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            with os.fdopen(fd, "r+b", closefd=False) as handle:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    last = _last_line(handle)
                    previous = _line_hash(last, self.key) if last else _GENESIS
                    lines = []
                    for record in entries:
                        record["prev"] = previous
                        line = json.dumps(record, separators=(",", ":"), sort_keys=True,
                                          default=str).encode("utf-8")
                        previous = _line_hash(line, self.key)
                        lines.append(line + b"\n")
                    os.write(fd, b"".join(lines))  # O_APPEND: lands at the end, in one write
                    os.fsync(fd)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        for record in entries:
            self._to_stream(record)
            log.info("audit: %s %s by %s (%s)", record["action"], record["target"] or "",
                     record["actor"], record["outcome"])
        return entries

    def _to_stream(self, entry: dict[str, Any]) -> None:
        if self.redis is None:
            return
        fields = {k: (json.dumps(v, separators=(",", ":"), default=str)
                      if isinstance(v, dict) else str(v if v is not None else ""))
                  for k, v in entry.items()}
        try:
            self.redis.xadd(self.keys.audit(), fields, maxlen=STREAM_MAXLEN, approximate=True)
        except Exception as exc:  # the file is the record; the stream is only a copy
            log.warning("audit record not copied to the Redis stream: %s", exc)

    def tail(self, count: int = 50) -> list[dict[str, Any]]:
        """The latest ``count`` records from the file, oldest first."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().splitlines()
        return [json.loads(line) for line in lines[-count:] if line.strip()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def verify_chain(path: Path, key: bytes) -> tuple[bool, int, str]:
    """Check the keyed hash chain of an audit file (``key``: :func:`chain_key`): (ok,
    records checked, problem or "")."""
    if not path.exists():
        return True, 0, ""
    previous = _GENESIS
    count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                return False, count, f"line {number} is not JSON"
            if entry.get("prev") != previous:
                return False, count, f"line {number} does not follow line {number - 1}"
            previous = _line_hash(line, key)
            count += 1
    return True, count, ""


def read_stream(client: Any, keys: Keys, count: int = 50) -> list[dict[str, Any]]:
    """The latest ``count`` records of the Redis stream, newest first (decoded)."""
    out = []
    for stream_id, fields in client.xrevrange(keys.audit(), count=count):
        record: dict[str, Any] = {"id": stream_id.decode() if isinstance(stream_id, bytes)
                                  else stream_id}
        for key, value in fields.items():
            name = key.decode() if isinstance(key, bytes) else key
            text = value.decode() if isinstance(value, bytes) else value
            if name == "detail":
                with contextlib.suppress(ValueError):
                    text = json.loads(text)
            record[name] = text
        out.append(record)
    return out


def record_action(settings: Settings, action: str, *, target: str | None = None,
                  actor: str | None = None, outcome: str = "ok",
                  **detail: Any) -> dict[str, Any] | None:
    """Audit an action taken by a command (default actor: the CLI user), with a short-lived,
    best-effort Redis client for the stream copy. A failure to write the file is logged as
    an error and returns None: the action itself has already happened."""
    client = None
    try:
        from bouquet.core.redisclient import redis_client

        client = redis_client(settings.redis_url, socket_timeout=2, socket_connect_timeout=1)
        return AuditLog(settings, client).record(action, actor=actor or cli_actor(),
                                                 target=target, outcome=outcome, **detail)
    except OSError as exc:
        log.error("audit record of %s %s could not be written: %s", action, target, exc)
        return None
    finally:
        if client is not None:
            client.close()
