"""Recommendation ids: how a later event is attributed to the answer that caused it.

A recommendation id is ``<model_version>.<variant>.<token>``: the front end echoes it in
the events that follow (click, subscribe, use), and the consumer and the reports credit the
funnel of that model version and experiment variant without looking anything up.

Front ends are not trusted with the funnel: any client could echo a made-up id and create
or inflate an arm. So the token carries a keyed MAC — ``<nonce><mac>``, 12 hex digits of
nonce and 24 hex digits of ``blake2b(key, "<model_version>.<variant>.<nonce>")`` (96 bits)
— with a key derived from ``BOUQUET_SERVER_SECRET`` (:mod:`bouquet.core.keyring`),
and only ids that verify are credited to their arm; every other id is credited to the
:data:`UNATTRIBUTED` arm. Every id Bouquet hands out is minted by :class:`RecommendationIds`
(the API, the simulator, the synthetic streams of the benchmarks).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
import secrets
from collections.abc import Iterable
from typing import NamedTuple

from bouquet.core.keyring import derived_key
from bouquet.core.settings import DEV_SERVER_SECRET, Settings

_PART = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
#: The model version and variant of ids that do not verify.
UNATTRIBUTED = "unattributed"
_MAC_BYTES = 12
#: <model_version>.<variant>.<12 hex nonce><24 hex MAC>; the MAC covers everything before it
_SIGNED = re.compile(r"([A-Za-z0-9_-]{1,40})\.([A-Za-z0-9_-]{1,40})\.([0-9a-f]{12})([0-9a-f]{24})")

#: Nonces only make ids distinct (the MAC is what cannot be forged), so a PRNG seeded from
#: the OS, reseeded in forked children, instead of a urandom system call per answer
#: (~2.5 % of a recommendation's CPU under load).
_nonces = random.Random(secrets.randbits(128))
os.register_at_fork(after_in_child=lambda: _nonces.seed(secrets.randbits(128)))


class Attribution(NamedTuple):
    model_version: str
    variant: str
    token: str


class RecommendationIds:
    """Mints and verifies recommendation ids with one key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> RecommendationIds:
        return cls(derived_key(settings.server_secret, "recommendation-id"))

    def _mac(self, head: str) -> str:
        return hashlib.blake2b(head.encode(), key=self._key, digest_size=_MAC_BYTES).hexdigest()

    def mint(self, model_version: str, variant: str, nonce: int | None = None) -> str:
        """A fresh id for one answer (``nonce``: a given 48-bit number, for callers that
        must be reproducible, such as the simulator; default random)."""
        for name, part in (("model_version", model_version), ("variant", variant)):
            if not _PART.match(part):
                raise ValueError(f"{name} {part!r} must match {_PART.pattern}")
        if nonce is None:
            nonce = _nonces.getrandbits(48)
        head = f"{model_version}.{variant}.{nonce & 0xFFFF_FFFF_FFFF:012x}"
        return head + self._mac(head)

    def verify(self, recommendation_id: str | None) -> Attribution | None:
        """The model version and variant of an id this key minted, else None (a foreign,
        altered or forged id)."""
        if not recommendation_id:
            return None
        found = _SIGNED.fullmatch(recommendation_id)
        if found is None or not hmac.compare_digest(
                self._mac(recommendation_id[:found.start(4)]), found[4]):
            return None
        return Attribution(found[1], found[2], found[3] + found[4])

    def unverified(self, recommendation_ids: Iterable[str]) -> list[str]:
        """The ids among ``recommendation_ids`` that do not verify: :meth:`verify`'s rule
        with the loop kept tight, for reports that check millions of stored ids."""
        match, key, blake2b = _SIGNED.fullmatch, self._key, hashlib.blake2b
        same = hmac.compare_digest
        bad = []
        for value in recommendation_ids:
            found = match(value)
            if found is None or not same(blake2b(value[:found.start(4)].encode(), key=key,
                                                 digest_size=_MAC_BYTES).hexdigest(),
                                         found[4]):
                bad.append(value)
        return bad

    def arm(self, recommendation_id: str | None) -> tuple[str, str]:
        """(model_version, variant) the funnel credits: the id's own when it verifies,
        (:data:`UNATTRIBUTED`, :data:`UNATTRIBUTED`) otherwise."""
        found = self.verify(recommendation_id)
        return (found.model_version, found.variant) if found else (UNATTRIBUTED, UNATTRIBUTED)


def development_ids() -> RecommendationIds:
    """The ids of a deployment left at the development server secret: tests, the local
    demo, and the synthetic data of the benchmarks (which run on their own local stack)."""
    return RecommendationIds(derived_key(DEV_SERVER_SECRET, "recommendation-id"))
