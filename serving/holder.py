"""The model holder: which published version each pointer names, loaded in this process.

A background task re-reads the pointers (``current`` and any experiment pointer) every
``serving_pointer_poll_ms``; when one moves, the new version's serving model and popular
lists are loaded and swapped in with one assignment. Until then requests keep using the
version they had — its keys are still in Redis (the previous version is kept, older ones get
a TTL far longer than the poll interval), so an answer never mixes a model of one version
with lists of another, and never reads a version that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from redis.exceptions import RedisError

from bouquet.models.online import PublishedVersion
from bouquet.serving.store import OnlineStore

log = logging.getLogger(__name__)


class ModelHolder:
    """Loaded versions by pointer name, refreshed in the background."""

    def __init__(self, store: OnlineStore, pointers: Iterable[str],
                 neighbourhoods: Iterable[str], poll_ms: int = 500) -> None:
        self.store = store
        self.pointer_names = sorted(set(pointers) | {"current"})
        self.neighbourhoods = list(neighbourhoods)
        self.poll_s = poll_ms / 1000
        self.models: dict[str, PublishedVersion] = {}
        self._by_version: dict[str, PublishedVersion] = {}
        self.last_error: str | None = None
        self.last_poll: float = 0.0
        self.redis_ok = False
        self._task: asyncio.Task[None] | None = None

    def get(self, pointer: str = "current") -> PublishedVersion | None:
        return self.models.get(pointer)

    async def refresh(self) -> None:
        """Read the pointers once and load any version not loaded yet."""
        try:
            versions = await self.store.pointers(self.pointer_names)
            self.redis_ok = True
        except (RedisError, OSError) as exc:
            self.redis_ok = False
            self.last_error = f"redis: {exc.__class__.__name__}: {exc}"
            return
        self.last_poll = time.monotonic()
        errors = []
        for name, version in versions.items():
            if version is None:
                # A pointer that was never published (or was removed): keep nothing for it.
                self.models.pop(name, None)
                continue
            current = self.models.get(name)
            if current is not None and current.version == version:
                continue
            model = self._by_version.get(version)
            if model is None:
                try:
                    model = await self.store.load_version(version, self.neighbourhoods)
                except (LookupError, KeyError, ValueError, RedisError, OSError) as exc:
                    errors.append(f"{name}={version}: {exc}")
                    continue
            self.models[name] = model
            log.info("serving %s = keyspace %s (model %s)", name, version, model.model_version)
        # Forget versions no pointer names any more.
        self._by_version = {m.version: m for m in self.models.values()}
        self.last_error = "; ".join(errors) or None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # a bug here must not kill the poller for the process's life
                log.exception("pointer refresh failed")

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="bouquet-pointer-poll")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a Redis call stuck in cancellation must not hold up the shutdown.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5)
