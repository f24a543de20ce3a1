"""The model registry: versions of one registered model, the ``champion`` alias, its history.

Serving publishes whatever ``champion`` names, so the alias moves only on evidence — the
rule is :func:`bouquet.pipelines.promotion.decide`, applied by ``bouquet train`` — or by
hand (:meth:`ModelRegistry.promote`, ``bouquet model promote``, which refuses a version
that is worse on the current split unless forced).

Every move records the previous champion: the alias ``previous-champion`` names it, and the
registered model's tag ``champion_history`` keeps the ordered list of champions (last 100),
so :meth:`ModelRegistry.rollback` can step back more than once. Each version carries tags
``split_id``, ``dataset_fingerprint``, ``primary_metric``, ``primary_value``, ``model_kind``
and ``catalog_fingerprint`` so ``bouquet model list`` reads without opening runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion_history"
HISTORY_LIMIT = 100


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (message is user-facing)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str
    created: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str

    @property
    def primary_value(self) -> float | None:
        raw = self.tags.get("primary_value")
        return None if raw in (None, "") else float(raw)


class ModelRegistry:
    """Versions and aliases of ``settings.registered_model`` (an ``MlflowClient`` inside)."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    # --- reading ---------------------------------------------------------------------------
    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="Bouquet bundle recommender (see docs/training.md)")

    def _info(self, mv: Any) -> VersionInfo:
        created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, UTC)
        return VersionInfo(version=str(mv.version), run_id=mv.run_id or "",
                           created=created.isoformat(timespec="seconds"),
                           aliases=tuple(getattr(mv, "aliases", []) or []),
                           tags=dict(mv.tags or {}), source=mv.source or "")

    def version(self, version: str) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version(self.name, str(version)))
        except MlflowException:
            raise RegistryError(f"registered model {self.name!r} has no version "
                                f"{version}") from None

    def alias(self, alias: str) -> VersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def champion(self) -> VersionInfo | None:
        return self.alias(CHAMPION)

    def versions(self) -> list[VersionInfo]:
        """Every version, newest first (empty when nothing was registered)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException:
            return []
        infos = [self._info(mv) for mv in found]
        # search results do not always carry aliases: take them from the registered model
        aliases: dict[str, list[str]] = {}
        try:
            model = self.client.get_registered_model(self.name)
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
        except MlflowException:
            pass
        infos = [VersionInfo(i.version, i.run_id, i.created,
                             tuple(sorted(aliases.get(i.version, []))), i.tags, i.source)
                 for i in infos]
        return sorted(infos, key=lambda i: int(i.version), reverse=True)

    def history(self) -> list[str]:
        """Champion versions in the order they were promoted (oldest first)."""
        from mlflow.exceptions import MlflowException

        try:
            raw = self.client.get_registered_model(self.name).tags.get(HISTORY_TAG, "[]")
            return [str(v) for v in json.loads(raw)]
        except (MlflowException, ValueError):
            return []

    # --- writing ---------------------------------------------------------------------------
    def register(self, run_id: str, source: str, tags: dict[str, str]) -> VersionInfo:
        """A new version of the model logged at ``source`` (``models:/<id>``)."""
        self._ensure_model()
        mv = self.client.create_model_version(self.name, source=source, run_id=run_id,
                                              tags={k: str(v) for k, v in tags.items()})
        log.info("registered %s version %s", self.name, mv.version)
        return self._info(mv)

    def promote(self, version: str, reason: str) -> VersionInfo:
        """Make ``version`` the champion; the current one becomes ``previous-champion``."""
        target = self.version(version)
        current = self.champion()
        if current is not None and current.version == target.version:
            return target
        history = [v for v in self.history()]
        if current is not None and (not history or history[-1] != current.version):
            history.append(current.version)
        history.append(target.version)
        self._write_history(history)
        if current is not None:
            self.client.set_registered_model_alias(self.name, PREVIOUS, current.version)
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.set_model_version_tag(self.name, target.version, "promoted_at", now)
        self.client.set_model_version_tag(self.name, target.version, "promotion_reason",
                                          reason[:500])
        log.info("%s: champion is now version %s (%s)", self.name, target.version, reason)
        return self.version(target.version)

    def rollback(self) -> tuple[str, str]:
        """Give the alias back to the champion before the current one; returns (from, to)."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"registered model {self.name!r} has no champion to roll back")
        history = self.history()
        while history and history[-1] == current.version:
            history.pop()
        if not history:
            previous = self.alias(PREVIOUS)
            if previous is None or previous.version == current.version:
                raise RegistryError(f"{self.name!r} v{current.version} has no previous "
                                    "champion to roll back to")
            history = [previous.version]
        target = history[-1]
        self.version(target)  # must still exist
        self._write_history(history)
        self.client.set_registered_model_alias(self.name, CHAMPION, target)
        if len(history) >= 2:
            self.client.set_registered_model_alias(self.name, PREVIOUS, history[-2])
        else:
            self._delete_alias(PREVIOUS)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.client.set_model_version_tag(self.name, current.version, "rolled_back_at", now)
        log.info("%s: rolled back from version %s to %s", self.name, current.version, target)
        return current.version, target

    def _delete_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(self.name, alias)

    def _write_history(self, history: list[str]) -> None:
        self.client.set_registered_model_tag(self.name, HISTORY_TAG,
                                             json.dumps(history[-HISTORY_LIMIT:]))
