"""Keys derived from ``BOUQUET_SERVER_SECRET``, one per purpose.

One secret to set and rotate, but never the same key for two jobs: a key that signs
recommendation ids must not also be able to forge an audit chain. Each purpose gets
``HMAC-SHA256(server_secret, "bouquet:" + purpose)``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

#: The purposes a key is derived for (a new one is added here, so they stay distinct).
PURPOSES = ("api-key-fingerprint", "recommendation-id", "audit-chain")


@functools.lru_cache(maxsize=64)
def derived_key(secret: str, purpose: str) -> bytes:
    """The 32-byte key of ``purpose`` derived from ``secret``."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}; known: {PURPOSES}")
    if not secret:
        raise ValueError("a server secret is required")
    return hmac.new(secret.encode("utf-8"), f"bouquet:{purpose}".encode(),
                    hashlib.sha256).digest()


def key_fingerprint(secret: str, api_key: str) -> str:
    """A stable name of an API key (16 hex digits) that cannot be tested against guessed
    keys without the server secret (a plain hash of a short key could)."""
    key = derived_key(secret, "api-key-fingerprint")
    return hashlib.blake2b(api_key.encode("utf-8"), key=key, digest_size=8).hexdigest()


def resident_ref(resident_id: str, secret: str) -> str:
    """The keyed reference of a resident (HMAC-SHA256 with ``BOUQUET_PSEUDONYM_SECRET``,
    hex): how the erasure register, the audit log and the dead-letter topic's keys name a
    resident without holding the id.

    Not reversible without the secret (unlike a plain hash, which anyone could recompute
    from a list of candidate ids); stable, so late events and later audits match it.
    """
    if not secret:
        raise ValueError("a secret is required to reference a resident")
    message = ("bouquet-erasure-register:" + resident_id).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
