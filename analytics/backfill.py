"""Where a log's observed use begins, after a backfill of imported records.

A deployment may open its event log with what the city already knew — registrations,
subscriptions already held and their first payments — imported by the system (channel
``system``) and dated over the months before go-live, with no record of anyone's use
before it. The demo's simulated city starts that way (its year of history,
docs/simulation.md). Every weekly figure then steps at go-live: before it an active
resident is one who subscribed that week (one or two contacts), after it one who uses
services (p90 of contacts per active resident goes from about 2 to 10 or more). That step
is the log's history, not a change in residents' behaviour, so the operator summary names
the seam and the dashboard marks it on its weekly charts.

The seam is read from the data, not configured: the first day with a contact on a
person's channel, when the log's contacts before that day are all on the system channel.
It is a date, not a count of residents, so no small-cell rule applies to it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from bouquet.core.events import Channel

#: The channel of records the system imports (and of what Bouquet itself generates).
BACKFILL_CHANNEL = Channel.SYSTEM.value


def observed_start(daily: pd.DataFrame) -> dict[str, Any] | None:
    """The seam between backfilled records and observed use, from the unsuppressed daily
    actives by channel (:attr:`Engagement.daily`), or None when the log has no backfill
    before its first observed contact."""
    if daily.empty:
        return None
    by_channel = daily[(daily["dimension"] == "channel") & (daily["dau"] > 0)]
    is_backfill = by_channel["value"] == BACKFILL_CHANNEL
    if not is_backfill.any() or is_backfill.all():
        return None
    first_backfill = str(by_channel.loc[is_backfill, "day"].min())
    first_observed = str(by_channel.loc[~is_backfill, "day"].min())
    if first_observed <= first_backfill:
        return None
    year, week, _ = date.fromisoformat(first_observed).isocalendar()
    label = f"{year}-W{week:02d}"
    return {
        "channel": BACKFILL_CHANNEL,
        "backfill_from": first_backfill,
        "observed_from": first_observed,
        "observed_from_week": label,
        "note": (f"Before {first_observed} the log holds only records imported by the system "
                 f"(channel {BACKFILL_CHANNEL}: registrations, subscriptions already held), "
                 "no observed use. From that week, contacts per active resident count "
                 f"residents' use of services: the step at {label} is where observed use "
                 "begins, not a change in behaviour."),
    }
