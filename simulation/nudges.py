"""How simulated residents answer a nudge: contact consent, opening, opting out.

The outreach planner (:mod:`bouquet.outreach`) decides who gets which offer, on which
channel and at what time; this module is the residents' side, the assumptions the
simulator makes about people receiving those messages (docs/simulation.md, "Nudges"):

* **contact consent**: a share of residents accept messages at all
  (:attr:`NudgeParams.contact_share`); the others are never contactable;
* **open**: a nudge is opened with probability
  ``open_peak × hour_match^hour_elasticity × recent_decay^recent``, where ``hour_match`` is
  how active the resident is at the local send hour relative to their most active hour
  (their own hour profile, :data:`~bouquet.simulation.behaviour.HOUR_WEIGHTS`, the one
  their simulated uses are drawn from) and ``recent`` is the number of nudges they received
  in the 7 days before this one;
* **opt-out**: each nudge delivered withdraws contact consent with probability
  ``optout_base × optout_scale × (1 + optout_slope × recent)``: it rises with frequency. A
  resident who opts out is never contacted again in the run.

An opened nudge is, to the behaviour model, an offer shown in an app session: it goes
through the same view → click → subscribe funnel (affinity, fatigue, eligibility) as a
recommendation shown in the app, and a subscription becomes use through the same habit.
So a nudge can only raise *use* cadence by what the behaviour model already says about
shown offers; delivery and opening are exposure and response, never use.

Every parameter below was fixed before any outreach policy was run, each with its
justification; none may be tuned to a policy result (change one, say why, and re-run every
policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bouquet.simulation.behaviour import HOUR_WEIGHTS

#: Seconds in the window the ``recent`` count looks back over (the caps' 7 days).
RECENT_WINDOW_S = 7 * 86400.0


@dataclass(frozen=True)
class NudgeParams:
    """The residents' side of outreach (see the module docstring)."""

    #: Share of residents with contact consent. Published push opt-in rates are around
    #: half of iOS users and most Android users (industry benchmarks put the average near
    #: 60%); a city app asking explicitly gets no more than that (assumption).
    contact_share: float = 0.6
    #: P(open) of a nudge sent at the resident's most active hour with no other nudge in
    #: the last 7 days. Push notifications' direct open rates are reported at a few
    #: percent on average (industry benchmarks: about 2–8% by sector); a well-timed
    #: message with no recent one is at the upper end of that range.
    open_peak: float = 0.06
    #: How P(open) follows the hour match (1: proportional to how active the resident is
    #: at that hour). Assumption: a message arriving when one is not using the phone's
    #: apps is mostly swiped away unread.
    hour_elasticity: float = 1.0
    #: P(open) is multiplied by this for each nudge received in the 7 days before
    #: (message fatigue; assumption: a second message in a week is opened three quarters as
    #: often as the first).
    recent_decay: float = 0.75
    #: P(opt-out) of a nudge with no other in the last 7 days. Email campaigns' average
    #: unsubscribe rate per send is 0.1–0.3% (e-mail marketing benchmarks publish about
    #: 0.26%); a push or SMS from a city is no less intrusive (assumption).
    optout_base: float = 0.0025
    #: Each nudge received in the 7 days before adds this many times the base: frequency is
    #: what people give as the first reason to turn notifications off (surveys of app
    #: users), so the risk grows with it (assumption: linearly).
    optout_slope: float = 1.0
    #: Multiplies the opt-out probability: 1 is the stated assumption; the sensitivity runs
    #: use 0.5 and 2.
    optout_scale: float = 1.0
    #: Seconds between the send time and the app session an opened nudge starts (reading
    #: a notification is not instantaneous; the order of events is all that matters).
    open_delay_s: int = 120


def hour_match(local_hour: np.ndarray) -> np.ndarray:
    """How active a resident is at each local hour relative to their most active hour
    (0–1], from the hour profile their simulated contacts are drawn from."""
    return HOUR_WEIGHTS[np.asarray(local_hour, dtype=np.int64)] / HOUR_WEIGHTS.max()


def open_probability(local_hour: np.ndarray, recent: np.ndarray, params: NudgeParams
                     ) -> np.ndarray:
    """P(open) of nudges sent at ``local_hour`` to residents who received ``recent`` others
    in the 7 days before."""
    match = hour_match(local_hour) ** params.hour_elasticity
    return params.open_peak * match * params.recent_decay ** np.asarray(recent, float)


def optout_probability(recent: np.ndarray, params: NudgeParams) -> np.ndarray:
    """P(withdrawing contact consent) on receiving a nudge, after ``recent`` others in the
    7 days before."""
    p = params.optout_base * params.optout_scale * (1.0 + params.optout_slope
                                                    * np.asarray(recent, float))
    return np.clip(p, 0.0, 1.0)


def recent_counts(sent_before: list[list[float]], send_at: np.ndarray) -> np.ndarray:
    """Nudges each resident received in the 7 days before ``send_at`` (one list of earlier
    send instants per nudge)."""
    return np.array([sum(1 for t in earlier if when - RECENT_WINDOW_S <= t < when)
                     for earlier, when in zip(sent_before, send_at.tolist(), strict=True)],
                    dtype=np.int64)


def draw_contact(rng: np.random.Generator, n: int, params: NudgeParams) -> np.ndarray:
    """Which of ``n`` residents start with contact consent."""
    return rng.random(n) < params.contact_share


def respond(rng: np.random.Generator, local_hour: np.ndarray, recent: np.ndarray,
            params: NudgeParams) -> tuple[np.ndarray, np.ndarray]:
    """(opened, opted out) for each delivered nudge; the two are drawn independently (a
    resident may read a message and still turn messages off)."""
    opened = rng.random(len(recent)) < open_probability(local_hour, recent, params)
    opted_out = rng.random(len(recent)) < optout_probability(recent, params)
    return opened, opted_out


class Recipients:
    """The residents' side of outreach over one run: who accepts messages, what each
    received and when, and their replies (see the module docstring). Every policy of a
    seed draws the same contact consent (the stream is the seed's), so comparisons are
    paired."""

    def __init__(self, n: int, rng: np.random.Generator, params: NudgeParams,
                 timezone: str) -> None:
        self.params = params
        self.timezone = timezone
        self.rng = rng
        self.contact = draw_contact(rng, n, params)
        self.contactable_at_start = int(self.contact.sum())
        self._sent: dict[int, list[float]] = {}
        #: every delivered nudge: resident row, send instant (epoch s), contact consent when
        #: it was planned, opened, opted out
        self.log: list[pd.DataFrame] = []

    def receive(self, rows: np.ndarray, send_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Deliver nudges (resident rows, send instants in epoch seconds, in time order per
        resident): (opened, opted out) per nudge; an opt-out withdraws contact consent."""
        recent = recent_counts([self._sent.get(int(r), []) for r in rows], send_at)
        hours = pd.to_datetime(send_at, unit="s", utc=True).tz_convert(self.timezone).hour
        opened, opted_out = respond(self.rng, np.asarray(hours), recent, self.params)
        self.log.append(pd.DataFrame({"row": rows, "send_at": send_at,
                                      "contact": self.contact[rows], "recent": recent,
                                      "opened": opened, "opted_out": opted_out}))
        for row, when in zip(rows.tolist(), send_at.tolist(), strict=True):
            self._sent.setdefault(row, []).append(when)
        self.contact[rows[opted_out]] = False
        return opened, opted_out

    def delivered(self) -> pd.DataFrame:
        """Every delivered nudge so far (:attr:`log`, one frame)."""
        if not self.log:
            return pd.DataFrame(columns=["row", "send_at", "contact", "recent", "opened",
                                         "opted_out"])
        return pd.concat(self.log, ignore_index=True)

    def figures(self, weeks: int) -> dict[str, float]:
        """The run's outreach figures: nudges and opens per contactable resident and week,
        the open rate, and opt-outs per month as a share of the residents contactable at
        the start (a month: 30.44 days)."""
        log = self.delivered()
        base = max(self.contactable_at_start, 1)
        months = 7 * max(weeks, 1) / 30.44
        nudges = len(log)
        return {
            "contactable_at_start": float(self.contactable_at_start),
            "nudges": float(nudges),
            "nudged_residents": float(log["row"].nunique()),
            "nudges_per_contactable_week": nudges / base / max(weeks, 1),
            "open_rate": float(log["opened"].mean()) if nudges else 0.0,
            "optouts": float(log["opted_out"].sum()),
            "optout_rate_per_month": float(log["opted_out"].sum()) / base / months,
        }
