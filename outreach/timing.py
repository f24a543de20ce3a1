"""When a nudge is sent: the resident's own most active hour, shrunk toward their
neighbourhood's, at or after the earliest moment the rules allow, outside quiet hours.

Everything works on minutes of the planned day in the city's time zone. The day's minutes
are mapped to epoch seconds once (:class:`DayClock`, through ``zoneinfo``), so a day with a
daylight-saving change has the right instants and every rule (gap, caps, "not before now")
compares epoch seconds. Quiet hours are per resident (declared in their profile, else the
deployment's default); residents share few distinct windows, so each window's table of
"next allowed minute" is built once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from bouquet.core.outreach import MINUTES_PER_DAY, quiet_minutes

HOURS = 24


@dataclass(frozen=True)
class DayClock:
    """The epoch second of each local minute of one day (``epochs[m]``, m in [0, 1440))."""

    day: date
    timezone: str
    epochs: np.ndarray  # (1440,) float64, non-decreasing

    @classmethod
    def of(cls, day: date, timezone: str) -> DayClock:
        zone = ZoneInfo(timezone)
        midnight = datetime(day.year, day.month, day.day)
        epochs = np.array([(midnight + timedelta(minutes=m)).replace(tzinfo=zone).timestamp()
                           for m in range(MINUTES_PER_DAY)], dtype=np.float64)
        # a minute that does not exist (the skipped hour of a spring change) maps to the
        # instant after; keep the table non-decreasing for searchsorted
        return cls(day, timezone, np.maximum.accumulate(epochs))

    def first_minute_at_or_after(self, epoch: np.ndarray) -> np.ndarray:
        """Index of the first minute of the day whose instant is ≥ ``epoch`` (1440: none)."""
        return np.searchsorted(self.epochs, np.asarray(epoch, dtype=np.float64), side="left")

    def minute_of(self, epoch: np.ndarray) -> np.ndarray:
        """The local minute of the day of instants of this day (for checks and reports)."""
        return np.searchsorted(self.epochs, np.asarray(epoch, dtype=np.float64),
                               side="right") - 1

    def start(self) -> float:
        return float(self.epochs[0])

    def iso(self, epoch: float) -> str:
        """ISO-8601 text of an instant in the city's local time."""
        return datetime.fromtimestamp(epoch, UTC).astimezone(ZoneInfo(self.timezone)
                                                             ).isoformat()


class QuietTables:
    """For each distinct quiet window: which minutes are allowed, and the next allowed minute
    at or after each minute (``MINUTES_PER_DAY`` when none is left in the day)."""

    def __init__(self, windows: list[str]) -> None:
        self.windows = list(windows)
        quiet = np.stack([quiet_minutes(w) for w in self.windows]) if self.windows \
            else np.zeros((0, MINUTES_PER_DAY), dtype=bool)
        self.allowed = ~quiet
        nxt = np.where(self.allowed, np.arange(MINUTES_PER_DAY)[None, :], MINUTES_PER_DAY)
        # reverse running minimum: next allowed minute at or after m; one extra column for
        # a start at the end of the day
        self.next_ok = np.concatenate(
            [np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1],
             np.full((len(self.windows), 1), MINUTES_PER_DAY)], axis=1)

    def hour_open(self, window: np.ndarray, earliest_minute: np.ndarray) -> np.ndarray:
        """(n, 24) bool: hour h has an allowed minute at or after the resident's earliest."""
        starts = np.maximum(np.arange(HOURS)[None, :] * 60, earliest_minute[:, None])
        starts = np.minimum(starts, MINUTES_PER_DAY)
        first = self.next_ok[window[:, None], starts]
        return first < (np.arange(HOURS)[None, :] + 1) * 60

    def minute_in_hour(self, window: np.ndarray, hour: np.ndarray, earliest_minute: np.ndarray,
                       offset: np.ndarray) -> np.ndarray:
        """The send minute in ``hour``: the first allowed minute at or after
        ``hour:offset`` (and the earliest), else the first allowed minute of the hour at or
        after the earliest. The hour must be open (:meth:`hour_open`)."""
        end = (hour + 1) * 60
        low = np.maximum(hour * 60, earliest_minute)
        wish = np.minimum(np.maximum(hour * 60 + offset, low), MINUTES_PER_DAY)
        preferred = self.next_ok[window, wish]
        fallback = self.next_ok[window, np.minimum(low, MINUTES_PER_DAY)]
        return np.where(preferred < end, preferred, fallback)


def hour_profile(counts: np.ndarray, neighbourhood: np.ndarray, n_neighbourhoods: int,
                 prior_events: float, rows: np.ndarray | None = None) -> np.ndarray:
    """(rows, 24) weights of each local hour for residents ``rows`` (default: all): their
    own events by hour plus ``prior_events`` events' worth of their neighbourhood's hour
    distribution, in which every resident of the neighbourhood (all of ``counts``) weighs
    once, however active; a neighbourhood with no history borrows the city's, and a city
    with none is flat."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1)
    weight = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    nb = np.stack([np.bincount(neighbourhood, weights=counts[:, h] * weight,
                               minlength=n_neighbourhoods) for h in range(HOURS)], axis=1) \
        if len(counts) else np.zeros((n_neighbourhoods, HOURS))
    city = nb.sum(axis=0)
    city = city / city.sum() if city.sum() > 0 else np.full(HOURS, 1.0 / HOURS)
    nb_totals = nb.sum(axis=1, keepdims=True)
    nb = np.where(nb_totals > 0, nb / np.where(nb_totals > 0, nb_totals, 1.0), city[None, :])
    rows = np.arange(len(counts)) if rows is None else rows
    return counts[rows] + prior_events * nb[neighbourhood[rows]]


def choose_send_minutes(weights: np.ndarray, window: np.ndarray, earliest_minute: np.ndarray,
                        offset: np.ndarray, tables: QuietTables) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """(minute of the day, feasible) per resident: the open hour of most weight (ties: the
    earliest), and the minute in it (:meth:`QuietTables.minute_in_hour`). Not feasible when
    no allowed minute is left in the day at or after the earliest."""
    open_hours = tables.hour_open(window, earliest_minute)
    feasible = open_hours.any(axis=1)
    scored = np.where(open_hours, weights, -np.inf)
    hour = np.argmax(scored, axis=1)
    minute = tables.minute_in_hour(window, hour, earliest_minute, offset)
    return np.where(feasible, minute, MINUTES_PER_DAY), feasible
