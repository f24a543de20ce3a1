"""MLflow tracking: one checked connection, the experiment, and what every run records.

The local default is a SQLite store under the state directory with artifacts under
``settings.mlflow_artifact_root``; any MLflow server works through ``MLFLOW_TRACKING_URI``.
A bad URI must fail fast and say what to do: MLflow's HTTP client retries a dead server for
minutes, so :func:`connect` first probes the server with a short timeout and turns every
failure into :class:`TrackingUnavailable`, whose message is one line the CLI prints as is.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bouquet.core.settings import Settings
from bouquet.core.statefiles import private_dir

log = logging.getLogger(__name__)

#: Longest parameter value MLflow accepts (longer values are truncated with a marker).
MAX_PARAM_CHARS = 6000


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be used; the message says what failed and the fix."""


def _fix_hint(uri: str) -> str:
    return ("check MLFLOW_TRACKING_URI (unset it to use the local SQLite store under "
            f"BOUQUET_STATE_DIR){'' if uri.startswith('sqlite') else ' or start the server'}")


def probe(uri: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` unless ``uri`` looks usable, quickly."""
    if uri.startswith(("http://", "https://")):
        import httpx

        url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            response = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}: "
                f"{str(exc)[:120] or 'no answer'}); {_fix_hint(uri)}") from None
        if response.status_code in (401, 403):
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} refused the request (HTTP "
                f"{response.status_code}); set MLFLOW_TRACKING_TOKEN or "
                "MLFLOW_TRACKING_USERNAME/PASSWORD for it") from None
        if response.status_code >= 500:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} answered HTTP {response.status_code}; "
                f"{_fix_hint(uri)}") from None
    elif uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        try:
            private_dir(database.parent)
        except OSError as exc:
            raise TrackingUnavailable(
                f"cannot create the MLflow SQLite store folder {database.parent} "
                f"({exc.strerror}); {_fix_hint(uri)}") from None


def connect(settings: Settings) -> Any:
    """An ``MlflowClient`` on ``settings.mlflow_uri`` that has answered one request."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    uri = settings.mlflow_uri
    probe(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MlflowException, unsupported scheme, missing driver, bad db
        detail = exc.message if isinstance(exc, MlflowException) else str(exc)
        raise TrackingUnavailable(f"MLflow tracking store {uri} is not usable "
                                  f"({_first_sentence(detail, type(exc).__name__)}); "
                                  f"{_fix_hint(uri)}") from None
    return client


def _first_sentence(text: str, fallback: str) -> str:
    line = (str(text).strip().splitlines() or [fallback])[0]
    return line.split(". ")[0][:160]


def quiet_mlflow() -> None:
    """MLflow sets its own logger to INFO when imported; keep it at WARNING unless -v."""
    import mlflow  # noqa: F401  (the import is what resets the level)

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def ensure_experiment(client: Any, settings: Settings) -> str:
    """The experiment's id, created on first use.

    With a local store the experiment's artifacts go to ``settings.mlflow_artifact_root``
    (the folder ``bouquet stack up --mlflow-ui`` serves); a server decides for itself.
    """
    name = settings.mlflow_experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if is_local_store(settings.mlflow_uri):
        root = private_dir(settings.mlflow_artifact_root.resolve())
        location = root.as_uri()
    experiment_id = client.create_experiment(name, artifact_location=location)
    log.info("created MLflow experiment %r (artifacts %s)", name, location or "server default")
    return experiment_id


def git_state(start: Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the checkout Bouquet runs from (``unknown`` outside git)."""
    where = start or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow ``key: str`` pairs (``dataset.event_weights.view``)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics MLflow can store (NaN — e.g. no evaluable user — is left out)."""
    return {k: float(v) for k, v in metrics.items()
            if v is not None and not math.isnan(float(v))}
