"""Why an offer is recommended: the resident's own event that drove it, as a reason code.

Every (resident, item) pair of the training matrices remembers its **driver**: the event
with the largest weighted, decayed strength among those that built the pair's confidence
(ties: the latest) — its type, its item (the service itself, or the bundle whose event was
shared over its services) and its day. A model explains a score as contributions of the
resident's history items (:meth:`~bouquet.models.deployable.DeployableModel.explain`); the
reason of an offer is the driver of the largest positive contribution. Reasons therefore
only ever name an event the resident really had, with its real verb and time.

A reason code is text, so published lists can index a vocabulary of them::

    evt:<type>:<s|b>:<item id>:<YYYY-MM-DD | YYYY-MM>

Days are kept for events of the last :data:`DAY_PRECISION_DAYS` days before publish (a
"just" reason needs the day), months otherwise (which keeps a version's vocabulary small).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np

from bouquet.core.events import EventType

#: Event type names in code order (the driver's type code indexes this).
EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in EventType)
#: Events this recent (days before publish) keep their day in a precomputed reason.
DAY_PRECISION_DAYS = 7
_TYPE_SHIFT, _KIND_SHIFT, _ITEM_SHIFT = 48, 47, 24
_MASK_24 = (1 << 24) - 1
_MASK_23 = (1 << 23) - 1
#: Verb of each event type in a reason ("Because you subscribed to …").
VERBS: dict[str, str] = {"use": "used", "pay": "paid for", "subscribe": "subscribed to",
                         "rate": "rated", "click": "looked at", "view": "viewed",
                         "dismiss": "dismissed", "unsubscribe": "left"}


def encode_drivers(type_codes: np.ndarray, is_bundle: np.ndarray, items: np.ndarray,
                   days: np.ndarray) -> np.ndarray:
    """Pack (type code, bundle flag, item index, days since 1970) into int64 codes (> 0)."""
    return ((np.asarray(type_codes, np.int64) << _TYPE_SHIFT)
            | (np.asarray(is_bundle, np.int64) << _KIND_SHIFT)
            | (np.asarray(items, np.int64) << _ITEM_SHIFT)
            | np.asarray(days, np.int64))


@dataclass(frozen=True)
class Driver:
    """The event behind a (resident, item) pair."""

    type: str
    kind: str  # "s" | "b"
    index: int
    day: date

    @classmethod
    def decode(cls, code: int) -> Driver:
        code = int(code)
        return cls(type=EVENT_TYPES[code >> _TYPE_SHIFT],
                   kind="b" if (code >> _KIND_SHIFT) & 1 else "s",
                   index=(code >> _ITEM_SHIFT) & _MASK_23,
                   day=date(1970, 1, 1) + timedelta(days=code & _MASK_24))

    def reason_code(self, service_ids: Sequence[str], bundle_ids: Sequence[str],
                    as_of: date | None = None) -> str:
        """``evt:…`` with the day when the event is within :data:`DAY_PRECISION_DAYS` of
        ``as_of`` (or ``as_of`` is None), else the month."""
        item = (bundle_ids if self.kind == "b" else service_ids)[self.index]
        recent = as_of is None or (as_of - self.day).days <= DAY_PRECISION_DAYS
        when = self.day.isoformat() if recent else self.day.strftime("%Y-%m")
        return f"evt:{self.type}:{self.kind}:{item}:{when}"


@dataclass(frozen=True)
class ReasonEvent:
    """A parsed ``evt:`` reason code."""

    type: str
    kind: str
    item: str
    when: str  # YYYY-MM-DD or YYYY-MM

    @classmethod
    def parse(cls, code: str) -> ReasonEvent | None:
        parts = code.split(":")
        if len(parts) != 5 or parts[0] != "evt" or parts[2] not in ("s", "b"):
            return None
        return cls(parts[1], parts[2], parts[3], parts[4])

    def text(self, names: Mapping[str, str], today: date, just_days: int) -> str:
        """"Because you just used City bus network" (within ``just_days`` of ``today``),
        otherwise "… in April" (and the year when it is not this year's)."""
        verb = VERBS.get(self.type, self.type)
        name = names.get(self.item, self.item)
        when = self.when if len(self.when) == 10 else f"{self.when}-01"
        day = date.fromisoformat(when)
        if len(self.when) == 10 and 0 <= (today - day).days <= just_days:
            return f"Because you just {verb} {name}"
        month = day.strftime("%B") if day.year == today.year else day.strftime("%B %Y")
        return f"Because you {verb} {name} in {month}"


def day_of(epoch_s: float) -> date:
    return datetime.fromtimestamp(epoch_s, UTC).date()
