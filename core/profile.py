"""The resident's profile hash in Redis (``Keys.profile``): one encoding, one decoding.

Ingestion writes it (declared attributes from ``profile`` events, ``consent`` from consent
events) and serving reads it for eligibility and consent; both go through
:func:`decode_profile`, so they can never disagree on what a stored value means.
Booleans are stored as ``"1"``/``"0"``; bookkeeping fields end with ``_ts`` (the event time
that last set a field, for last-writer-wins) and are not attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bouquet.core.catalog import AGE_BANDS, HOUSEHOLDS

#: Declared attributes that are booleans (``profile`` events); ``consent`` is one too, set
#: by consent events only.
DECLARED_BOOLEANS: tuple[str, ...] = ("student", "low_income")
_BOOLEANS = (*DECLARED_BOOLEANS, "consent")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_profile(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A profile hash reply (bytes or str) as the dict
    :func:`bouquet.core.catalog.eligibility_failure` reads: booleans as bool, ``consent``
    False when never given, bookkeeping fields dropped, strings otherwise; an empty reply
    (nothing known of the resident) stays empty."""
    if not raw:
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = _text(key)
        if name.endswith("_ts"):
            continue
        text = _text(value)
        out[name] = text == "1" if name in _BOOLEANS else text
    out.setdefault("consent", False)
    return out


def profile_payload(context: Mapping[str, Any]) -> str:
    """``field\\tvalue\\t…`` of the declared attributes a profile event sets (booleans as
    "1"/"0"; attributes given as null are left as they were): what the ingestion script
    writes into the hash."""
    parts: list[str] = []
    for name, value in context.items():
        if value is None:
            continue
        if name in DECLARED_BOOLEANS:
            value = "1" if value else "0"
        parts += (name, str(value))
    return "\t".join(parts)


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


def all_segments(neighbourhoods: Iterable[str]) -> list[str]:
    """Every segment of a catalog's neighbourhoods, in a fixed order (neighbourhood, age
    band, household)."""
    return [segment_id(nb, age, household) for nb in neighbourhoods for age in AGE_BANDS
            for household in HOUSEHOLDS]
