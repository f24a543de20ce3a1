"""Erasure that cascades: the register, the real-time state, the published keyspace, models.

A resident's right to erasure must reach every store Bouquet keeps. Where each one is
handled (docs/privacy.md has the full table):

==========================  ===================================================================
store                       what erases the resident
==========================  ===================================================================
erasure register            :class:`ErasureRegister` — records *that* a resident was erased and
                            up to when, under a keyed reference (never the raw id)
Redis real-time state       :func:`bouquet.streaming.state.erase_resident` (per-resident keys,
                            active sets, last contact) — from the admin API / CLI at once, and
                            by the consumer when the ``erase`` event arrives
Redis published keyspace    :func:`delete_published` — the resident's lists in every version a
                            pointer names, keeps for rollback, or lists in ``rec:versions``
event log                   hidden at once by :func:`bouquet.core.eventlog.read_events` (the
                            ``erase`` event), removed from the files by
                            :mod:`bouquet.privacy.compaction`, which also drops late events
                            (time stamped before the erasure) using the register
next training / publish     training reads through ``read_events``; ``bouquet publish`` drops
                            erased residents from the model it publishes (:func:`without_erased`)
                            and scrubs erasures recorded while it ran (:func:`scrub_published`)
registered model artifacts  ``bouquet compact --models`` rewrites artifacts registered before
                            the erasure without the resident's rows (:func:`scrub_artifacts`)
==========================  ===================================================================

**The register.** ``STATE_DIR/privacy/erasures.jsonl``: one JSON line per erasure,
``{"ref": HMAC, "cutoff": epoch s, "recorded_at": ISO, "source": …, "key_id": …}``, appended
under ``flock`` and fsynced. ``ref`` is :func:`bouquet.privacy.audit.resident_ref` — HMAC-SHA256
with ``BOUQUET_PSEUDONYM_SECRET`` — so the register does not keep the id it exists to forget
and cannot be tested against a list of candidate ids without the secret. ``cutoff`` is the
erasure request's time: events of that resident time-stamped at or before it are erased
data, wherever and whenever they show up (a late event from an offline kiosk, a partner's
batch re-sent); events after it are new data (the resident came back). ``key_id`` names the
secret the references were made with: a register read with another secret is refused
rather than silently matching nothing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bouquet.core.keys import Keys
from bouquet.core.settings import Settings
from bouquet.core.statefiles import open_private, private_dir
from bouquet.privacy.audit import AuditLog, resident_ref
from bouquet.privacy.audit import entry as audit_entry

log = logging.getLogger(__name__)


#: Who the audit log names for erasures the consumer learns from the topic.
INGEST_ACTOR = "system:bouquet-ingest"


class RegisterKeyMismatch(RuntimeError):
    """The register was written with another pseudonymisation secret."""


def register_path(settings: Settings) -> Path:
    return settings.state_dir / "privacy" / "erasures.jsonl"


def key_id(secret: str) -> str:
    """A public name of the secret (which secret made the references), not the secret."""
    return hmac.new(secret.encode("utf-8"), b"bouquet-register-key-id",
                    hashlib.sha256).hexdigest()[:16]


class ErasureRegister:
    """Durable record of erased residents: keyed reference → erasure time (epoch s).

    Readers see entries appended by other processes (:meth:`reload` reads what was added to
    the file since the last read), so a long-running publisher or consumer stays current.
    """

    def __init__(self, path: Path, secret: str) -> None:
        self.path = Path(path)
        self.secret = secret
        self.key_id = key_id(secret)
        self._cutoffs: dict[str, float] = {}
        self._offset = 0
        self.reload()

    @classmethod
    def for_settings(cls, settings: Settings) -> ErasureRegister:
        return cls(register_path(settings), settings.pseudonym_secret)

    # --- reading ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Read entries appended since the last read (by this or another process)."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being appended is read next time
        for line in complete.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("key_id") != self.key_id:
                raise RegisterKeyMismatch(
                    f"{self.path} was written with another BOUQUET_PSEUDONYM_SECRET (key id "
                    f"{entry.get('key_id')!r}, this process has {self.key_id!r}); erased "
                    "residents could not be recognised")
            ref, cutoff = entry["ref"], float(entry["cutoff"])
            if cutoff > self._cutoffs.get(ref, float("-inf")):
                self._cutoffs[ref] = cutoff
        self._offset += len(complete)

    def ref(self, resident_id: str) -> str:
        return resident_ref(resident_id, self.secret)

    def cutoff(self, resident_id: str) -> float | None:
        """Erasure time (epoch s) of a resident, None if never erased."""
        return self._cutoffs.get(self.ref(resident_id))

    def is_erased_ref(self, ref: str) -> bool:
        """Whether a keyed reference (as the dead-letter topic's keys carry) is on record."""
        return ref in self._cutoffs

    def __len__(self) -> int:
        return len(self._cutoffs)

    def __contains__(self, resident_id: object) -> bool:
        return isinstance(resident_id, str) and self.ref(resident_id) in self._cutoffs

    def erased_among(self, resident_ids: Iterable[str]) -> dict[str, float]:
        """Resident id → erasure time, for the ids given that were erased (each id is hashed
        once: ~1 µs; a million residents take about a second)."""
        if not self._cutoffs:
            return {}
        out: dict[str, float] = {}
        cutoffs, secret = self._cutoffs, self.secret
        for rid in dict.fromkeys(resident_ids):
            found = cutoffs.get(resident_ref(rid, secret))
            if found is not None:
                out[rid] = found
        return out

    def erased_mask(self, resident_ids: Sequence[str] | np.ndarray,
                    ts_epoch: Sequence[float] | np.ndarray) -> np.ndarray:
        """Per event: True when its resident was erased at or after its time stamp (the event
        is erased data). Vectorised over a batch: one HMAC per distinct resident."""
        rids = np.asarray(resident_ids, dtype=object)
        ts = np.asarray(ts_epoch, dtype=np.float64)
        if not len(rids) or not self._cutoffs:
            return np.zeros(len(rids), dtype=bool)
        uniques, codes = np.unique(rids.astype(str), return_inverse=True)
        erased = self.erased_among(uniques.tolist())
        if not erased:
            return np.zeros(len(rids), dtype=bool)
        per_unique = np.array([erased.get(u, np.nan) for u in uniques.tolist()])
        cut = per_unique[codes]
        return ~np.isnan(cut) & (ts <= cut)

    # --- writing ---------------------------------------------------------------------------
    def record(self, resident_id: str, cutoff: float, source: str) -> bool:
        """Record an erasure (durable on return). False when an entry at least as recent
        already exists (idempotent)."""
        return bool(self.record_many([(resident_id, cutoff)], source))

    def record_many(self, erasures: Iterable[tuple[str, float]], source: str) -> list[str]:
        """Record several erasures with one fsync; returns the resident ids whose entry is
        new (or later than the one on record)."""
        self.reload()
        lines = []
        now = datetime.now(UTC).isoformat(timespec="seconds")
        newest: dict[str, tuple[str, float]] = {}
        for rid, cutoff in erasures:
            ref = self.ref(rid)
            cutoff = float(cutoff)
            if cutoff <= max(self._cutoffs.get(ref, float("-inf")),
                             newest.get(ref, ("", float("-inf")))[1]):
                continue
            newest[ref] = (rid, cutoff)
        for ref, (_, cutoff) in newest.items():
            lines.append(json.dumps({"ref": ref, "cutoff": cutoff, "recorded_at": now,
                                     "source": source, "key_id": self.key_id},
                                    separators=(",", ":")).encode() + b"\n")
        if not lines:
            return []
        private_dir(self.path.parent)
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b"".join(lines))
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self.reload()
        return [rid for rid, _ in newest.values()]


# --- Redis: real-time state and the published keyspace -------------------------------------
def pointer_keys(client: Any, keys: Keys) -> dict[str, str]:
    """Every version pointer, name → key, without a SCAN of the keyspace: ``current`` and
    each pointer a published version's meta hash names (``bouquet publish --pointer``
    records it there)."""
    versions = [_text(v) for v in client.zrange(keys.versions(), 0, -1)]
    names = {"current"}
    if versions:
        pipe = client.pipeline(transaction=False)
        for version in versions:
            pipe.hget(keys.version_meta(version), "pointer")
        names |= {_text(name) for name in pipe.execute() if name}
    return {name: keys.current_version() if name == "current" else keys.variant_pointer(name)
            for name in sorted(names)}


def published_versions(client: Any, keys: Keys) -> set[str]:
    """Every keyspace version that may still hold resident lists: those on record in
    ``rec:versions``, those a pointer names, and each one's ``previous`` (kept for rollback)."""
    found = {_text(v) for v in client.zrange(keys.versions(), 0, -1)}
    # GETs in a pipeline, not one MGET: the pointers need not share a Redis Cluster slot
    pipe = client.pipeline(transaction=False)
    for key in pointer_keys(client, keys).values():
        pipe.get(key)
    for value in pipe.execute():
        if value:
            found.add(_text(value))
    for version in list(found):
        previous = client.hget(keys.version_meta(version), "previous")
        if previous:
            found.add(_text(previous))
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def delete_published(client: Any, keys: Keys, resident_ids: Iterable[str],
                     versions: Iterable[str] | None = None) -> int:
    """Delete the residents' precomputed lists (bundles and services) in every version;
    returns how many keys existed."""
    versions = list(published_versions(client, keys) if versions is None else versions)
    names = [keys.recs(v, rid, kind) for rid in resident_ids for v in versions
             for kind in ("b", "s")]
    deleted = 0
    for start in range(0, len(names), 1000):
        deleted += int(client.delete(*names[start:start + 1000]) or 0)
    return deleted


@dataclass
class CascadeReport:
    """What one erasure removed from the stores it can reach synchronously."""

    ref: str
    cutoff: float
    register_new: bool
    realtime_erased: bool
    published_lists_deleted: int
    versions_checked: int
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ref"] = self.ref[:16]
        return out


def erase_event(resident_id: str, at: datetime) -> dict[str, Any]:
    """The ``erase`` event that makes an erasure durable in the log and reach every consumer.
    Its id carries no resident id (event ids end up in de-duplication markers)."""
    return {"schema_version": 1, "event_id": f"erase-{uuid.uuid4().hex}",
            "resident_id": resident_id, "type": "erase", "ts": at.isoformat(),
            "channel": "system"}


def cascade(settings: Settings, client: Any, resident_id: str, *, at: datetime,
            source: str, register: ErasureRegister | None = None) -> CascadeReport:
    """Erase a resident from the register, the real-time state and every published keyspace
    (synchronously; the event log and models follow via the ``erase`` event, compaction and
    the next training). Idempotent. Redis errors are reported, not raised, so the caller can
    answer "retry" after doing what it could.

    The cutoff (``report.cutoff``, epoch s) is the later of ``at`` and the newest event time
    the real-time state has seen for the resident: a device with its clock ahead may have
    sent events stamped after the request, and a copy of one arriving later must not count
    as new data. The caller stamps the ``erase`` event with it (:func:`erase_event`)."""
    from bouquet.streaming.state import erase_resident, newest_event_times

    keys = Keys(settings.redis_key_prefix)
    register = register or ErasureRegister.for_settings(settings)
    cutoff = at.timestamp()
    errors = []
    try:  # events stamped after the request but already seen are erased data too
        cutoff = max(cutoff, newest_event_times(client, keys, [resident_id]).get(
            resident_id, cutoff))
    except Exception as exc:  # Redis down: the request time; the consumer extends it
        errors.append(f"redis: {exc.__class__.__name__}: {exc}")
    new = register.record(resident_id, cutoff, source)
    report = CascadeReport(register.ref(resident_id), cutoff, new, False, 0, 0, errors)
    if errors:
        return report
    try:
        erase_resident(client, keys, resident_id)
        report.realtime_erased = True
        versions = published_versions(client, keys)
        report.versions_checked = len(versions)
        report.published_lists_deleted = delete_published(client, keys, [resident_id], versions)
    except Exception as exc:  # redis.RedisError, OSError: report, the caller retries
        report.errors.append(f"redis: {exc.__class__.__name__}: {exc}")
    return report


class ErasureCascade:
    """The ingestion consumer's erasure hooks (``streaming.consumer.ErasureHooks``).

    Before a batch is written the consumer asks who of its residents is on record
    (:meth:`erased_among`, to drop late events); after it, :meth:`after_erase` adds the
    batch's erasures to the two stores the consumer's own script does not reach: the
    register (so late events and the next publish know) and the published keyspace.
    ``after_erase`` takes ``(resident id, erasure epoch s)`` pairs, or bare resident ids
    (the erasure time is then now, which also erases events of the few seconds between
    the request and its ingestion).
    """

    def __init__(self, settings: Settings, client: Any) -> None:
        self.settings = settings
        self.client = client
        self.keys = Keys(settings.redis_key_prefix)
        self.register = ErasureRegister.for_settings(settings)
        self.audit = AuditLog(settings, client)

    def after_erase(self, erased: Iterable[str | tuple[str, float]]) -> int:
        """Record the erasures, audit those the register did not know yet (an erasure made
        through the API or the CLI is on record, and audited, before its event arrives; one
        put on the topic by any other producer is audited here), delete published lists."""
        pairs = [(e, time.time()) if isinstance(e, str) else (e[0], float(e[1]))
                 for e in erased]
        if not pairs:
            return 0
        # audited before the register learns them: a crash in between audits an erasure
        # twice when the batch is replayed, never not at all
        self.register.reload()
        known = self.register.erased_among(rid for rid, _ in pairs)
        latest: dict[str, float] = {}
        for rid, cutoff in pairs:
            latest[rid] = max(cutoff, latest.get(rid, cutoff))
        self.audit.record_many([
            audit_entry("erasure", actor=INGEST_ACTOR,
                        target=f"resident:{self.register.ref(rid)[:16]}", source="ingestion",
                        cutoff=cutoff)
            for rid, cutoff in latest.items() if cutoff > known.get(rid, float("-inf"))])
        self.register.record_many(pairs, "ingestion")
        return delete_published(self.client, self.keys, [rid for rid, _ in pairs])

    def erased_among(self, resident_ids: Iterable[str]) -> dict[str, float]:
        """Erasure time (epoch s) of those of ``resident_ids`` on record: what the consumer
        asks before writing a batch, to drop late events. The register is re-read for
        entries other processes appended; one HMAC per distinct resident, and none (the ids
        not even iterated) while nobody is on record."""
        self.register.reload()
        return self.register.erased_among(resident_ids)


# --- publish: never re-publish an erased resident ------------------------------------------
def without_erased(model: Any, register: ErasureRegister,
                   created_at: float | None = None) -> tuple[Any, list[str]]:
    """The model without the rows of residents erased at or after ``created_at`` (when the
    model's training run started; None = any erasure). A model trained *after* an erasure
    holds only what the resident did after it (training read the log with the erasure
    applied), so it keeps their row. Returns (model, erased ids removed)."""
    residents = list(model.resident_ids)
    erased = register.erased_among(residents)
    if created_at is not None:
        erased = {r: c for r, c in erased.items() if c >= created_at}
    if not erased:
        return model, []
    keep = np.array([r not in erased for r in residents], dtype=bool)
    filtered = model.without_residents(keep)
    log.info("publish: %d erased resident(s) left out of the model", len(erased))
    return filtered, sorted(erased)


def scrub_published(settings: Settings, client: Any, version: str,
                    resident_ids: Iterable[str]) -> int:
    """After a publish: delete lists of residents erased while it ran (the register is
    re-read). Returns the keys deleted."""
    register = ErasureRegister.for_settings(settings)
    erased = register.erased_among(resident_ids)
    if not erased:
        return 0
    return delete_published(client, Keys(settings.redis_key_prefix), erased, [version])


# --- registered model artifacts ------------------------------------------------------------
def _local_dir(source: str) -> Path | None:
    path = source.removeprefix("file://")
    if "://" in path or ":" in path.split("/", 1)[0]:
        return None
    found = Path(path)
    return found if found.is_dir() else None


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass
class ArtifactScrub:
    version: str | None  # the registered version, None for a run's artifact never registered
    source: str
    rows_removed: int
    residents_before: int
    rewritten: str  # "in place" | "re-uploaded" | "dry run"
    run_id: str | None = None


@dataclass(frozen=True)
class _ModelArtifact:
    """One model to check: a registered version's, or one a training run logged that was
    never registered (``bouquet train --no-register``); ``version`` None for the latter.
    ``source`` is where its files are; ``model_id`` the MLflow logged model holding them
    (None for a first-release run artifact folder)."""

    source: str
    run_id: str | None
    version: Any = None
    model_id: str | None = None


def _model_artifacts(client: Any, settings: Settings) -> list[_ModelArtifact]:
    """Every model Bouquet's MLflow store holds: the registered versions, then the logged
    models of the experiment no version points at, then first-release runs' ``model``
    folders no version points at."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from bouquet.models.deployable import model_location

    found: dict[str, _ModelArtifact] = {}
    try:
        versions = client.search_model_versions(f"name = '{settings.registered_model}'")
    except MlflowException:
        versions = []
    for mv in versions:
        source = model_location(client, mv.source or "")
        found.setdefault(source, _ModelArtifact(source, mv.run_id, mv, _model_id_in(source)))
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return list(found.values())
    token = None
    while True:
        logged = client.search_logged_models(experiment_ids=[experiment.experiment_id],
                                             max_results=100, page_token=token)
        for model in logged:
            found.setdefault(model.artifact_location, _ModelArtifact(
                model.artifact_location, model.source_run_id, None, model.model_id))
        token = logged.token
        if not token:
            break
    # a run that logged a model is covered above; MLflow resolves such a run's ``model``
    # path to the logged model through the process's global tracking URI, so it is not
    # listed again (a first-release run's folder is listed at its artifact URI instead)
    with_logged = {a.run_id for a in found.values() if a.model_id}
    token = None
    while True:
        runs = client.search_runs([experiment.experiment_id], max_results=500,
                                  page_token=token)
        for run in runs:
            source = f"{run.info.artifact_uri}/model"
            if source in found or run.info.run_id in with_logged or not any(
                    a.path.endswith("meta.json") for a in mlflow.artifacts.list_artifacts(
                        artifact_uri=source, tracking_uri=settings.mlflow_uri)):
                continue
            found[source] = _ModelArtifact(source, run.info.run_id)
        token = runs.token
        if not token:
            return list(found.values())


def _model_id_in(location: str) -> str | None:
    """The logged model id in a logged model's artifact location (``…/models/m-…/artifacts``),
    None for a run's folder."""
    parts = location.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 3 and parts[-3] == "models" \
        and parts[-2].startswith("m-") else None


def scrub_artifacts(settings: Settings, register: ErasureRegister | None = None, *,
                    dry_run: bool = False) -> list[ArtifactScrub]:
    """Rewrite every model — of a registered version, or of a training run never
    registered — that still holds rows (ids, factors or input rows, neighbourhood) of
    residents erased after the model was made.

    A local model directory (the default ``STATE_DIR/mlartifacts`` store) is rewritten in
    place, each file atomically (temp + rename); a remote one (an MLflow server's store) is
    downloaded, rewritten and logged back to the same logged model (or run path). The
    version (or the run, when there is none) is tagged ``erasure_scrubbed_at`` and
    ``erasure_rows_removed``. Scores of every other resident are unchanged: a resident's
    row (factors, or input rows of a linear model) is theirs alone.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from bouquet.models.deployable import find_model_dir, load_model_dir

    register = register or ErasureRegister.for_settings(settings)
    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    out: list[ArtifactScrub] = []
    for target in _model_artifacts(client, settings):
        with tempfile.TemporaryDirectory(prefix="bouquet-scrub-") as tmp:
            local = _local_dir(target.source)
            root = local or Path(mlflow.artifacts.download_artifacts(
                artifact_uri=target.source, dst_path=tmp, tracking_uri=settings.mlflow_uri))
            directory = find_model_dir(root)
            model = load_model_dir(directory)
            ids = model.resident_ids.tolist()
            try:  # the run's start: its data were read after it
                created = _run_started(client, target.run_id)
            except MlflowException:
                created = None
            if created is None:
                created = _epoch(model.meta.get("created_at"))
            erased = register.erased_among(ids)
            if created is not None:
                erased = {r: c for r, c in erased.items() if c >= created}
            if not erased:
                continue
            keep = np.array([r not in erased for r in ids], dtype=bool)
            how = "dry run"
            if not dry_run:
                scrubbed = model.without_residents(keep)
                if local is not None:
                    scrubbed.save(directory)
                    how = "in place"
                else:
                    staged = Path(tmp) / "scrubbed"
                    scrubbed.save(staged / directory.relative_to(root))
                    if target.model_id:
                        client.log_model_artifacts(target.model_id, str(staged))
                    else:
                        client.log_artifacts(target.run_id, str(staged / directory.relative_to(
                            root)), "model")
                    shutil.rmtree(staged, ignore_errors=True)
                    how = "re-uploaded"
                _tag_scrubbed(client, target, int((~keep).sum()))
            version = str(target.version.version) if target.version is not None else None
            out.append(ArtifactScrub(version, target.source, int((~keep).sum()), len(ids), how,
                                     target.run_id))
            log.info("model %s: %d erased resident row(s) removed (%s)",
                     f"version {version}" if version else f"of run {target.run_id}",
                     int((~keep).sum()), how)
    return out


def _tag_scrubbed(client: Any, target: _ModelArtifact, rows: int) -> None:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if target.version is not None:
        mv = target.version
        client.set_model_version_tag(mv.name, mv.version, "erasure_scrubbed_at", now)
        client.set_model_version_tag(mv.name, mv.version, "erasure_rows_removed", str(rows))
    else:
        client.set_tag(target.run_id, "erasure_scrubbed_at", now)
        client.set_tag(target.run_id, "erasure_rows_removed", str(rows))


def model_created_at(settings: Settings, model_version: str) -> float | None:
    """When the training run of a registered version (``v7`` or ``7``) *started* (epoch s):
    it read the event log after that, so an erasure recorded before it was applied to its
    data, and one recorded after it may not have been. None if unknown — which makes
    :func:`without_erased` leave out every erased resident, the safe side."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
        found = client.get_model_version(settings.registered_model,
                                         model_version.removeprefix("v"))
        return _run_started(client, found.run_id)
    except Exception:  # MLflow unreachable or version unknown: be conservative
        return None


def _run_started(client: Any, run_id: str | None) -> float | None:
    if not run_id:
        return None
    started = client.get_run(run_id).info.start_time
    return started / 1000 if started else None
