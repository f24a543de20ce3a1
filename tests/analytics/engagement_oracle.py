"""The engagement figures computed a second, independent way: in memory, with numpy and
pandas, from :func:`bouquet.core.eventlog.read_events` — the oracle the DuckDB SQL of
:mod:`bouquet.analytics.logdb` is held equal to (``test_logdb.py``), and the reference the
suppression, funnel and engagement tests read.

It was Bouquet's served path until the report moved to DuckDB over the Parquet log; it
holds the whole log in memory (~0.56 KB per event), which is fine for a test's log and why
it is not served. The definitions are those of :mod:`bouquet.analytics.engagement`.

Everything is vectorised: events are packed into int64 keys, reduced with sorted
run-lengths and ``np.bincount`` over dense (group × week) grids; no Python loop runs per
resident or per event.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bouquet.analytics.engagement import (
    FUNNEL_STAGE_OF_TYPE,
    HISTOGRAM,
    HISTOGRAM_CAP,
    LIFETIME,
    QUANTILES,
    UNKNOWN,
    CadenceRules,
    Engagement,
    day_of_epoch,
    empty_engagement,
    iso_week_label,
    month_ratios,
    week_of_day,
)
from bouquet.core.catalog import AggregationFactor, Catalog, Domain
from bouquet.core.eventlog import read_events
from bouquet.core.events import CONTACT_TYPES
from bouquet.core.recommendation import RecommendationIds, development_ids

log = logging.getLogger(__name__)

_COLUMNS = ["resident_id", "type", "service_id", "bundle_id", "ts", "channel",
            "recommendation_id", "context"]
_NB_RE = r'"neighbourhood"\s*:\s*"(?P<nb>[^"]*)"'


def month_of_day(day: np.ndarray) -> np.ndarray:
    """Month index (months since 1970-01) of epoch days (the SQL counts months its own way:
    the oracle keeps this one)."""
    return day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)


def month_label(month: int) -> str:
    return f"{1970 + month // 12}-{month % 12 + 1:02d}"


# --- loading -------------------------------------------------------------------------------
@dataclass
class EngagementData:
    """The event log reduced to compact integer arrays (one row per contact event).

    Residents are integer codes ``0..n_residents-1``; attribute codes index the
    ``*_values`` tuples. Built once per event-log state and cached by the service.
    """

    n_residents: int
    first_day: np.ndarray  # per resident: epoch day of their first event of any type
    nb: np.ndarray  # per resident: code into nb_values
    nb_values: tuple[str, ...]
    res: np.ndarray  # per contact: resident code
    day: np.ndarray  # per contact: epoch day
    domain: np.ndarray
    domain_values: tuple[str, ...]
    factor: np.ndarray
    factor_values: tuple[str, ...]
    channel: np.ndarray
    channel_values: tuple[str, ...]
    #: resident, day, stage, model_version, variant and the four dimensions' values
    funnel_events: pd.DataFrame
    events: int = 0
    first_event_day: int | None = None
    last_event_day: int | None = None
    load_seconds: float = 0.0

    @property
    def contacts(self) -> int:
        return int(self.res.size)

    def dimension_values(self, dimension: str) -> tuple[str, ...]:
        return {"neighbourhood": self.nb_values, "domain": self.domain_values,
                "factor": self.factor_values, "channel": self.channel_values}[dimension]


def _codes(values: pd.Series, order: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of a string column; missing → UNKNOWN. ``order`` fixes known labels
    first (so codes are stable between runs)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    wanted = list(order or [])
    for label in sorted(labels):
        if label not in wanted:
            wanted.append(label)
    if (codes < 0).any() and UNKNOWN not in wanted:
        wanted.append(UNKNOWN)
    remap = np.array([wanted.index(label) for label in labels] + [wanted.index(UNKNOWN)
                     if UNKNOWN in wanted else 0], dtype=np.int32)
    return remap[codes], wanted


def _catalog_attribute(frame: pd.DataFrame, catalog: Catalog
                       ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Domain and aggregation-factor codes of each event, looked up once per distinct
    (service_id, bundle_id) pair rather than once per event."""
    s_codes, s_uniques = pd.factorize(frame["service_id"], use_na_sentinel=True)
    b_codes, b_uniques = pd.factorize(frame["bundle_id"], use_na_sentinel=True)
    pair = (s_codes.astype(np.int64) + 1) * (len(b_uniques) + 1) + (b_codes + 1)
    upairs, inverse = np.unique(pair, return_inverse=True)
    domains = [d.value for d in Domain]
    factors = [f.value for f in AggregationFactor]
    dom_of_pair, fac_of_pair = [], []
    for p in upairs.tolist():
        s_index, b_index = divmod(p, len(b_uniques) + 1)
        service = str(s_uniques[s_index - 1]) if s_index else None
        bundle = str(b_uniques[b_index - 1]) if b_index else None
        dom = catalog.domain_of(service, bundle) or UNKNOWN
        fac = catalog.aggregation_factor_of(service, bundle) or UNKNOWN
        if dom not in domains:
            domains.append(dom)
        if fac not in factors:
            factors.append(fac)
        dom_of_pair.append(domains.index(dom))
        fac_of_pair.append(factors.index(fac))
    inverse = inverse.reshape(-1)
    return (np.asarray(dom_of_pair, np.int32)[inverse] if len(upairs) else
            np.zeros(0, np.int32), domains,
            np.asarray(fac_of_pair, np.int32)[inverse] if len(upairs) else
            np.zeros(0, np.int32), factors)


def load_engagement_data(root: Path, catalog: Catalog,
                         recommendation_ids: RecommendationIds | None = None,
                         contact_types: Iterable[str] = CONTACT_TYPES) -> EngagementData:
    """Read the event log once (through :func:`read_events`) and reduce it to arrays.

    ``recommendation_ids`` verifies the ids the funnel credits (the deployment's, from
    :meth:`RecommendationIds.for_settings`; default: the development key's).
    ``contact_types`` are the event types the cadence figures count (one cadence class of
    :mod:`bouquet.core.cadence`, or all of them); the funnel and the dimension values are
    those of every contact whatever the selection, as in the DuckDB path."""
    started = time.perf_counter()
    frame = read_events(Path(root), columns=_COLUMNS)
    n_events = len(frame)
    res_codes, res_uniques = pd.factorize(frame["resident_id"])
    n_res = len(res_uniques)
    res_codes = res_codes.astype(np.int64)
    day = frame["ts"].to_numpy(dtype="datetime64[us]").astype("datetime64[D]").astype(np.int64)
    first_day = np.full(n_res, np.iinfo(np.int64).max, np.int64)
    if n_events:
        np.minimum.at(first_day, res_codes, day)

    type_codes, type_names = pd.factorize(frame["type"])
    type_names = [str(t) for t in type_names]
    is_contact = np.isin(type_codes, [i for i, t in enumerate(type_names)
                                      if t in CONTACT_TYPES])
    is_profile = type_codes == (type_names.index("profile") if "profile" in type_names
                                else -2)

    # neighbourhood: the latest profile event that declares one (frame is sorted by ts)
    nb_of_res = np.zeros(n_res, np.int32)
    nb_values = [UNKNOWN]
    if is_profile.any():
        ctx = pa.array(frame.loc[is_profile, "context"].to_numpy(dtype=object), pa.string(),
                       from_pandas=True)
        found = pc.fill_null(pc.match_substring_regex(ctx, _NB_RE), False)
        prof = pc.if_else(found, pc.extract_regex(
            pc.if_else(found, ctx, pa.scalar('"neighbourhood":""')), _NB_RE).field("nb"),
            pa.scalar(None, pa.string())).to_numpy(zero_copy_only=False)
        prof_res = res_codes[is_profile]
        declared = pd.notna(prof)
        if declared.any():
            latest = pd.Series(prof[declared],
                               index=prof_res[declared]).groupby(level=0).last()
            codes, labels = _codes(pd.Series(latest.to_numpy(), dtype="string"))
            nb_values = labels if UNKNOWN in labels else [*labels, UNKNOWN]
            nb_of_res[:] = nb_values.index(UNKNOWN)
            nb_of_res[latest.index.to_numpy()] = codes
    contacts = frame.loc[is_contact]
    dom, dom_values, fac, fac_values = _catalog_attribute(contacts, catalog)
    chan, chan_values = _codes(contacts["channel"])

    stage_of_code = np.array([FUNNEL_STAGE_OF_TYPE.get(t) for t in type_names] + [None],
                             dtype=object)
    funnel = _funnel_events(contacts, stage_of_code[type_codes[is_contact]],
                            res_codes[is_contact], day[is_contact], {
                                "neighbourhood": (nb_of_res[res_codes[is_contact]],
                                                  nb_values),
                                "domain": (dom, dom_values), "factor": (fac, fac_values),
                                "channel": (chan, chan_values)},
                            recommendation_ids or development_ids())
    selected = np.isin(type_codes[is_contact], [i for i, t in enumerate(type_names)
                                                if t in set(contact_types)])
    data = EngagementData(
        n_residents=n_res,
        first_day=first_day,
        nb=nb_of_res,
        nb_values=tuple(nb_values),
        res=res_codes[is_contact][selected],
        day=day[is_contact][selected],
        domain=np.asarray(dom)[selected], domain_values=tuple(dom_values),
        factor=np.asarray(fac)[selected], factor_values=tuple(fac_values),
        channel=np.asarray(chan)[selected], channel_values=tuple(chan_values),
        funnel_events=funnel,
        events=n_events,
        first_event_day=int(day.min()) if n_events else None,
        last_event_day=int(day.max()) if n_events else None,
    )
    data.load_seconds = time.perf_counter() - started
    log.info("engagement data: %d events, %d contacts, %d residents read in %.2f s",
             n_events, data.contacts, n_res, data.load_seconds)
    return data



def parse_recommendation_ids(values: pd.Series, ids: RecommendationIds) -> pd.DataFrame:
    """Model version and variant each id credits: its own when it verifies, ``unattributed``
    for any other id, None where there is no id. One verification per distinct id (the
    events that echo one answer share it)."""
    present = values.notna().to_numpy()
    distinct = pd.unique(values[present])
    arms = [ids.arm(v) for v in distinct]
    lookup = pd.Index(distinct)
    model_version = np.full(len(values), None, object)
    variant = np.full(len(values), None, object)
    if len(distinct):
        where = lookup.get_indexer(values[present])
        model_version[present] = np.array([a[0] for a in arms], object)[where]
        variant[present] = np.array([a[1] for a in arms], object)[where]
    return pd.DataFrame({"model_version": model_version, "variant": variant},
                        index=values.index)


def _funnel_events(contacts: pd.DataFrame, stage: np.ndarray, res: np.ndarray,
                   day: np.ndarray, dims: dict[str, tuple[np.ndarray, list[str]]],
                   ids: RecommendationIds) -> pd.DataFrame:
    """Contacts that carry a recommendation id and map to a funnel stage (``stage``: the
    stage of each contact's type, or None), credited to the id's arm when it verifies and
    to ``unattributed`` otherwise, with their dimension values (categoricals, so that
    breakdowns cost little memory)."""
    has_rec = contacts["recommendation_id"].notna().to_numpy() if len(contacts) else \
        np.zeros(0, bool)
    mask = has_rec & (stage != None)  # noqa: E711 - element-wise on an object array
    parsed = parse_recommendation_ids(contacts["recommendation_id"][mask], ids)
    keep = parsed["model_version"].notna().to_numpy()
    out = pd.DataFrame({
        "resident": res[mask][keep],
        "day": day[mask][keep],
        "stage": stage[mask][keep],
        "model_version": parsed["model_version"].to_numpy(dtype=object)[keep],
        "variant": parsed["variant"].to_numpy(dtype=object)[keep],
    })
    for name, (codes, values) in dims.items():
        out[name] = pd.Categorical.from_codes(np.asarray(codes)[mask][keep],
                                              categories=list(values))
    return out



@dataclass
class _Grid:
    """Dense accumulators, one row per output group (dimension value)."""

    groups: list[tuple[str, str]]
    n_days: int
    n_weeks: int
    n_months: int
    n_hist_cap: int

    def __post_init__(self) -> None:
        g, d, w, m = len(self.groups), self.n_days, self.n_weeks, self.n_months
        self.dau = np.zeros((g, d), np.int64)
        self.wau = np.zeros((g, w), np.int64)
        self.contacts = np.zeros((g, w), np.int64)
        self.cadence = np.zeros((g, w, 3), np.int64)
        self.covered_diff = np.zeros((g, w + 1), np.int64)
        self.known_new = np.zeros((g, w), np.int64)
        self.mau_month = np.zeros((g, m), np.int64)
        self.cohort = np.zeros((g, m, m), np.int64)
        self.hist = np.zeros((g, w, self.n_hist_cap + 1), np.int64)
        #: (group, lifetime contacts) of every slice-resident, one array pair per grouping
        self.lifetime: list[tuple[np.ndarray, np.ndarray]] = []


def _runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Start indices of the runs of equal values in a sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _bincount(grid: np.ndarray, flat_index: np.ndarray, weights: np.ndarray | None = None
              ) -> None:
    grid += np.bincount(flat_index, weights=weights, minlength=grid.size
                        ).reshape(grid.shape).astype(grid.dtype)


def compute_engagement(data: EngagementData, rules: CadenceRules | None = None) -> Engagement:
    """All engagement tables for every dimension value, weekly from the first event's week
    to the last's (see the module docstring for the definitions)."""
    rules = rules or CadenceRules()
    started = time.perf_counter()
    if data.first_event_day is None:
        return empty_engagement(rules)
    d0, d1 = data.first_event_day, data.last_event_day
    w0, w1 = int(week_of_day(d0)), int(week_of_day(d1))
    m0 = int(month_of_day(np.array([d0]))[0])
    m1 = int(month_of_day(np.array([d1]))[0])
    n_days, n_weeks, n_months = d1 - d0 + 1, w1 - w0 + 1, m1 - m0 + 1
    n_res = max(data.n_residents, 1)

    families: list[tuple[str, np.ndarray, tuple[str, ...]]] = [
        ("domain", data.domain, data.domain_values),
        ("factor", data.factor, data.factor_values),
        ("channel", data.channel, data.channel_values),
    ]
    groups: list[tuple[str, str]] = [("all", "all")]
    nb_offset = len(groups)
    groups += [("neighbourhood", v) for v in data.nb_values]
    offsets = {}
    for name, _, values in families:
        offsets[name] = len(groups)
        groups += [(name, v) for v in values]

    grid = _Grid(groups, n_days, n_weeks, n_months, n_hist_cap=HISTOGRAM_CAP)

    # (resident, day, domain, factor, channel) → contact count, one sort of the contacts
    n_dom, n_fac, n_ch = (len(data.domain_values) + 1, len(data.factor_values) + 1,
                          len(data.channel_values) + 1)
    combo = (((data.res * n_days + (data.day - d0)) * n_dom + data.domain) * n_fac
             + data.factor) * n_ch + data.channel
    combo, combo_count = np.unique(combo, return_counts=True)
    c_ch = combo % n_ch
    rest = combo // n_ch
    c_fac = rest % n_fac
    rest //= n_fac
    c_dom = rest % n_dom
    rest //= n_dom
    c_day = rest % n_days
    c_res = rest // n_days
    del combo, rest

    # whole city: slice 0, output groups "all" and the resident's neighbourhood
    _family(grid, c_res, c_day, combo_count, np.zeros_like(c_res), n_res, rules, d0, w0, m0,
            group_of=lambda s, r: [np.zeros_like(r), nb_offset + data.nb[r]],
            first_day=data.first_day, presorted=True)
    for (name, _, _), codes in zip(families, (c_dom, c_fac, c_ch), strict=True):
        off = offsets[name]
        _family(grid, c_res, c_day, combo_count, codes, n_res, rules, d0, w0, m0,
                group_of=lambda s, r, off=off: [off + s], first_day=None, presorted=False)

    eng = _tables(grid, data, rules, d0, w0, m0)
    eng.compute_seconds = time.perf_counter() - started
    log.info("engagement computed in %.2f s (%d groups × %d weeks)", eng.compute_seconds,
             len(groups), n_weeks)
    return eng


def _family(grid: _Grid, res: np.ndarray, dayr: np.ndarray, count: np.ndarray,
            slice_code: np.ndarray, n_res: int, rules: CadenceRules, d0: int, w0: int, m0: int,
            *, group_of, first_day: np.ndarray | None, presorted: bool) -> None:
    """Accumulate one family of slices (the city, or every value of one dimension) into the
    grid. ``group_of(slice, resident)`` returns the output group arrays (one per grouping:
    the city family is also grouped by neighbourhood)."""
    n_days, n_weeks, n_months = grid.n_days, grid.n_weeks, grid.n_months
    # --- (slice-resident, day) rows, sorted, with their contact counts
    key = (slice_code.astype(np.int64) * n_res + res) * n_days + dayr
    if not presorted:
        order = np.argsort(key, kind="stable")
        key, count = key[order], count[order]
    starts = _runs(key)
    key = key[starts]
    cnt = np.add.reduceat(count, starts) if starts.size else count[:0]
    sr = key // n_days
    dr = key % n_days
    day_abs = dr + d0
    wk = week_of_day(day_abs) - w0
    # month of each row through a per-day lookup table (n_days entries, not n_rows dates)
    mon = (month_of_day(np.arange(n_days) + d0) - m0)[dr]
    s_of = sr // n_res
    r_of = sr % n_res
    day_groups = group_of(s_of, r_of)
    for g in day_groups:
        _bincount(grid.dau, g * n_days + dr)

    # --- (slice-resident, week) rows: active days and contacts in the week
    k2 = sr * n_weeks + wk
    ws = _runs(k2)
    k2 = k2[ws]
    nd_w = np.diff(np.r_[ws, sr.size])
    nc_w = np.add.reduceat(cnt, ws) if ws.size else cnt[:0]
    sr_w = sr[ws]
    wk_w = wk[ws]
    week_groups = [g[ws] for g in day_groups]
    cap = grid.n_hist_cap
    for g in week_groups:
        _bincount(grid.wau, g * n_weeks + wk_w)
        _bincount(grid.contacts, g * n_weeks + wk_w, nc_w)
        _bincount(grid.hist, (g * n_weeks + wk_w) * (cap + 1) + np.minimum(nc_w, cap))

    # --- cadence at each as-of week: each week row "owns" the as-of weeks from itself to
    # the next active week of the same slice-resident (at most window_weeks), so every
    # (slice-resident, as-of) pair with activity in its window is visited exactly once
    nwin = rules.window_weeks
    same_next = np.r_[sr_w[1:] == sr_w[:-1], False]
    next_wk = np.where(same_next, np.r_[wk_w[1:], 0], np.iinfo(np.int64).max // 4)
    gap = next_wk - wk_w
    own = np.minimum(np.minimum(nwin, gap), n_weeks - wk_w)
    idx = np.repeat(np.arange(wk_w.size), own)
    step = np.arange(idx.size) - np.repeat(np.cumsum(own) - own, own)
    asof = wk_w[idx] + step
    low = np.maximum(asof - nwin + 1, 0)
    lo = np.searchsorted(k2, sr_w[idx] * n_weeks + low, side="left")
    hi = idx + 1
    cs = np.r_[0, np.cumsum(nd_w)]
    days_in = cs[hi] - cs[lo]
    weeks_in = hi - lo
    cls = np.where(days_in >= rules.daily_min_days, 0,
                   np.where(weeks_in >= rules.weekly_min_weeks, 1, 2))
    for g in week_groups:
        _bincount(grid.cadence, (g[idx] * n_weeks + asof) * 3 + cls)

    # --- coverage by the trailing yearly window: week row i covers as-of weeks
    # [wk, wk + yearly) up to the next active week (which takes over)
    cover = np.minimum(np.minimum(rules.yearly_weeks, gap), n_weeks - wk_w)
    for g in week_groups:
        width = n_weeks + 1
        _bincount(grid.covered_diff, g * width + wk_w)
        _bincount(grid.covered_diff, g * width + wk_w + cover, -np.ones(cover.size))

    # --- known residents: first contact in the slice, or (city) first event of any type
    first_rows = _runs(sr_w)
    if first_day is None:
        for g in week_groups:
            _bincount(grid.known_new, g[first_rows] * n_weeks + wk_w[first_rows])
    else:
        everyone = np.arange(first_day.size)
        fw = week_of_day(first_day) - w0
        for g in group_of(np.zeros_like(everyone), everyone):
            _bincount(grid.known_new, g * n_weeks + fw)

    # --- lifetime contacts per slice-resident
    res_starts = _runs(sr)
    total = np.add.reduceat(cnt, res_starts) if res_starts.size else cnt[:0]
    for g in day_groups:
        grid.lifetime.append((g[res_starts], total))

    # --- months: active months per slice-resident, cohorts by the first one
    k3 = sr * n_months + mon
    ms = _runs(k3)
    sr_m, mon_m = sr[ms], mon[ms]
    month_groups = [g[ms] for g in day_groups]
    first_of_sr = _runs(sr_m)
    run_len = np.diff(np.r_[first_of_sr, sr_m.size])
    cohort = np.repeat(mon_m[first_of_sr], run_len)
    for g in month_groups:
        _bincount(grid.mau_month, g * n_months + mon_m)
        _bincount(grid.cohort, (g * n_months + cohort) * n_months + (mon_m - cohort))


def _quantiles(hist: np.ndarray) -> dict[str, np.ndarray]:
    """Nearest-rank percentiles of the active residents (buckets ≥ 1) of each histogram
    row, with how many residents lie at or below / at or above each (for suppression)."""
    active = hist[..., 1:]
    n = active.sum(axis=-1)
    cum = np.cumsum(active, axis=-1)
    out: dict[str, np.ndarray] = {}
    for q, name in QUANTILES:
        rank = np.maximum(np.ceil(q * n), 1)
        pos = (cum < rank[..., None]).sum(axis=-1)
        pos = np.minimum(pos, active.shape[-1] - 1)
        at = np.take_along_axis(cum, pos[..., None], axis=-1)[..., 0]
        below = at - np.take_along_axis(active, pos[..., None], axis=-1)[..., 0]
        out[name] = np.where(n > 0, pos + 1, np.nan)
        out[f"{name}_n_le"] = at
        out[f"{name}_n_ge"] = n - below
    return out


def _tables(grid: _Grid, data: EngagementData, rules: CadenceRules, d0: int, w0: int,
            m0: int) -> Engagement:
    g_n, n_weeks, n_months = len(grid.groups), grid.n_weeks, grid.n_months
    d1 = data.last_event_day
    dims = [g[0] for g in grid.groups]
    vals = [g[1] for g in grid.groups]
    week_idx = np.arange(n_weeks)
    week_abs = week_idx + w0
    week_start_day = week_abs * 7 - 3
    labels = [iso_week_label(w) for w in week_abs]
    starts = [day_of_epoch(d) for d in week_start_day]
    # observed days of each week: within [first event day, last event day]
    obs = np.minimum(week_start_day + 6, d1) - np.maximum(week_start_day, d0) + 1

    def frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
        base = {"dimension": np.repeat(dims, n_weeks), "value": np.repeat(vals, n_weeks),
                "week": np.tile(labels, g_n), "week_start": np.tile(starts, g_n)}
        base.update({k: np.asarray(v).reshape(-1) for k, v in columns.items()})
        return pd.DataFrame(base)

    known = np.cumsum(grid.known_new, axis=1)
    covered = np.cumsum(grid.covered_diff, axis=1)[:, :n_weeks]
    cad = grid.cadence
    window_active = cad.sum(axis=2)
    yearly = covered - window_active
    dormant = known - covered
    window_complete = np.tile(week_start_day + 6 - rules.window_days + 1 >= d0, g_n)
    week_complete = np.tile(week_start_day + 6 <= d1, g_n)
    cadence = frame({"known": known, "daily": cad[..., 0], "weekly": cad[..., 1],
                     "monthly": cad[..., 2], "yearly": yearly, "dormant": dormant,
                     "window_complete": window_complete, "week_complete": week_complete})

    # DAU summed per week, over the observed days
    day_week = week_of_day(np.arange(grid.n_days) + d0) - w0
    dau_week = np.zeros((g_n, n_weeks))
    np.add.at(dau_week.T, day_week, grid.dau.T)
    dau_mean = dau_week / obs
    with np.errstate(divide="ignore", invalid="ignore"):
        stick = frame({"days_observed": np.tile(obs, g_n), "dau_mean": dau_mean,
                       "wau": grid.wau, "mau": window_active,
                       "dau_mau": np.where(window_active > 0, dau_mean / window_active,
                                           np.nan),
                       "wau_mau": np.where(window_active > 0, grid.wau / window_active,
                                           np.nan),
                       "window_complete": window_complete, "week_complete": week_complete})

    hist = grid.hist.copy()
    hist[..., 0] = known - grid.wau
    q = _quantiles(hist)
    buckets = {}
    for low, high, name in HISTOGRAM:
        top = hist.shape[-1] if high is None else high + 1
        buckets[name] = hist[..., low:top].sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        contacts = frame({
            "known": known, "active": grid.wau, "contacts": grid.contacts,
            "mean_per_known": np.where(known > 0, grid.contacts / known, np.nan),
            "mean_per_active": np.where(grid.wau > 0, grid.contacts / grid.wau, np.nan),
            **q, **buckets, "week_complete": week_complete,
        })

    # calendar months
    month_abs = np.arange(n_months) + m0
    m_labels = [month_label(m) for m in month_abs]
    day_month = month_of_day(np.arange(grid.n_days) + d0) - m0
    dau_month = np.zeros((g_n, n_months))
    np.add.at(dau_month.T, day_month, grid.dau.T)
    days_obs_month = np.bincount(day_month, minlength=n_months)
    thursday_month = month_of_day(week_abs * 7) - m0
    in_range = (thursday_month >= 0) & (thursday_month < n_months)
    wau_month = np.zeros((g_n, n_months))
    np.add.at(wau_month.T, thursday_month[in_range], grid.wau.T[in_range])
    weeks_per_month = np.bincount(thursday_month[in_range], minlength=n_months)
    mau_m = grid.mau_month
    with np.errstate(divide="ignore", invalid="ignore"):
        dau_mean_m = dau_month / days_obs_month
        wau_mean_m = np.where(weeks_per_month > 0, wau_month / weeks_per_month, np.nan)
        complete = np.array([calendar.monthrange(1970 + int(m) // 12, int(m) % 12 + 1)[1]
                             for m in month_abs]) == days_obs_month
        complete_g = np.tile(complete, g_n)
        dau_mau, wau_mau = month_ratios(dau_mean_m.reshape(-1), wau_mean_m.reshape(-1),
                                        mau_m.reshape(-1).astype(float), complete_g)
        monthly = pd.DataFrame({
            "dimension": np.repeat(dims, n_months), "value": np.repeat(vals, n_months),
            "month": np.tile(m_labels, g_n),
            "days_observed": np.tile(days_obs_month, g_n),
            "weeks": np.tile(weeks_per_month, g_n),
            "mau": mau_m.reshape(-1), "dau_mean": dau_mean_m.reshape(-1),
            "wau_mean": wau_mean_m.reshape(-1),
            "dau_mau": dau_mau, "wau_mau": wau_mau, "month_complete": complete_g,
        })

    # cohorts: keep the triangle (months_since < months left)
    gi, ci, oi = np.meshgrid(np.arange(g_n), np.arange(n_months), np.arange(n_months),
                             indexing="ij")
    keep = (ci + oi) < n_months
    size = grid.cohort[:, :, 0]
    retained = grid.cohort[keep]
    sizes = size[gi[keep], ci[keep]]
    with np.errstate(divide="ignore", invalid="ignore"):
        cohorts = pd.DataFrame({
            "dimension": np.asarray(dims)[gi[keep]], "value": np.asarray(vals)[gi[keep]],
            "cohort": np.asarray(m_labels)[ci[keep]], "months_since": oi[keep],
            "cohort_size": sizes, "retained": retained,
            "retention": np.where(sizes > 0, retained / sizes, np.nan),
        })
    cohorts = cohorts[cohorts["cohort_size"] > 0].reset_index(drop=True)

    lifetime = _lifetime(grid, dims, vals)

    day_labels = [day_of_epoch(d).isoformat() for d in range(d0, d0 + grid.n_days)]
    daily = pd.DataFrame({
        "dimension": np.repeat(dims, grid.n_days), "value": np.repeat(vals, grid.n_days),
        "day": np.tile(day_labels, g_n), "dau": grid.dau.reshape(-1),
    })
    summary = {
        "events": data.events, "contacts": data.contacts,
        "residents": int(known[0, -1]) if n_weeks else 0,
        "contacted_residents": int(np.unique(data.res).size),
        "first_day": day_of_epoch(d0).isoformat(), "last_day": day_of_epoch(d1).isoformat(),
        "weeks": n_weeks, "load_seconds": round(data.load_seconds, 3),
    }
    return Engagement(cadence=cadence, stickiness=stick, contacts=contacts, cohorts=cohorts,
                      monthly=monthly, daily=daily, lifetime=lifetime, rules=rules,
                      summary=summary)


def _lifetime(grid: _Grid, dims: list[str], vals: list[str]) -> pd.DataFrame:
    """One row per group: contacted residents, their lifetime contacts as a histogram,
    nearest-rank percentiles, the single-contact share and the top-tenth's share."""
    g_n = len(grid.groups)
    if grid.lifetime:
        group = np.concatenate([g for g, _ in grid.lifetime])
        total = np.concatenate([t for _, t in grid.lifetime]).astype(np.int64)
    else:
        group = total = np.zeros(0, np.int64)
    order = np.lexsort((-total, group))  # by group, most active first
    group, total = group[order], total[order]
    n = np.bincount(group, minlength=g_n)
    contacts = np.bincount(group, weights=total, minlength=g_n)
    start = np.r_[0, np.cumsum(n)[:-1]]
    cum = np.cumsum(total)
    before = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0)
    columns: dict[str, np.ndarray] = {"residents": n, "contacts": contacts.astype(np.int64)}
    with np.errstate(divide="ignore", invalid="ignore"):
        columns["mean"] = np.where(n > 0, contacts / n, np.nan)
        for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
            # ascending rank r (1-based) is descending position n - r within the group
            rank = np.maximum(np.ceil(q * n), 1).astype(np.int64)
            pos = np.clip(start + n - rank, 0, max(total.size - 1, 0))
            value = total[pos] if total.size else np.zeros(g_n, np.int64)
            columns[name] = np.where(n > 0, value, np.nan)
            le = np.bincount(group, weights=(total <= np.repeat(value, n)), minlength=g_n)
            ge = np.bincount(group, weights=(total >= np.repeat(value, n)), minlength=g_n)
            columns[f"{name}_n_le"] = le.astype(np.int64)
            columns[f"{name}_n_ge"] = ge.astype(np.int64)
        top = np.ceil(0.1 * n).astype(np.int64)
        top_sum = np.where(n > 0, cum[np.clip(start + top - 1, 0, max(total.size - 1, 0))]
                           - before, 0) if total.size else np.zeros(g_n)
        columns["top10_residents"] = top
        columns["top10_share"] = np.where(contacts > 0, top_sum / contacts, np.nan)
        for low, high, name in LIFETIME:
            inside = (total >= low) & (total <= (high if high is not None else total.max(
                initial=0)))
            columns[name] = np.bincount(group, weights=inside, minlength=g_n).astype(np.int64)
        columns["share_single"] = np.where(n > 0, columns["l1"] / n, np.nan)
    return pd.DataFrame({"dimension": dims, "value": vals, **columns})


