"""``bouquet publish``: the champion model → every resident's lists → a new Redis keyspace.

The batch side of the Feast-style split (STYLE.md): training writes MLflow, serving reads
Redis only, and this step moves results across.

1. Load the model the registry alias (``champion``) names and note its version and run.
2. Pick a new keyspace version ``<model_version>-<UTC timestamp>``; write its meta hash
   (``state=writing``) and the model's **serving view** (the deployable model without any
   resident's data, one ``.npz`` blob under a size cap) so a serving process loads model
   and lists of one version from one place.
3. Score residents in chunks (one matrix product per chunk, ``argpartition`` for the top N),
   pack each resident's top bundles and services (8 bytes an entry, see
   :func:`bouquet.models.online.pack_list`) and write them with pipelined ``SET``s; then the
   per-neighbourhood popular lists (the cold-start and no-consent answers).
   Every key is written with a *staging TTL*: if the process dies anywhere before the
   switch, the half-written keyspace disappears by itself and the pointer never moved.
4. ``PERSIST`` what was written, record counts, ``published_at`` and the ``previous``
   version in the meta hash, then switch the pointer with one Lua check-and-set on the
   pointer alone (it fails if another publish switched it meanwhile), then record the
   version in ``rec:versions`` and mark it live, and give versions older than the previous
   one a TTL — the previous one is kept for ``bouquet publish rollback``.

The switch touches one key because readers follow the pointer and nothing else, so one
key's atomic write is the whole switch; a Redis Cluster cannot run a script over the
pointer, ``rec:versions`` and a meta hash (three slots) anyway. What follows the switch is
bookkeeping: a publish that dies just after it leaves a version that serves but is not
in ``rec:versions`` yet, and the next publish's :meth:`Publisher.expire_old` records every
version a pointer names, so none escapes expiry or erasure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import redis

from bouquet.core.keys import Keys
from bouquet.core.redisclient import SyncClient, redis_client
from bouquet.core.scripts import lua_script
from bouquet.core.settings import Settings
from bouquet.models.base import top_n
from bouquet.models.deployable import DeployableModel, load_model_dir
from bouquet.models.online import (
    Audience,
    PublishedVersion,
    decode_meta,
    pack_list,
    pack_rows,
    unpack_list,
)
from bouquet.models.reasons import Driver
from bouquet.pipelines.tracking import client_of, download_model_dir

log = logging.getLogger(__name__)

#: A champion's version: every resident's own list.
PERSONAL = Audience()

#: Largest catalog a packed list can index (uint16 item indices).
MAX_ITEMS = 65_535


class PublishError(RuntimeError):
    """A publish that did not switch the pointer; the previous version still serves."""


@dataclass
class ScoredChunk:
    """Top-N lists of a chunk of residents (rows), best first; reasons index the vocabulary."""

    bundle_items: np.ndarray  # (n, kb) int
    bundle_scores: np.ndarray  # (n, kb) float
    bundle_reasons: np.ndarray  # (n, kb) int
    service_items: np.ndarray  # (n, ks) int
    service_scores: np.ndarray  # (n, ks) float
    service_reasons: np.ndarray  # (n, ks) int


class ReasonVocabulary:
    """The reason codes a version's packed lists index (``uint16``): ``cf`` — nothing the
    resident did explains the score — then one ``evt:…`` code per distinct driving event
    (:mod:`bouquet.models.reasons`), as they are met."""

    def __init__(self, model: DeployableModel, as_of: date) -> None:
        self.model = model
        self.as_of = as_of
        self.codes: list[str] = ["cf"]
        self._index: dict[str, int] = {"cf": 0}
        self._by_driver: dict[int, int] = {0: 0}
        self.overflow = 0

    def indices(self, drivers: np.ndarray) -> np.ndarray:
        """Vocabulary indices of driver codes (0 → ``cf``)."""
        found, inverse = np.unique(drivers, return_inverse=True)
        mapped = np.array([self._of(int(code)) for code in found], dtype=np.int64)
        return mapped[inverse].reshape(drivers.shape)

    def _of(self, driver: int) -> int:
        known = self._by_driver.get(driver)
        if known is not None:
            return known
        code = Driver.decode(driver).reason_code(self.model.service_ids, self.model.bundle_ids,
                                                 self.as_of)
        index = self._index.get(code)
        if index is None:
            if len(self.codes) > MAX_ITEMS:  # packed lists index reasons with uint16
                self.overflow += 1
                index = 0
            else:
                index = self._index[code] = len(self.codes)
                self.codes.append(code)
        self._by_driver[driver] = index
        return index


def score_chunk(model: DeployableModel, rows: np.ndarray, n: int,
                vocabulary: ReasonVocabulary, kinds: tuple[str, ...] = ("b", "s")
                ) -> ScoredChunk:
    """Top-``n`` bundles and services of residents ``rows``, each with its reason: the
    resident's event that adds most to its score (``models.reasons``), or ``cf``. A kind
    not in ``kinds`` is left empty (zero columns)."""
    parts = []
    for kind in ("b", "s"):
        if kind not in kinds:
            empty = np.zeros((len(rows), 0))
            parts += [empty.astype(np.int64), empty, empty.astype(np.int64)]
            continue
        idx, sc = top_n(model.score(rows, kind), n)
        parts += [idx, sc, vocabulary.indices(model.explain(rows, kind, idx))]
    return ScoredChunk(*parts)


def scored_lists(model: DeployableModel, top: int, vocabulary: ReasonVocabulary,
                 chunk: int, start: int = 0, stop: int | None = None,
                 kinds: tuple[str, ...] = ("b", "s")
                 ) -> Iterator[tuple[int, int, list[bytes], list[bytes]]]:
    """Every resident's packed top-``top`` bundles and services, ``chunk`` residents at a
    time: ``(first row, end row, bundle lists, service lists)`` — the values publish writes
    under each resident's keys (a kind not in ``kinds`` is not scored: empty lists)."""
    stop = model.n_residents if stop is None else stop
    for lo, hi in _chunks(stop - start, chunk):
        scored = score_chunk(model, np.arange(start + lo, start + hi), top, vocabulary,
                             kinds)
        yield (start + lo, start + hi,
               pack_rows(scored.bundle_items, scored.bundle_scores, scored.bundle_reasons),
               pack_rows(scored.service_items, scored.service_scores, scored.service_reasons))


def publish_in_memory(model: DeployableModel, *, model_version: str, top: int,
                      chunk: int = 2000, version: str | None = None,
                      audience: Audience = PERSONAL, kind: str = "b"
                      ) -> tuple[PublishedVersion, dict[str, np.ndarray]]:
    """What ``bouquet publish`` would write, held in this process: the version as a
    serving process loads it (serving view, reason vocabulary, popular lists) and every
    resident's packed list of ``kind`` (unpacked as serving reads it; the closed loop only
    offers bundles, so only bundles are scored by default). The closed loop serves from it
    with serving's own ranking; no Redis is involved."""
    vocabulary = ReasonVocabulary(model, _trained_until(model))
    lists: dict[str, np.ndarray] = {}
    if audience.personalised:
        ids = model.resident_ids.tolist()
        for lo, hi, bundles, services in scored_lists(model, top, vocabulary, chunk,
                                                      kinds=(kind,)):
            packed = bundles if kind == "b" else services
            lists.update(zip(ids[lo:hi], map(unpack_list, packed), strict=True))
    name = version or new_version(model_version)
    published = PublishedVersion(
        version=name, model_version=model_version, run_id="", model=model.serving_view(),
        reason_vocab=list(vocabulary.codes), published_at=_now_iso(),
        meta={**audience.as_meta(), "model_version": model_version})
    for kind in ("b", "s"):
        for where, (items, scores) in popular_lists(model, kind).items():
            published.popular[(kind, where)] = unpack_list(pack_list(items[:top],
                                                                     scores[:top]))
    return published, lists


def _trained_until(model: DeployableModel) -> date:
    """The day the model's data ends (reasons keep the day of events close to it)."""
    until = model.meta.get("trained_until")
    return date.fromisoformat(str(until)[:10]) if until else datetime.now(UTC).date()


def popular_lists(model: DeployableModel, kind: str
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Neighbourhood (``_all`` = city) → (item indices best first, scores)."""
    out = {}
    for nb, scores in model.popular_scores(kind).items():
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        out[nb] = (order, scores[order])
    return out


def load_registered(settings: Settings, *, alias: str = "champion",
                    version: str | None = None) -> tuple[DeployableModel, str, str]:
    """The registered model an alias (or a version) names, as (model, ``v<N>``, run id).

    Raises :class:`LookupError` when the registry has no such alias or version.
    """
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    client = client_of(settings)
    name = settings.registered_model
    try:
        found = (client.get_model_version(name, version) if version
                 else client.get_model_version_by_alias(name, alias))
    except MlflowException as exc:
        what = f"version {version}" if version else f"alias {alias!r}"
        raise LookupError(f"registered model {name!r} has no {what} in {settings.mlflow_uri}: "
                          f"train one with `bouquet train` ({exc.message[:200]})") from None
    with tempfile.TemporaryDirectory(prefix="bouquet-publish-") as tmp:
        model = load_model_dir(download_model_dir(settings, found.source, Path(tmp)))
    log.info("loaded %s version %s (run %s) from %s", name, found.version, found.run_id,
             found.source)
    return model, f"v{found.version}", found.run_id or ""


# --- the keyspace switch ------------------------------------------------------------------
_COMPARE_AND_SET_LUA = lua_script("bouquet.pipelines", "compare_and_set.lua")


@dataclass
class PublishReport:
    version: str
    model_version: str
    run_id: str
    pointer: str
    previous: str | None
    residents: int
    bytes_written: int
    seconds: float
    expired: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def new_version(model_version: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{model_version}-{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}Z"


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


class Publisher:
    """Writes one model's lists under a new version and switches a pointer to it."""

    def __init__(self, settings: Settings, client: SyncClient | None = None,
                 neighbourhoods: Sequence[str] = ()) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_key_prefix)
        self.redis = client or redis_client(settings.redis_url, socket_timeout=30)
        self.neighbourhoods = list(neighbourhoods)

    def _pointer_key(self, pointer: str) -> str:
        return (self.keys.current_version() if pointer == "current"
                else self.keys.variant_pointer(pointer))

    def publish(self, model: DeployableModel, *, model_version: str, run_id: str = "",
                pointer: str = "current", progress: bool = False,
                on_chunk: Callable[[int], None] | None = None,
                audience: Audience = PERSONAL) -> PublishReport:
        """Publish ``model`` and switch ``pointer``; raise :class:`PublishError` (or the
        scoring error) on failure, leaving the previous version serving.

        An ``audience`` that is not personalised publishes the popular lists only (no
        resident's list): what serves while no model has earned the champion alias.
        """
        started = time.perf_counter()
        k = self.keys
        for name, ids in (("bundles", model.bundle_ids), ("services", model.service_ids)):
            if len(ids) > MAX_ITEMS:
                raise PublishError(f"{len(ids)} {name}: packed lists index at most {MAX_ITEMS}")
        pointer_key = self._pointer_key(pointer)
        previous_raw = self.redis.get(pointer_key)
        previous = previous_raw.decode() if previous_raw else None
        version = new_version(model_version)
        ttl = self.settings.publish_staging_ttl_s
        top = self.settings.publish_top_n
        blob = model.serving_view().to_blob()
        cap = self.settings.publish_model_max_bytes
        if len(blob) > cap:
            raise PublishError(f"the serving form of this model takes {len(blob) / 2**20:.0f} "
                               f"MB, over the {cap / 2**20:.0f} MB cap "
                               "(BOUQUET_PUBLISH_MODEL_MAX_BYTES; a Redis string holds at most "
                               "512 MB): train a linear model with a smaller top_k")
        vocabulary = ReasonVocabulary(model, _trained_until(model))
        meta_key = k.version_meta(version)
        written: list[str] = []  # keys of this version other than resident lists
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(meta_key, mapping={
            "model_version": model_version, "run_id": run_id, "family": model.family,
            "model_kind": str(model.meta.get("model_kind", "")),
            "bundle_ids": json.dumps(model.bundle_ids),
            "service_ids": json.dumps(model.service_ids),
            # the outreach planner's usage frequency (it reads meta, not the model)
            "bundle_use_rate": json.dumps(model.bundle_use_rate.tolist()),
            "service_use_rate": json.dumps(model.service_use_rate.tolist()),
            **audience.as_meta(),
            "state": "writing", "pointer": pointer, "started_at": _now_iso()})
        pipe.expire(meta_key, ttl)
        pipe.set(k.version_model(version), blob, ex=ttl)
        written += [meta_key, k.version_model(version)]
        popular_counts = {}
        for kind in ("b", "s"):
            lists = popular_lists(model, kind)
            popular_counts[kind] = len(lists)
            for nb, (items, scores) in lists.items():
                key = k.popular(version, nb, kind)
                pipe.set(key, pack_list(items[:top], scores[:top]), ex=ttl)
                written.append(key)
        pipe.execute()

        residents = list(model.resident_ids) if audience.personalised else []
        size = self.settings.publish_chunk
        total_bytes = 0
        bar = _progress(len(residents), progress, f"publish {version}")
        try:
            chunks = scored_lists(model, top, vocabulary, size, stop=len(residents))
            for n_chunk, (start, stop, b_vals, s_vals) in enumerate(chunks):
                pipe = self.redis.pipeline(transaction=False)
                for rid, b_val, s_val in zip(residents[start:stop], b_vals, s_vals,
                                             strict=True):
                    pipe.set(k.recs(version, rid, "b"), b_val, ex=ttl)
                    pipe.set(k.recs(version, rid, "s"), s_val, ex=ttl)
                    total_bytes += len(b_val) + len(s_val)
                pipe.execute()
                bar(stop - start)
                if on_chunk is not None:
                    on_chunk(n_chunk)
            # Make the keyspace permanent before anything can point at it.
            for start, stop in _chunks(len(residents), size * 4):
                pipe = self.redis.pipeline(transaction=False)
                for rid in residents[start:stop]:
                    pipe.persist(k.recs(version, rid, "b"))
                    pipe.persist(k.recs(version, rid, "s"))
                pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for key in written:
                pipe.persist(key)
            if vocabulary.overflow:
                log.warning("%d reasons beyond the %d a version can index were published as "
                            "'cf'", vocabulary.overflow, MAX_ITEMS)
            pipe.hset(meta_key, mapping={
                "reason_vocab": json.dumps(vocabulary.codes),
                "residents": str(len(residents)), "bytes": str(total_bytes),
                "top_n": str(top), "popular_neighbourhoods": json.dumps(popular_counts),
                "bundles": str(len(model.bundle_ids)), "services": str(len(model.service_ids)),
                "published_at": _now_iso(), "previous": previous or "",
            })
            pipe.execute()
        except BaseException:
            # The staging TTL would remove it anyway; a shorter TTL frees memory sooner.
            try:
                self._expire_version(version)
            except redis.RedisError:
                log.warning("could not shorten the TTL of the failed keyspace %s", version)
            raise
        finally:
            bar(None)
        actual = self._compare_and_set(pointer_key, previous or "", version)
        if actual is not None:
            self._expire_version(version)
            raise PublishError(f"pointer {pointer!r} moved to {actual!r} during the "
                               f"publish (expected {previous!r}); {version} was not switched "
                               "to and will expire")
        self._record_live(version)
        expired = self.expire_old(keep={version, previous} - {None})
        seconds = time.perf_counter() - started
        log.info("published %s (model %s) for %d residents in %.1f s; %s -> %s", version,
                 model_version, len(residents), seconds, pointer, version)
        return PublishReport(version, model_version, run_id, pointer, previous, len(residents),
                             total_bytes, seconds, expired)

    # --- the switch, expiry and rollback ---------------------------------------------------
    def _compare_and_set(self, pointer_key: str, expected: str, version: str) -> str | None:
        """Point ``pointer_key`` at ``version`` if it still names ``expected``; ``None``
        when switched, else the version it names now."""
        switched, actual = self.redis.eval(_COMPARE_AND_SET_LUA, 1, pointer_key, expected,
                                           version)
        return None if int(switched) else actual.decode()

    def _record_live(self, version: str) -> None:
        """``version`` in ``rec:versions`` (by publish time) and its meta ``state=live``."""
        pipe = self.redis.pipeline(transaction=False)  # two slots on a cluster
        pipe.zadd(self.keys.versions(), {version: time.time()}, nx=True)
        pipe.hset(self.keys.version_meta(version), "state", "live")
        pipe.execute()

    def _pointed(self) -> set[str]:
        """Versions some pointer names now, plus each pointer's recorded previous version."""
        names = [self.keys.current_version()]
        pattern = self.keys.variant_pointer("x")[:-1] + "*"
        names += [key.decode() for key in self.redis.scan_iter(match=pattern, count=1000)]
        out = set()
        pipe = self.redis.pipeline(transaction=False)  # not MGET: pointers span slots
        for name in names:
            pipe.get(name)
        for value in pipe.execute():
            if value:
                version = value.decode()
                out.add(version)
                prev = self.redis.hget(self.keys.version_meta(version), "previous")
                if prev:
                    out.add(prev.decode())
        return out

    def expire_old(self, keep: set[str]) -> list[str]:
        """TTL on every version not kept and not named by any pointer (or as a pointer's
        previous); forget versions whose keys are gone."""
        keep = keep | self._pointed()
        recorded = {raw.decode() for raw in self.redis.zrange(self.keys.versions(), 0, -1)}
        for version in keep - recorded:  # a publish died between its switch and its record
            if self.redis.exists(self.keys.version_meta(version)):
                self._record_live(version)
        expired = []
        for raw in self.redis.zrange(self.keys.versions(), 0, -1):
            version = raw.decode()
            if version in keep:
                continue
            meta_key = self.keys.version_meta(version)
            if not self.redis.exists(meta_key):
                self.redis.zrem(self.keys.versions(), version)
                continue
            if self.redis.ttl(meta_key) >= 0:
                continue  # already expiring
            self._expire_version(version)
            self.redis.hset(meta_key, "state", "expiring")
            expired.append(version)
        return expired

    def _expire_version(self, version: str) -> None:
        """Give every key of ``version`` the old-version TTL (one SCAN of the database)."""
        ttl = self.settings.publish_old_version_ttl_s
        pipe = self.redis.pipeline(transaction=False)
        pattern = self.keys.version_meta(version)[:-len("meta")] + "*"
        for n, key in enumerate(self.redis.scan_iter(match=pattern, count=5000), 1):
            pipe.expire(key, ttl)
            if n % 10_000 == 0:
                pipe.execute()
        pipe.execute()

    def status(self) -> dict[str, Any]:
        """Pointers, their versions' meta, and every version on record."""
        current = self.redis.get(self.keys.current_version())
        versions = []
        for raw in self.redis.zrange(self.keys.versions(), 0, -1):
            version = raw.decode()
            meta = decode_meta(self.redis.hgetall(self.keys.version_meta(version)))
            versions.append({
                "version": version, "state": meta.get("state", "gone"),
                "model_version": meta.get("model_version"), "run_id": meta.get("run_id"),
                "published_at": meta.get("published_at"), "residents": meta.get("residents"),
                "ttl_s": self.redis.ttl(self.keys.version_meta(version)),
            })
        return {"current": current.decode() if current else None, "versions": versions}

    def rollback(self, pointer: str = "current") -> tuple[str, str]:
        """Point back at the version published before the current one; returns (from, to).

        Rollback only ever steps back: the restored version keeps its own predecessor, so a
        second rollback goes one further back — while that version is still kept (the one
        before the current is kept without TTL; older ones expire
        ``publish_old_version_ttl_s`` after a switch, and rollback then refuses). To move
        forward again, publish.
        """
        pointer_key = self._pointer_key(pointer)
        current_raw = self.redis.get(pointer_key)
        if not current_raw:
            raise PublishError(f"pointer {pointer!r} names no version: nothing to roll back")
        current = current_raw.decode()
        previous_raw = self.redis.hget(self.keys.version_meta(current), "previous")
        previous = previous_raw.decode() if previous_raw else ""
        if not previous or not self.redis.exists(self.keys.version_meta(previous)):
            raise PublishError(f"{current} has no previous version still in Redis")
        if self.redis.ttl(self.keys.version_meta(previous)) >= 0:
            raise PublishError(f"previous version {previous} is already expiring")
        actual = self._compare_and_set(pointer_key, current, previous)
        if actual is not None:
            raise PublishError(f"pointer moved to {actual!r} during the rollback")
        # The restored version keeps its own "previous", so a second rollback steps further
        # back, never forward again.
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.version_meta(previous), "state", "live")
        pipe.hset(self.keys.version_meta(current), "state", "rolled-back")
        pipe.execute()
        log.info("rolled %s back from %s to %s", pointer, current, previous)
        return current, previous


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _progress(total: int, enabled: bool, label: str) -> Callable[[int | None], None]:
    """A tqdm bar fed by ``step(n)``; ``step(None)`` closes it."""
    if not enabled:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="residents", unit_scale=True, mininterval=0.5)

    def step(n: int | None) -> None:
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return step
