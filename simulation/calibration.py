"""Cadence statistics, measured the same way on the real bike-share log and on simulated data.

The simulator's cadence parameters are calibrated so that the simulated ``use`` stream
looks like real riders of a municipal service. Five statistics, each computed by
:func:`cadence_statistics` from (person, time) pairs:

* ``median_per_person`` — median uses (trips) per person who used at least once;
* ``share_once`` — share of those people with exactly one use;
* ``top10_share`` — share of all uses made by the 10% most active people;
* ``dau_mau`` — stickiness: for every day *d* with a full trailing 28-day window inside
  the observed period and at least ``min_mau`` monthly actives, distinct people active on
  *d* over distinct people active in the 28 days ending on *d*; averaged over those days;
* ``wau_mau`` — the same with the 7 days ending on *d* as numerator.

Days are local calendar days (the log's or the city's time zone). The real reference is
the ValleyBike log read by the replay's own rules (:func:`bouquet.simulation.replay.read_trips`:
false starts under a minute and impossible times dropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

VALLEYBIKE_TZ = "America/New_York"
DAY_US = 86_400 * 1_000_000

#: Accepted range of each statistic for simulated data (the issue's targets, widened by the
#: spread seen between 12-week windows of the real log; see docs/simulation.md).
TOLERANCES: dict[str, tuple[float, float]] = {
    "median_per_person": (2.0, 3.0),
    "share_once": (0.28, 0.44),
    "top10_share": (0.56, 0.76),
    "dau_mau": (0.06, 0.12),
    "wau_mau": (0.28, 0.42),
}
STATISTICS = tuple(TOLERANCES)


@dataclass(frozen=True)
class CadenceStats:
    people: int
    uses: int
    median_per_person: float
    share_once: float
    top10_share: float
    dau_mau: float
    wau_mau: float
    days_measured: int

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("people", "uses", *STATISTICS, "days_measured")}

    def out_of_tolerance(self) -> dict[str, tuple[float, tuple[float, float]]]:
        """Statistics outside :data:`TOLERANCES` (empty when calibrated)."""
        return {k: (getattr(self, k), TOLERANCES[k]) for k in STATISTICS
                if not TOLERANCES[k][0] <= getattr(self, k) <= TOLERANCES[k][1]}


def local_days(ts_us: np.ndarray, tz: str) -> np.ndarray:
    """Local calendar day number (days since 1970-01-01 local) of UTC µs timestamps."""
    local = pd.DatetimeIndex(pd.to_datetime(ts_us, unit="us", utc=True)).tz_convert(tz)
    return local.tz_localize(None).to_numpy().astype("datetime64[D]").astype(np.int64)


def _distinct_active(person: np.ndarray, day: np.ndarray, first: int, n_days: int,
                     window: int) -> np.ndarray:
    """Distinct people active in the ``window`` days ending on each day (difference array
    over merged per-person intervals; O(events log events))."""
    pairs = np.unique(person.astype(np.int64) * (n_days + window + 1) + (day - first))
    who, when = np.divmod(pairs, n_days + window + 1)
    nxt = np.empty_like(when)
    nxt[:-1] = np.where(who[1:] == who[:-1], when[1:], np.iinfo(np.int64).max)
    nxt[-1:] = np.iinfo(np.int64).max
    stop = np.minimum(when + window, nxt)  # exclusive
    diff = np.zeros(n_days + window + 2, np.int64)
    np.add.at(diff, when, 1)
    np.add.at(diff, stop, -1)
    return np.cumsum(diff)[:n_days]


def cadence_statistics(person: np.ndarray, ts_us: np.ndarray, tz: str, *,
                       start_us: int | None = None, end_us: int | None = None,
                       min_mau: int = 50) -> CadenceStats:
    """The five statistics of the module docstring for uses by ``person`` at ``ts_us``.

    ``start_us``/``end_us`` bound the observed period (default: the first and last use);
    stickiness is measured only on days whose trailing 28 days lie inside it.
    """
    person = np.asarray(person)
    if len(person) == 0:
        return CadenceStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    _, codes = np.unique(person, return_inverse=True)
    per_person = np.bincount(codes)
    ordered = np.sort(per_person)[::-1]
    top = int(np.ceil(0.1 * len(ordered)))
    days = local_days(np.asarray(ts_us, np.int64), tz)
    first = int(local_days(np.array([start_us]), tz)[0]) if start_us is not None else days.min()
    last = (int(local_days(np.array([end_us - 1]), tz)[0]) if end_us is not None
            else days.max())
    n_days = last - first + 1
    inside = (days >= first) & (days <= last)
    dau = _distinct_active(codes[inside], days[inside], first, n_days, 1)
    wau = _distinct_active(codes[inside], days[inside], first, n_days, 7)
    mau = _distinct_active(codes[inside], days[inside], first, n_days, 28)
    measured = (np.arange(n_days) >= 27) & (mau >= min_mau)

    def ratio(actives: np.ndarray) -> float:
        return float(np.mean(actives[measured] / mau[measured])) if measured.any() else 0.0

    return CadenceStats(
        people=len(per_person), uses=int(per_person.sum()),
        median_per_person=float(np.median(per_person)),
        share_once=float(np.mean(per_person == 1)),
        top10_share=float(ordered[:top].sum() / ordered.sum()),
        dau_mau=ratio(dau), wau_mau=ratio(wau), days_measured=int(measured.sum()),
    )


def valleybike_statistics(path: Path) -> CadenceStats:
    """The statistics of the real log, rows kept by the replay's rules."""
    from bouquet.simulation.replay import read_trips

    trips = read_trips(path)
    return cadence_statistics(trips.user_id, trips.start_us, VALLEYBIKE_TZ)


def simulated_statistics(table: pa.Table, tz: str, start_us: int, end_us: int) -> CadenceStats:
    """The statistics of the ``use`` events of a simulated event table within
    [start_us, end_us) (history before the window is ignored)."""
    ts = table["ts"].cast(pa.int64())
    mask = pc.and_(pc.equal(table["type"], "use"),
                   pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)))
    uses = table.filter(mask)
    return cadence_statistics(uses["resident_id"].to_numpy(zero_copy_only=False),
                              uses["ts"].cast(pa.int64()).to_numpy(), tz,
                              start_us=start_us, end_us=end_us)
