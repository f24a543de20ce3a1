"""The resident's profile hash in Redis (``Keys.profile``): one encoding, one decoding.

Ingestion writes it (declared attributes from ``profile`` events, ``consent`` and
``contact`` from consent events of each purpose) and serving and the outreach planner read
it for eligibility, consent and channels; all go through :func:`decode_profile`, so they
can never disagree on what a stored value means. Booleans are stored as ``"1"``/``"0"``,
the accepted outreach channels as ``"push,email"``; bookkeeping fields end with ``_ts``
(the event time that last set a field, for last-writer-wins) and are not attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS

#: Declared attributes that are booleans (``profile`` events); ``consent`` and ``contact``
#: are too, set by consent events only.
DECLARED_BOOLEANS: tuple[str, ...] = ("student", "low_income")
#: The profile field each consent purpose sets (``consent`` events, ``context.purpose``).
CONSENT_FIELDS: dict[str, str] = {"personalisation": "consent", "contact": "contact"}
#: Declared attributes that are lists, stored comma-separated.
DECLARED_LISTS: tuple[str, ...] = ("channels",)
_BOOLEANS = (*DECLARED_BOOLEANS, *CONSENT_FIELDS.values())


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_value(name: str, value: Any) -> Any:
    """One stored field as the profile dict holds it (booleans as bool, channels as a
    tuple, strings otherwise)."""
    text = _text(value)
    if name in _BOOLEANS:
        return text == "1"
    if name in DECLARED_LISTS:
        return tuple(part for part in text.split(",") if part)
    return text


def decode_profile(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A profile hash reply (bytes or str) as the dict
    :func:`bouquet.core.catalog.eligibility_failure` reads: booleans as bool, ``consent``
    and ``contact`` False when never given, bookkeeping fields dropped, the channels as a
    tuple, strings otherwise; an empty reply (nothing known of the resident) stays empty."""
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = _text(key)
        if name.endswith("_ts"):
            continue
        out[name] = decode_value(name, value)
    out.setdefault("consent", False)
    out.setdefault("contact", False)
    return out


def profile_payload(context: Mapping[str, Any]) -> str:
    """``field\\tvalue\\t…`` of the declared attributes a profile event sets (booleans as
    "1"/"0", lists comma-separated; attributes given as null are left as they were): what
    the ingestion script writes into the hash."""
    parts: list[str] = []
    for name, value in context.items():
        if value is None:
            continue
        if name in DECLARED_BOOLEANS:
            value = "1" if value else "0"
        elif name in DECLARED_LISTS:
            value = ",".join(value)
        parts += (name, str(value))
    return "\t".join(parts)


def consent_payload(purpose: str, granted: bool, received_s: float) -> str:
    """The ingestion script's payload of a consent event of ``purpose``:
    ``<field>\\t<1|0>\\t<receipt epoch s>`` (the field's time stamp is ``<field>_ts``).
    Decisions of each purpose take effect in order of receipt (the later receipt wins), not
    by the time stamp the client wrote, which a client chooses; the consent API
    (serving/set_consent.lua) writes by the same rule and the same clock."""
    return f"{CONSENT_FIELDS[purpose]}\t{'1' if granted else '0'}\t{received_s:.3f}"


# --- segments ------------------------------------------------------------------------------
#: The declared attributes that make a resident's *segment*, the unit of the segment
#: cold start (popular with residents like you) and of exploration's conversion rates.
SEGMENT_FIELDS: tuple[str, ...] = ("neighbourhood", "age_band", "household")


def segment_id(neighbourhood: str, age_band: str, household: str) -> str:
    """``<neighbourhood>:<age band>:<household>``, safe inside a Redis key (``65+`` is
    written ``65plus``)."""
    return f"{neighbourhood}:{age_band.replace('+', 'plus')}:{household}"


def segment_of(profile: Mapping[str, Any]) -> str | None:
    """The segment of a decoded profile; None unless all three attributes are declared."""
    values = [profile.get(name) for name in SEGMENT_FIELDS]
    if not all(isinstance(v, str) and v for v in values):
        return None
    return segment_id(*values)


def segment_levels(neighbourhoods: Sequence[str]) -> np.ndarray:
    """``(segments, 3)``: each segment's neighbourhood, age band and household as indexes
    (into ``neighbourhoods``, AGE_BANDS, HOUSEHOLDS), in the fixed order of every segment
    table (neighbourhood, then age band, then household) — what models that pool segments
    by their attributes are fitted on."""
    n, a, h = len(neighbourhoods), len(AGE_BANDS), len(HOUSEHOLDS)
    index = np.arange(n * a * h)
    return np.stack([index // (a * h), (index // h) % a, index % h], axis=1)


def all_segments(neighbourhoods: Sequence[str]) -> list[str]:
    """Every segment of a catalog's neighbourhoods, in :func:`segment_levels` order."""
    return [segment_id(neighbourhoods[nb], AGE_BANDS[age], HOUSEHOLDS[household])
            for nb, age, household in segment_levels(neighbourhoods).tolist()]
