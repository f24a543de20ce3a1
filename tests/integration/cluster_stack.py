"""A local Redis Cluster for a test module, started by the code ``bouquet stack up
--redis-cluster`` runs (:class:`bouquet.localstack.LocalStack`), on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bouquet.core.settings import Settings
from bouquet.localcluster import free_redis_url, missing_binaries
from bouquet.localstack import LocalStack, StackError


def cluster_stack(state_dir: Path) -> LocalStack:
    """A stack whose ``REDIS_URL`` names a cluster on free loopback ports."""
    return LocalStack(Settings(env="test", state_dir=state_dir,
                               redis_url=free_redis_url(cluster=True)))


def started_cluster(state_dir: Path) -> Iterator[str]:
    """Start the cluster's nodes (Redis only: no broker, no MLflow), yield its URL, stop
    them; skip when Redis is not installed, fail when it is and the cluster does not
    start."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"a local Redis Cluster needs {', '.join(missing)} (apt-get install "
                    "redis-server redis-tools)")
    stack = cluster_stack(state_dir)
    try:
        stack.start_redis()
    except StackError as exc:
        stack.down()
        pytest.fail(f"the local Redis Cluster did not start: {exc}")
    try:
        yield stack.settings.redis_url
    finally:
        stack.down()
