"""How good each policy's lists are, judged by the simulator's own truth, in seconds.

``bouquet simulate compare`` measures what a policy does to cadence over twelve weeks of a
closed loop: the question that matters, but it takes a quarter of an hour and its
confidence intervals are a point wide, so it cannot say *why* a policy falls short, nor
rank ten variants of a model in an afternoon. This module asks a narrower question
cheaply: at one moment, how much routine would each policy's list create if shown once?

For every consenting resident, a bundle's worth is :meth:`Simulation.expected_gain
<bouquet.simulation.behaviour.Simulation.expected_gain>` — P(click) × P(subscribe) × the
daily use rate the subscription becomes, from the hidden tastes, the current fatigue and
the same functions the engine draws with — and a list's worth is the sum over its first
``k`` bundles. Every policy answers on one state: the city is simulated under the popular
lists for ``week`` weeks, then each policy observes that same log and answers as it would
at the start of the next week (the model policy trains, publishes and serves in process).
The popular lists and the consent-respecting oracle bracket the figures.

It reads the hidden tastes to *judge*, as the oracle does to choose, so its figures are a
diagnostic for tuning on seeds kept out of evaluations (docs/simulation.md), never
evidence of a policy's effect: it leaves out what the loop adds — who is exposed, fatigue
built by repeats, rotation, what exploration learns, how long a habit lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa

from bouquet.core.catalog import Catalog
from bouquet.simulation.closed_loop import make_policy, run_policy
from bouquet.simulation.policies import CityView, Policy, PopularPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListQuality:
    """One policy's lists on one state: mean expected daily use rate added per consenting
    resident by the top ``k`` bundles and by the first alone."""

    policy: str
    top_k: float
    top_1: float
    residents: int
    seconds: float


def list_gain(gain: np.ndarray, bundle_ids: Sequence[str], lists: Sequence[Sequence[str]],
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per list (row of ``gain``, the residents'
    :meth:`~bouquet.simulation.behaviour.Simulation.expected_gain` over
    ``bundle_ids``): the expected gain of its first ``k`` bundles, and of the first alone
    (0 for an empty list; unknown bundle ids are worth nothing)."""
    index = {b: i for i, b in enumerate(bundle_ids)}
    top_k, top_1 = np.zeros(len(gain)), np.zeros(len(gain))
    for i, answer in enumerate(lists):
        worth = [float(gain[i, index[b]]) if b in index else 0.0 for b in list(answer)[:k]]
        top_k[i] = sum(worth)
        top_1[i] = worth[0] if worth else 0.0
    return top_k, top_1


def judge(policies: dict[str, Callable[[], Policy]], catalog: Catalog, *, residents: int,
          seed: int, week: int, weeks: int = 12, k: int = 3, end: date | None = None
          ) -> list[ListQuality]:
    """The list quality of every policy (built by its factory) on the state after ``week``
    weeks of popular lists, of a ``weeks``-week window (the city ``simulate compare`` runs
    with the same seed, size and ``end``; see the module docstring)."""
    if not 1 <= week < weeks:
        raise ValueError(f"week must be within 1..{weeks - 1}, not {week}")
    tables: list[pa.Table] = []
    _, sim = run_policy(PopularPolicy(), catalog, residents=residents, weeks=weeks,
                        seed=seed, end=end, until_week=week, sink=tables.append)
    log_so_far = pa.concat_tables(tables)
    rows = np.flatnonzero(sim.consent & (sim.erased_at == np.iinfo(np.int64).max))
    ids = [str(r) for r in sim.residents.ids[rows]]
    when = datetime.fromtimestamp(int(sim.day_start_us[7 * week]) / 1e6, UTC)
    city = CityView(catalog, sim.residents.public_table(catalog), sim)
    gain = sim.expected_gain(rows)  # one state: every policy's lists are judged on it
    out = []
    for name, factory in policies.items():
        started = time.perf_counter()
        policy = factory()
        start_hook = getattr(policy, "start", None)
        if start_hook is not None:
            start_hook(city)
        observe = getattr(policy, "observe", None)
        if observe is not None:
            observe(log_so_far)
        before_week = getattr(policy, "before_week", None)
        if before_week is not None:
            before_week(when)
        lists = policy.recommend(ids, k)
        top_k, top_1 = list_gain(gain, catalog.bundle_ids, lists, k)
        out.append(ListQuality(name, float(top_k.mean()), float(top_1.mean()), len(rows),
                               time.perf_counter() - started))
        log.info("list quality of %s: %.5f (top %d), %.5f (first)", name, top_k.mean(), k,
                 top_1.mean())
    return out


def default_factories(names: Sequence[str], seed: int) -> dict[str, Callable[[], Policy]]:
    """Policies by name as ``simulate compare`` knows them (:func:`make_policy`)."""
    return {name: (lambda name=name: make_policy(name, seed)) for name in names}
