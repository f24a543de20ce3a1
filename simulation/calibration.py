"""Cadence statistics, measured the same way on the real bike-share log and on simulated data.

The simulator's cadence parameters are calibrated so that the simulated ``use`` stream
looks like real riders of a municipal service over a comparable period: the real side is
a pinned window of the ValleyBike log, the 12 ISO weeks from ISO week 23 of 2019 (early
June to late August), with the same weeks of 2020 as a second check; the simulated side
is the simulator's 12 weeks, whatever their calendar. Nine statistics, each computed by
:func:`cadence_statistics` from (person, time) pairs inside the window.

Shape of use (people with at least one use in the window):

* ``median_per_person`` — median uses (trips) per person;
* ``share_once`` — share of those people with exactly one use;
* ``top10_share`` — share of all uses made by the 10% most active people;
* ``dau_mau`` — stickiness: for every day *d* whose trailing 28 days lie inside the
  window and with at least ``min_mau`` monthly actives, distinct people active on *d*
  over distinct people active in the 28 days ending on *d*; averaged over those days;
* ``wau_mau`` — the same with the 7 days ending on *d* as numerator.

Regularity from week to week (weeks are 7-day blocks from the window's first day, so ISO
weeks for the real window):

* ``weeks_active_share`` — mean share of the window's weeks in which a person was active;
* ``week_persistence`` — P(active in week w+1 | active in week w), pooled over people
  and consecutive pairs of weeks;
* ``heavy_weeks_active_share`` — ``weeks_active_share`` among heavy users, active on at
  least :data:`HEAVY_MIN_DAYS` days of the window;
* ``weekly_of_active`` — among people active in the last 4 weeks, the share in the
  weekly class (:func:`bouquet.core.cadence.weekly_or_better`: active in at least 3 of
  the 4), the definition the closed loop's cadence uses.

Days are local calendar days (the log's or the city's time zone). The real reference is
the ValleyBike log read by the replay's own rules (:func:`bouquet.simulation.replay.read_trips`:
false starts under a minute and impossible times dropped).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.core.cadence import WINDOW_WEEKS as CLASS_WEEKS
from bouquet.core.cadence import weekly_or_better

log = logging.getLogger(__name__)

VALLEYBIKE_TZ = "America/New_York"
DAY_US = 86_400 * 1_000_000
#: The pinned real window: ISO weeks 23..34 of the reference year (and of the check year).
REAL_FIRST_ISO_WEEK = 23
WINDOW_WEEKS = 12
REFERENCE_YEAR = 2019
CHECK_YEAR = 2020
#: A heavy user is active on at least this many days of the 12-week window.
HEAVY_MIN_DAYS = 20

#: Accepted range of each statistic for simulated data: the range spanned by the 2019 and
#: 2020 windows, widened on each side by :data:`TOLERANCE_SE` bootstrap standard errors of
#: the 2019 figure (resampling riders; :func:`bootstrap_standard_errors`), rounded outwards
#: to 0.001. A test re-derives them from the real file.
TOLERANCES: dict[str, tuple[float, float]] = {
    "median_per_person": (2.0, 3.0),
    "share_once": (0.225, 0.357),
    "top10_share": (0.506, 0.693),
    "dau_mau": (0.080, 0.137),
    "wau_mau": (0.347, 0.511),
    "weeks_active_share": (0.144, 0.163),
    "week_persistence": (0.312, 0.454),
    "heavy_weeks_active_share": (0.559, 0.816),
    "weekly_of_active": (0.089, 0.154),
}
TOLERANCE_SE = 3.0
STATISTICS = tuple(TOLERANCES)
REGULARITY = ("weeks_active_share", "week_persistence", "heavy_weeks_active_share",
              "weekly_of_active")


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
    weeks: int = 0
    weeks_active_share: float = math.nan
    week_persistence: float = math.nan
    heavy_people: int = 0
    heavy_weeks_active_share: float = math.nan
    weekly_of_active: float = math.nan

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("people", "uses", *STATISTICS, "days_measured",
                                              "weeks", "heavy_people")}

    def out_of_tolerance(self) -> dict[str, tuple[float, tuple[float, float]]]:
        """Statistics outside :data:`TOLERANCES` (empty when calibrated; NaN is outside)."""
        return {k: (getattr(self, k), TOLERANCES[k]) for k in STATISTICS
                if not TOLERANCES[k][0] <= getattr(self, k) <= TOLERANCES[k][1]}


def iso_window(year: int, tz: str = VALLEYBIKE_TZ, first_week: int = REAL_FIRST_ISO_WEEK,
               weeks: int = WINDOW_WEEKS) -> tuple[int, int]:
    """[start, end) in UTC µs of ``weeks`` ISO weeks from ``first_week`` of ``year``, from
    local midnight on the first Monday to local midnight after the last Sunday."""
    first = date.fromisocalendar(year, first_week, 1)
    zone = ZoneInfo(tz)

    def midnight(d: date) -> int:
        return int(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp()) * 1_000_000

    return midnight(first), midnight(first + timedelta(weeks=weeks))


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
    """The statistics of the module docstring for uses by ``person`` at ``ts_us``.

    ``start_us``/``end_us`` bound the observed period (default: the first and last use);
    uses outside it are ignored. Stickiness is measured only on days whose trailing 28
    days lie inside it; regularity on its complete 7-day weeks.
    """
    person = np.asarray(person)
    ts_us = np.asarray(ts_us, np.int64)
    if start_us is not None or end_us is not None:
        inside = np.ones(len(ts_us), bool)
        if start_us is not None:
            inside &= ts_us >= start_us
        if end_us is not None:
            inside &= ts_us < end_us
        person, ts_us = person[inside], ts_us[inside]
    if len(person) == 0:
        return CadenceStats(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    _, codes = np.unique(person, return_inverse=True)
    per_person = np.bincount(codes)
    ordered = np.sort(per_person)[::-1]
    top = int(np.ceil(0.1 * len(ordered)))
    days = local_days(ts_us, tz)
    first = int(local_days(np.array([start_us]), tz)[0]) if start_us is not None else days.min()
    last = (int(local_days(np.array([end_us - 1]), tz)[0]) if end_us is not None
            else days.max())
    n_days = last - first + 1
    dau = _distinct_active(codes, days, first, n_days, 1)
    wau = _distinct_active(codes, days, first, n_days, 7)
    mau = _distinct_active(codes, days, first, n_days, 28)
    measured = (np.arange(n_days) >= 27) & (mau >= min_mau)

    def ratio(actives: np.ndarray) -> float:
        return float(np.mean(actives[measured] / mau[measured])) if measured.any() else 0.0

    return CadenceStats(
        people=len(per_person), uses=int(per_person.sum()),
        median_per_person=float(np.median(per_person)),
        share_once=float(np.mean(per_person == 1)),
        top10_share=float(ordered[:top].sum() / ordered.sum()),
        dau_mau=ratio(dau), wau_mau=ratio(wau), days_measured=int(measured.sum()),
        **_regularity(codes, days - first, n_days // 7),
    )


def _regularity(person: np.ndarray, day: np.ndarray, weeks: int) -> dict[str, float | int]:
    """The four week-to-week statistics over ``weeks`` complete weeks (``day`` counted from
    the first day of the window)."""
    if weeks < 1:
        return {"weeks": 0}
    keep = day < 7 * weeks
    pairs = np.unique(person[keep].astype(np.int64) * (7 * weeks) + day[keep])
    who, day_of = np.divmod(pairs, 7 * weeks)
    people, row = np.unique(who, return_inverse=True)
    grid = np.zeros((len(people), weeks), np.int16)  # active days per person and week
    np.add.at(grid, (row, day_of // 7), 1)
    active = grid > 0
    share = active.mean(1)
    heavy = grid.sum(1) >= HEAVY_MIN_DAYS
    out: dict[str, float | int] = {
        "weeks": weeks, "weeks_active_share": float(share.mean()),
        "heavy_people": int(heavy.sum()),
        "heavy_weeks_active_share": float(share[heavy].mean()) if heavy.any() else math.nan,
    }
    if weeks >= 2:
        before = active[:, :-1]
        out["week_persistence"] = float((before & active[:, 1:]).sum() / max(before.sum(), 1))
    if weeks >= CLASS_WEEKS:
        recent = active[:, -CLASS_WEEKS:].any(1)
        if recent.any():
            out["weekly_of_active"] = float(weekly_or_better(active[recent]).mean())
    return out


def bootstrap_standard_errors(person: np.ndarray, ts_us: np.ndarray, tz: str, *,
                              start_us: int, end_us: int, rounds: int = 200, seed: int = 0
                              ) -> dict[str, float]:
    """Standard error of every statistic of :data:`STATISTICS` under resampling of the
    people (with replacement; a person drawn twice counts as two people), uses inside
    [start_us, end_us) only."""
    person = np.asarray(person)
    ts_us = np.asarray(ts_us, np.int64)
    inside = (ts_us >= start_us) & (ts_us < end_us)
    _, codes = np.unique(person[inside], return_inverse=True)
    order = np.argsort(codes, kind="stable")
    codes, ts = codes[order], ts_us[inside][order]
    first = np.searchsorted(codes, np.arange(codes.max() + 1))
    count = np.bincount(codes)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in STATISTICS}
    for _ in range(rounds):
        pick = rng.integers(0, len(first), len(first))
        lengths = count[pick]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = np.repeat(first[pick], lengths) + offsets
        stats = cadence_statistics(np.repeat(np.arange(len(pick)), lengths), ts[rows], tz,
                                   start_us=start_us, end_us=end_us)
        for k in STATISTICS:
            values[k].append(getattr(stats, k))
    return {k: float(np.std(v, ddof=1)) for k, v in values.items()}


def derive_tolerances(real: dict[int, CadenceStats], standard_errors: dict[str, float],
                      widen: float = TOLERANCE_SE) -> dict[str, tuple[float, float]]:
    """The range spanned by the real windows, widened by ``widen`` standard errors on each
    side and rounded outwards to 0.001 (how :data:`TOLERANCES` were set)."""
    out = {}
    for k in STATISTICS:
        values = [getattr(s, k) for s in real.values()]
        low = min(values) - widen * standard_errors[k]
        high = max(values) + widen * standard_errors[k]
        out[k] = (math.floor(round(low * 1000, 6)) / 1000, math.ceil(round(high * 1000, 6)) / 1000)
    return out


def valleybike_statistics(path: Path, years: tuple[int, ...] = (REFERENCE_YEAR, CHECK_YEAR)
                          ) -> dict[int, CadenceStats]:
    """The statistics of the real log in the pinned window of each year, rows kept by the
    replay's rules."""
    from bouquet.simulation.replay import read_trips

    trips = read_trips(path)
    out = {}
    for year in years:
        start_us, end_us = iso_window(year)
        out[year] = cadence_statistics(trips.user_id, trips.start_us, VALLEYBIKE_TZ,
                                       start_us=start_us, end_us=end_us)
    return out


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
