"""A real Redis Cluster on loopback for tests: three primaries, no replicas.

Each node is a ``redis-server`` with ``cluster-enabled yes`` on a free port, in its own
directory; ``redis-cli --cluster create`` assigns the 16,384 slots. The cluster is what a
production deployment runs (the protocol, ``MOVED`` redirections, cross-slot refusals), not
a mock, so a script that touches two slots fails here as it would there.
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from bouquet.localstack import port_is_free

log = logging.getLogger(__name__)

#: Primaries of the test cluster (the smallest cluster ``redis-cli`` creates).
PRIMARIES = 3


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started (the reason is in the message)."""


def missing_binaries() -> list[str]:
    """The programs a local cluster needs that are not installed."""
    return [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]


def cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus port (the port + 10,000) is free too: the
    bus must stay below 65,536, so the kernel's ephemeral ports (often above 55,535) do
    not do."""
    chosen: list[int] = []
    for port in random.sample(range(20000, 45000), 2000):
        if port_is_free("127.0.0.1", port) and port_is_free("127.0.0.1", port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise ClusterUnavailable(f"no {count} free port pairs (port, port + 10000) on loopback")


def _wait_ping(port: int, timeout_s: float) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"redis-server on port {port} did not answer")
        time.sleep(0.05)


def _wait_ok(ports: list[int], timeout_s: float) -> None:
    """Until every node reports ``cluster_state:ok`` (slots assigned and gossip settled)."""
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    while pending:
        port = pending[0]
        info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).cluster("info")
        state = info.get("cluster_state") if isinstance(info, dict) else None
        if state == "ok":
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"node {port} is still in cluster state {state!r}")
        time.sleep(0.1)


@contextmanager
def local_cluster(root: Path, primaries: int = PRIMARIES,
                  timeout_s: float = 30.0) -> Iterator[str]:
    """Start a cluster under ``root``; yield its URL (``redis+cluster://`` with every
    node as an entry point, what ``REDIS_URL`` takes); stop every node on exit."""
    missing = missing_binaries()
    if missing:
        raise ClusterUnavailable(f"not installed: {', '.join(missing)}")
    ports = cluster_ports(primaries)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = root / f"node-{port}"
            node_dir.mkdir(parents=True)
            log_file = (node_dir / "redis.log").open("wb")
            processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "",
                 "--dir", str(node_dir)],
                stdout=log_file, stderr=subprocess.STDOUT))
        for port in ports:
            _wait_ping(port, timeout_s)
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False)
        if created.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed: "
                                     f"{created.stdout[-500:]} {created.stderr[-500:]}")
        _wait_ok(ports, timeout_s)
        log.info("Redis Cluster up on ports %s", ports)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
