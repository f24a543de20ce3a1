"""Per-key token buckets in Redis, shared by every serving process.

One bucket per API key and route group (:data:`bouquet.serving.admission.INTAKE`,
``OPERATOR``), refilled at ``BOUQUET_RATE_LIMIT_<GROUP>_PER_S`` up to
``BOUQUET_RATE_LIMIT_<GROUP>_BURST``; one Lua call (``rate_limit.lua``, Redis's clock) takes
a token or says how long to wait. Buckets are named by the key's keyed fingerprint
(:func:`bouquet.core.keyring.key_fingerprint`), never by the key.

Redis unreachable: requests are admitted (and a warning logged now and then): the intake
must keep taking events when the shared cache blinks, and the operator API has its own
cost bounds (cached figures, body caps).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from bouquet.core.keyring import key_fingerprint
from bouquet.core.keys import Keys
from bouquet.core.scripts import lua_script
from bouquet.core.settings import Settings

log = logging.getLogger(__name__)
_LUA = lua_script("bouquet.serving", "rate_limit.lua")
_WARN_EVERY_S = 30.0


class RateLimiter:
    """Takes tokens from the per-key buckets of one app (see the module docstring)."""

    def __init__(self, client: Any, keys: Keys, settings: Settings) -> None:
        self.keys = keys
        self.secret = settings.server_secret
        self.limits = {"intake": (settings.rate_limit_intake_per_s,
                                  settings.rate_limit_intake_burst),
                       "operator": (settings.rate_limit_operator_per_s,
                                    settings.rate_limit_operator_burst)}
        self._script = client.register_script(_LUA)
        #: api key → fingerprint; only keys that passed authentication reach here, so this
        #: holds at most the configured keys
        self._fingerprints: dict[str, str] = {}
        self._warned_at = -_WARN_EVERY_S

    async def take(self, group: str, api_key: str) -> tuple[bool, float]:
        """(admitted, seconds to wait before a token is there)."""
        rate, burst = self.limits[group]
        if rate <= 0:
            return True, 0.0
        fingerprint = self._fingerprints.get(api_key)
        if fingerprint is None:
            fingerprint = self._fingerprints[api_key] = key_fingerprint(self.secret, api_key)
        try:
            admitted, wait = await self._script(keys=[self.keys.rate_limit(group, fingerprint)],
                                                args=[rate, burst])
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("rate limits not enforced, Redis unavailable: %s",
                            exc.__class__.__name__)
            return True, 0.0
        return bool(int(admitted)), float(wait)
