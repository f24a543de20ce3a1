"""Services of a test's own, to kill and restart: a Redis with its AOF, a paused broker."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from bouquet.core.settings import Settings
from bouquet.localstack import kafka_ready
from bouquet.localstack import resolve_broker_binary as broker_binary


def start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    """``redis-server`` with an AOF in ``data``, ``appendfsync always``.

    Not ``everysec`` as ``bouquet stack up``: with ``everysec``, while a background fsync is
    slow Redis may acknowledge writes it has not yet handed to the kernel (for up to 2 s),
    and a SIGKILL then loses them — Redis's documented trade-off, which no client can see.
    These tests check what the *consumer* does when Redis dies, so Redis keeps what it
    acknowledged (docs/reliability.md, "Redis's own durability")."""
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
                             "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except (redis.ConnectionError, redis.BusyLoadingError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def start_broker(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([broker_binary(), "broker", "--listener-url",
                             f"tcp://127.0.0.1:{port}", "--advertised-listener-url",
                             f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not kafka_ready(Settings(env="test", kafka_bootstrap_servers=f"127.0.0.1:{port}"),
                          1.0)[0]:
        if time.monotonic() > deadline:
            kill(proc)
            raise RuntimeError("broker did not start")
        time.sleep(0.2)
    return proc
