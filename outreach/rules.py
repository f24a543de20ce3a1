"""The contact rules, per resident: settle past nudges, pause, and the earliest moment the
next nudge may be sent.

Every rule on frequency becomes one number per resident, the earliest send instant, so that
the planner can never break one whatever send time it then picks:

* **minimum gap**: ``latest send + gap``;
* **at most N in any 7 days**: the N-th latest send + 7 days (the new nudge's window then
  holds at most N − 1 others);
* **pause**: after K nudges in a row not opened, nothing before ``paused_until``;
* **not in the past**: ``now``.

A nudge is *settled* once its response window has passed: opened (its recommendation id is
on an ``open`` event) resets the streak of nudges not opened, otherwise the streak grows.
When the streak reaches K the resident is paused for W weeks and the streak starts again
from zero, so the pause is for K nudges ignored, not for one more after it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bouquet.core.outreach import ResidentRecord

WEEK_S = 7 * 86400.0


@dataclass(frozen=True)
class ContactRules:
    max_per_week: int = 2
    min_gap_s: float = 48 * 3600.0
    pause_after: int = 3
    pause_s: float = 4 * WEEK_S
    response_window_s: float = 48 * 3600.0

    @property
    def keep_s(self) -> float:
        """How long a send time matters for the caps."""
        return max(WEEK_S, self.min_gap_s)


def settle(record: ResidentRecord, opened: set[str] | frozenset[str], now: float,
           rules: ContactRules) -> tuple[ResidentRecord, bool, bool]:
    """The record after settling the nudges whose response window has passed, forgetting
    send times no rule needs any more, and pausing when the streak reaches K. Returns
    (record, changed, paused now)."""
    changed = False
    paused_now = False
    streak = record.streak
    paused_until = record.paused_until
    pending = []
    for when, reference in sorted(record.pending):
        if when + rules.response_window_s > now:
            pending.append((when, reference))
            continue
        changed = True
        if reference in opened:
            streak = 0
            continue
        streak += 1
        if streak >= rules.pause_after:
            paused_until = max(paused_until, now + rules.pause_s)
            paused_now = True
            streak = 0
    sent = [t for t in record.sent if t > now - rules.keep_s]
    changed |= len(sent) != len(record.sent)
    if paused_until and paused_until <= now:
        paused_until, changed = 0.0, True
    out = ResidentRecord(sent=sent, pending=pending, streak=streak, paused_until=paused_until)
    return out, changed, paused_now


def earliest_send(records: Sequence[ResidentRecord | None], now: float, rules: ContactRules
                  ) -> np.ndarray:
    """The earliest instant (epoch s) each resident's next nudge may be sent (a resident
    without a record: now)."""
    out = np.full(len(records), float(now))
    n = rules.max_per_week
    for i, record in enumerate(records):
        if record is None or (not record.sent and not record.paused_until):
            continue
        sent = sorted(record.sent, reverse=True)
        limit = now
        if sent:
            limit = max(limit, sent[0] + rules.min_gap_s)
        if len(sent) >= n:
            limit = max(limit, sent[n - 1] + WEEK_S)
        out[i] = max(limit, record.paused_until)
    return out


def with_nudge(record: ResidentRecord | None, send_at: float, recommendation_id: str
               ) -> ResidentRecord:
    """The record once a nudge is planned (``record`` is the plan's own, updated in place;
    None: a first record)."""
    if record is None:
        return ResidentRecord(sent=[send_at], pending=[(send_at, recommendation_id)])
    record.sent.append(send_at)
    record.pending.append((send_at, recommendation_id))
    return record
