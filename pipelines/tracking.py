"""MLflow tracking: one checked connection, the experiment, and what every run records.

The local default is a SQLite store under the state directory with artifacts under
``settings.mlflow_artifact_root``; any MLflow server works through ``MLFLOW_TRACKING_URI``.
A bad URI must fail fast and say what to do: MLflow's HTTP client retries a dead server for
minutes, so :func:`connect` first probes the server with a short timeout and turns every
failure into :class:`TrackingUnavailable`, whose message is one line the CLI prints as is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bouquet.core.settings import Settings
from bouquet.core.statefiles import private_dir

log = logging.getLogger(__name__)

#: Longest parameter value MLflow accepts (longer values are truncated with a marker).
MAX_PARAM_CHARS = 6000
#: The experiment kind tag: without it the MLflow UI may open the experiment in its GenAI
#: mode (traces, evaluation runs); Bouquet's runs are model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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


def show_mlflow_progress(enabled: bool) -> None:
    """Turn MLflow's own artifact progress bars on or off, so ``--no-progress`` silences
    every bar (MLflow reads this switch from the environment when it transfers files)."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "true" if enabled else "false"


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def ensure_experiment(client: Any, settings: Settings) -> str:
    """The experiment's id, created on first use, marked as a model-training experiment.

    With a local store the experiment's artifacts go to ``settings.mlflow_artifact_root``
    (the folder ``bouquet stack up --mlflow-ui`` serves); a server decides for itself.
    """
    name = settings.mlflow_experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    if is_local_store(settings.mlflow_uri):
        root = private_dir(settings.mlflow_artifact_root.resolve())
        location = root.as_uri()
    experiment_id = client.create_experiment(name, artifact_location=location,
                                             tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
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


def log_deployable(client: Any, settings: Settings, run_id: str, model: Any) -> str:
    """Log a deployable model to the run as an MLflow Model (pyfunc flavour, with a
    signature and an input example); returns where its files are (the logged model's
    artifact location: registering that, rather than ``models:/<id>``, lets the registry
    resolve it without MLflow's process-wide tracking URI).

    The Bouquet artifact directory (``meta.json`` + ``arrays.npz``) is the model's artifact
    ``bouquet_model``; the flavour's code is :mod:`bouquet.pipelines.mlflow_model`, logged
    as code, not pickled. The input example is a made-up resident id: no resident's data
    leaves the model files.
    """
    import tempfile

    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from bouquet.pipelines import mlflow_model

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "resident_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema([ColSpec("string", "resident_id"), ColSpec("long", "rank"),
                        ColSpec("string", "bundle_id"), ColSpec("double", "score")]))
    example = pd.DataFrame({"resident_id": ["r-example"], "k": [3]})
    with tempfile.TemporaryDirectory(prefix="bouquet-model-") as tmp, \
            fluent_store(settings.mlflow_uri):
        directory = model.save(Path(tmp) / mlflow_model.ARTIFACT)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=mlflow_model.__file__,
                artifacts={mlflow_model.ARTIFACT: str(directory)}, signature=signature,
                input_example=example, pip_requirements=[f"bouquet=={_bouquet_version()}"])
    return str(client.get_logged_model(info.model_id).artifact_location)


@contextlib.contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model``) works on process-wide tracking and registry URIs
    (which it also copies into the environment for subprocesses); set them for one call and
    put back exactly what was there — unset included — so no other client of this process,
    nor a later settings object reading ``MLFLOW_TRACKING_URI``, is redirected."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_uris
    from mlflow.tracking._tracking_service import utils as tracking_uris

    previous = tracking_uris._tracking_uri, registry_uris._registry_uri
    saved_env = {name: os.environ.get(name)
                 for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_uris._tracking_uri, registry_uris._registry_uri = previous
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def client_of(settings: Settings) -> Any:
    """An ``MlflowClient`` on the settings' store, registry included (never the process's
    global registry URI)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def download_model_dir(settings: Settings, source: str, dst: Path) -> Path:
    """Download a registered version's model and return Bouquet's model directory in it
    (an MLflow Model's ``artifacts/bouquet_model``, or a plain run artifact directory as
    the first release registered)."""
    import mlflow

    from bouquet.models.deployable import find_model_dir, model_location

    location = model_location(client_of(settings), source)
    return find_model_dir(mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=str(dst), tracking_uri=settings.mlflow_uri))


def _bouquet_version() -> str:
    from bouquet import __version__

    return __version__
