"""Engagement frequency from the event log: cadence, stickiness, contacts, cohorts.

This is where Bouquet's engagement figures are defined, with the table layouts
(:class:`Engagement`) every reader gets. The operator API, ``bouquet report engagement`` and
the dashboard compute them in DuckDB SQL over the Parquet log
(:mod:`bouquet.analytics.logdb`, out of core), through :mod:`bouquet.analytics.service`,
which adds caching and small-cell suppression. The definitions below are repeated in
``docs/engagement.md``; the tests hold the SQL equal to a second, independent computation
of them in memory (``tests/analytics/engagement_oracle.py``), which is test code only: the
whole log in pandas does not fit a metropolitan year.

Definitions
-----------
*Contact*
    An event of the selected cadence classes (:mod:`bouquet.core.cadence`): *use* (use, pay,
    subscribe, rate) is the headline, *response* (click, dismiss, unsubscribe, open) and
    *exposure* (view, notify) are shown beside it. ``erase``, ``consent`` and
    ``profile`` are administrative and never count. Events come from
    :func:`bouquet.core.eventlog.read_events`, so duplicates are removed and erased
    residents are gone.
*Day, week, month*
    UTC calendar day (the event log's partition day and the consumer's Redis buckets);
    ISO week, Monday to Sunday, labelled ``YYYY-Www``; calendar month ``YYYY-MM``.
*Known resident*
    A resident with at least one event (of any type, so a resident who only declared a
    profile counts) on or before the end of the week. In a ``domain``/``factor``/
    ``channel`` slice: a resident with at least one contact in that slice so far.
*Cadence* (as of the end of each ISO week, over a trailing window of
:attr:`CadenceRules.window_days` = 28 days = the 4 ISO weeks ending that Sunday)
    - **daily**: active on at least ``daily_min_days`` (20) distinct days of the window,
      i.e. about five days a week or more;
    - **weekly**: not daily, and active in at least ``weekly_min_weeks`` (3) of the 4 weeks;
    - **monthly**: not weekly, and active at least once in the window;
    - **yearly**: no contact in the window, but one in the trailing ``yearly_weeks`` (52)
      weeks;
    - **dormant**: known, but no contact in the trailing 52 weeks.
    daily + weekly + monthly is the window's active count (MAU); the five classes sum to
    the known residents. The window is complete when the log covers all of it
    (``window_complete``).
*Stickiness* (per ISO week)
    ``dau_mean`` = mean over the week's observed days of the distinct residents active
    that day; ``wau`` = distinct residents active in the week; ``mau`` = distinct residents
    active in the 28-day window ending that Sunday; ``dau_mau`` = dau_mean / mau,
    ``wau_mau`` = wau / mau.
*Contacts per resident per week*
    For every known resident, the number of contacts in the ISO week (0 for the known
    residents who had none). Given as a histogram (0, 1, 2, 3–4, 5–7, 8–14, 15+), the mean
    per known and per active resident, and nearest-rank percentiles (p25 … p99) among the
    active residents.
*Lifetime contacts* (over the whole log)
    For every resident with at least one contact (in the slice): their number of
    contacts. Given as ``share_single`` (residents with exactly one contact), a histogram
    (1, 2, 3–4, 5–9, 10–19, 20+), nearest-rank percentiles, and ``top10_share``: the share
    of all contacts made by the most active tenth of residents (⌈N/10⌉ of them).
*Cohorts*
    A resident's cohort is the calendar month of their first contact (in the slice);
    retention at ``months_since`` = m is the share of the cohort with a contact in month
    cohort + m.
*Calendar-month table*
    ``mau`` = distinct residents active in the month; ``dau_mean`` = mean over the month's
    observed days of daily actives; ``wau_mean`` = mean WAU over the ISO weeks whose
    Thursday falls in the month (the ISO rule for assigning a week to a month);
    ``dau_mau`` and ``wau_mau`` are their ratios to ``mau``, given for complete months only
    (``month_complete``: the log covers every day of the month).

Breakdowns
----------
Every figure is computed for the whole city (dimension ``all``) and for each value of
``neighbourhood`` (a resident attribute: the ``neighbourhood`` of the resident's latest
``profile`` event that declares one, ``_unknown`` otherwise — the same label the consumer
uses), ``domain`` and ``factor`` (of the service, or of the bundle, through the catalog;
``_unknown`` when the catalog does not know the id) and ``channel``. For the event
dimensions a resident's figures count only that slice's contacts: a resident is *daily in
mobility* when their mobility contacts alone make them daily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

CADENCES: tuple[str, ...] = ("daily", "weekly", "monthly", "yearly", "dormant")
#: Breakdown dimensions, in display order.
DIMENSIONS: tuple[str, ...] = ("neighbourhood", "domain", "factor", "channel")
#: The label of a missing attribute (same as the consumer's ``UNKNOWN_NEIGHBOURHOOD``).
UNKNOWN = "_unknown"
#: Histogram buckets of contacts per resident per week: (low, high inclusive, column).
HISTOGRAM: tuple[tuple[int, int | None, str], ...] = (
    (0, 0, "h0"), (1, 1, "h1"), (2, 2, "h2"), (3, 4, "h3_4"), (5, 7, "h5_7"),
    (8, 14, "h8_14"), (15, None, "h15_plus"),
)
#: Contacts per resident per week are histogrammed densely up to this cap; a percentile
#: above it is reported as the cap (500 contacts a week is far beyond any human cadence).
HISTOGRAM_CAP = 500
#: Percentiles of contacts per active resident per week.
QUANTILES: tuple[tuple[float, str], ...] = (
    (0.25, "p25"), (0.5, "p50"), (0.75, "p75"), (0.9, "p90"), (0.99, "p99"),
)
#: Histogram buckets of lifetime contacts per resident.
LIFETIME: tuple[tuple[int, int | None, str], ...] = (
    (1, 1, "l1"), (2, 2, "l2"), (3, 4, "l3_4"), (5, 9, "l5_9"), (10, 19, "l10_19"),
    (20, None, "l20_plus"),
)
#: Event type → funnel stage (the consumer credits the same stages, see docs/engagement.md).
FUNNEL_STAGE_OF_TYPE: dict[str, str] = {
    "view": "shown", "click": "opened", "subscribe": "subscribed", "use": "used",
    # an outreach message delivered, opened (attributed like an answer of the API)
    "notify": "shown", "open": "opened",
}
FUNNEL_STAGES: tuple[str, ...] = ("shown", "opened", "subscribed", "used")



@dataclass(frozen=True)
class CadenceRules:
    """Thresholds of the cadence classes (see the module docstring).

    ``window_days`` must be whole weeks so that the window is exactly the ISO weeks
    ending at the as-of Sunday (and a week is either in or out of it).
    """

    window_days: int = 28
    daily_min_days: int = 20
    weekly_min_weeks: int = 3
    yearly_weeks: int = 52

    def __post_init__(self) -> None:
        if self.window_days % 7 or not 7 <= self.window_days <= 364:
            raise ValueError("window_days must be a whole number of weeks between 7 and 364")
        if not 1 <= self.daily_min_days <= self.window_days:
            raise ValueError("daily_min_days must be between 1 and window_days")
        if not 1 <= self.weekly_min_weeks <= self.window_weeks:
            raise ValueError("weekly_min_weeks must be between 1 and window_days / 7")
        if self.yearly_weeks < self.window_weeks:
            raise ValueError("yearly_weeks must cover at least the window")

    @property
    def window_weeks(self) -> int:
        return self.window_days // 7

    @classmethod
    def for_window(cls, window_days: int) -> CadenceRules:
        """Rules for another window length with the default proportions: daily = 20 of 28
        days (five days a week), weekly = active in 3 of every 4 weeks."""
        weeks = window_days // 7
        return cls(window_days=window_days,
                   daily_min_days=max(1, round(window_days * 20 / 28)),
                   weekly_min_weeks=max(1, math.ceil(weeks * 3 / 4)),
                   yearly_weeks=max(52, weeks))


# --- calendar helpers (epoch days: days since 1970-01-01, a Thursday) --------------------
def week_of_day(day: np.ndarray | int) -> np.ndarray | int:
    """Week index of an epoch day; weeks start on Monday (index 0 = 1969-12-29)."""
    return (day + 3) // 7


def monday_of_week(week: int) -> date:
    return date(1970, 1, 1) + timedelta(days=int(week) * 7 - 3)


def iso_week_label(week: int) -> str:
    year, number, _ = monday_of_week(week).isocalendar()
    return f"{year}-W{number:02d}"


def day_of_epoch(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=int(day))


def month_ratios(dau_mean: np.ndarray, wau_mean: np.ndarray, mau: np.ndarray,
                 complete: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DAU/MAU and WAU/MAU of calendar months; NaN for a month the log covers in part (its
    first and last): its actives over a few days divided by full ISO weeks' actives gave
    WAU/MAU above 100 %."""
    ok = complete & (mau > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.where(ok, dau_mean / mau, np.nan), np.where(ok, wau_mean / mau, np.nan))


# --- the tables every reader gets ------------------------------------------------------
@dataclass
class Engagement:
    """Every engagement table, long form, unsuppressed (the service suppresses on output).

    Each table has ``dimension`` and ``value`` columns (``all``/``all`` for the city).
    """

    cadence: pd.DataFrame
    stickiness: pd.DataFrame
    contacts: pd.DataFrame
    cohorts: pd.DataFrame
    monthly: pd.DataFrame
    daily: pd.DataFrame
    lifetime: pd.DataFrame
    rules: CadenceRules
    summary: dict[str, object] = field(default_factory=dict)
    compute_seconds: float = 0.0


def empty_engagement(rules: CadenceRules) -> Engagement:
    """The figures of a log with no event (both computations answer the same)."""
    empty = pd.DataFrame({"dimension": [], "value": []})
    return Engagement(cadence=empty, stickiness=empty, contacts=empty, cohorts=empty,
                      monthly=empty, daily=empty, lifetime=empty, rules=rules,
                      summary={"events": 0, "contacts": 0, "residents": 0,
                               "contacted_residents": 0, "first_day": None,
                               "last_day": None, "weeks": 0})
