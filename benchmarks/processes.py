"""Running Bouquet's own processes (``bouquet serve``, ``bouquet ingest``) for a benchmark.

The serving, soak and kill-replay benchmarks measure the real commands, as an operator runs
them, against a throw-away deployment: each process gets the deployment's settings through
its environment (and nothing of the caller's ``BOUQUET_*``), its own process group (so a
stop reaches uvicorn's workers too) and a log file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from bouquet.core.settings import Settings


def service_env(settings: Settings, api_key: str, **more: str) -> dict[str, str]:
    """The environment of a Bouquet process of ``settings``' deployment; ``api_key`` is the
    one app-role key the load generator uses."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BOUQUET_", "REDIS_URL", "KAFKA_", "MLFLOW_", "PROMETHEUS_"))}
    env.update({
        "BOUQUET_ENV": "test", "REDIS_URL": settings.redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "BOUQUET_STATE_DIR": str(settings.state_dir),
        "BOUQUET_EVENT_LOG_DIR": str(settings.event_log_path),
        "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "BOUQUET_API_KEYS": json.dumps({api_key: "app"}),
        "BOUQUET_TOPIC_EVENTS": settings.topic_events,
        "BOUQUET_TOPIC_DLQ": settings.topic_dlq,
        "BOUQUET_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "BOUQUET_CONSUMER_GROUP": settings.consumer_group,
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    })
    env.update(more)
    return env


def start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (process group), output appended to ``log_path``."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
         timeout_s: float = 30) -> None:
    """Signal the whole process group; SIGKILL it if it has not exited in ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    """Wait for ``GET base/readyz`` to answer 200; fail early if the server exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the server exited during start-up (see its log)")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the server did not become ready")


def load_note(before: tuple[float, float, float],
              shared_by: str = "every process of the deployment and the load generator"
              ) -> str:
    """The machine's load around a run: what the numbers shared the CPUs with."""
    after = os.getloadavg()
    return (f"load average (1/5/15 min) before {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f},"
            f" after {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} on {os.cpu_count()} CPUs; "
            f"{shared_by} share them")
