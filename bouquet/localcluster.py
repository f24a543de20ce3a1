"""A real Redis Cluster on loopback: three primaries, no replicas.

Each node is a ``redis-server`` with ``cluster-enabled yes`` on its own port and in its own
directory; ``redis-cli --cluster create`` assigns the 16,384 slots. It is what a production
deployment runs (the protocol, ``MOVED`` redirections, cross-slot refusals), not a mock,
so a script that touches two slots fails here as it would there.

``bouquet stack up --redis-cluster`` starts one through :class:`bouquet.localstack.LocalStack`
(detached, pids recorded, stopped by ``stack down``), and tests and benchmarks start
theirs through the same class, pointing ``REDIS_URL`` at free ports from
:func:`cluster_ports`: one way to start a cluster, whoever asks.
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import time
from pathlib import Path

import redis

from bouquet.core.redisclient import SLOTS, cluster_nodes, is_cluster_url
from bouquet.localstack import LOOPBACK, StackError, free_port, port_is_free, redis_argv

log = logging.getLogger(__name__)

#: Primaries of a local cluster (the smallest cluster ``redis-cli`` creates).
PRIMARIES = 3
#: Ports of ``stack up --redis-cluster`` when ``REDIS_URL`` names no local cluster (the
#: ports Redis's own cluster tutorial uses).
DEFAULT_PORTS = (7000, 7001, 7002)
#: A node's cluster bus listens on its port plus this.
BUS_OFFSET = 10000


class ClusterUnavailable(StackError):
    """The cluster could not be started (the reason is in the message)."""


def missing_binaries() -> list[str]:
    """The programs a local cluster needs that are not installed."""
    return [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]


def cluster_url(ports: list[int]) -> str:
    """The ``REDIS_URL`` of a local cluster: every node as an entry point."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def local_ports(url: str) -> list[int] | None:
    """The node ports of a cluster URL whose nodes are all on loopback (``None`` for any
    other URL): listed nodes when they are :data:`PRIMARIES`, else consecutive ports from
    the first one."""
    if not is_cluster_url(url):
        return None
    _, nodes = cluster_nodes(url)
    if any(host not in LOOPBACK for host, _ in nodes):
        return None
    if len(nodes) == PRIMARIES:
        return [port for _, port in nodes]
    return [nodes[0][1] + i for i in range(PRIMARIES)]


def cluster_ports(count: int = PRIMARIES) -> list[int]:
    """``count`` free ports whose cluster bus port is free too: the bus must stay below
    65,536, so the kernel's ephemeral ports (often above 55,535) do not do."""
    chosen: list[int] = []
    for port in random.sample(range(20000, 45000), 2000):
        if port_is_free("127.0.0.1", port) and port_is_free("127.0.0.1", port + BUS_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise ClusterUnavailable(f"no {count} free port pairs (port, port + {BUS_OFFSET}) on "
                             "loopback")


def free_redis_url(cluster: bool) -> str:
    """A ``REDIS_URL`` on free loopback ports for a private stack (tests, benchmarks): one
    Redis, or a cluster that :class:`~bouquet.localstack.LocalStack` starts from it."""
    if cluster:
        return cluster_url(cluster_ports())
    return f"redis://127.0.0.1:{free_port()}/0"


def check_ports_free(ports: list[int]) -> None:
    """Raise :class:`ClusterUnavailable` naming the first port (or bus port) in use."""
    for port in ports:
        for wanted in (port, port + BUS_OFFSET):
            if not port_is_free("127.0.0.1", wanted):
                raise ClusterUnavailable(
                    f"port {wanted} (a Redis Cluster node or its bus) is taken by another "
                    "process: stop it, or choose other ports with REDIS_URL=redis+cluster://"
                    "127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>")


def node_argv(port: int, node_dir: Path, *, persistent: bool) -> list[str]:
    """The command line of one node. ``persistent`` turns AOF on, as the single local
    Redis has it (the stack's cluster keeps its data across ``down``/``up``); a test's or
    benchmark's throw-away cluster saves nothing."""
    binary = shutil.which("redis-server") or "redis-server"
    return [*redis_argv(binary, port, node_dir, persistent=persistent),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000"]


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)


def _wait_ping(port: int, deadline: float) -> None:
    client = _node(port)
    while True:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"redis-server on port {port} did not answer")
        time.sleep(0.05)


def _cluster_info(port: int) -> dict[str, str]:
    info = _node(port).cluster("info")
    return info if isinstance(info, dict) else {}


def _wait_ok(ports: list[int], deadline: float) -> None:
    """Until every node reports ``cluster_state:ok`` (slots assigned and gossip settled)."""
    pending = list(ports)
    while pending:
        state = _cluster_info(pending[0]).get("cluster_state")
        if state == "ok":
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"node {pending[0]} is still in cluster state {state!r}")
        time.sleep(0.1)


def form_cluster(ports: list[int], timeout_s: float = 30.0) -> None:
    """Wait for the nodes on ``ports`` to answer, assign the slots with ``redis-cli
    --cluster create`` unless they already are (a persistent cluster started again reads
    its ``nodes.conf``), and wait until every node says the cluster is ok."""
    deadline = time.monotonic() + timeout_s
    for port in ports:
        _wait_ping(port, deadline)
    assigned = int(_cluster_info(ports[0]).get("cluster_slots_assigned", 0))
    if assigned != SLOTS:
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False)
        if created.returncode != 0:
            raise ClusterUnavailable(f"redis-cli --cluster create failed: "
                                     f"{created.stdout[-500:]} {created.stderr[-500:]}")
    _wait_ok(ports, deadline)
    log.info("Redis Cluster up on ports %s", ports)
