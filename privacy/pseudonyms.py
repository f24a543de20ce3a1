"""Pseudonymisation helpers shared by every importer of outside identifiers.

A raw identifier from a partner (a bike-share user id, a card number) must never enter
Bouquet. :func:`pseudonymise` replaces it with a keyed hash (HMAC-SHA256 with
``Settings.pseudonym_secret``): stable, so the same rider is one resident across
imports; not reversible without the secret, unlike a plain hash that anyone can
recompute from a list of candidate ids.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,16}$")


def pseudonymise(raw_id: str, secret: str, *, prefix: str = "p", length: int = 20) -> str:
    """Keyed pseudonym of ``raw_id``: ``prefix`` + the first ``length`` hex digits of
    HMAC-SHA256(secret, raw_id).

    The result is a valid resident id (``[A-Za-z0-9_-]{1,64}``). 20 hex digits (80 bits)
    keep accidental collisions negligible up to billions of ids.
    """
    if not secret:
        raise ValueError("a pseudonymisation secret is required")
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} must match {_PREFIX_RE.pattern}")
    if not 8 <= length <= 64 - len(prefix):
        raise ValueError(f"length must be between 8 and {64 - len(prefix)}")
    digest = hmac.new(secret.encode("utf-8"), str(raw_id).encode("utf-8"), hashlib.sha256)
    return prefix + digest.hexdigest()[:length]
