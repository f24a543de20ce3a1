"""Shared, session-cached simulation runs for the simulator tests (they are pure numpy:
each run takes about a second, so tests share them rather than re-simulating)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pyarrow as pa
import pytest

from bouquet.core.catalog import Catalog, load_catalog
from bouquet.simulation.behaviour import Simulation
from bouquet.simulation.closed_loop import PolicyRun, make_policy, run_policy
from bouquet.simulation.sinks import MemorySink

#: A fixed calendar, so the tests do not depend on today's date.
END = date(2025, 6, 2)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


def simulate_to_table(catalog: Catalog, *, residents: int, weeks: int, seed: int,
                      policy: str = "none", end: date = END
                      ) -> tuple[pa.Table, Simulation, PolicyRun]:
    sink = MemorySink()
    run, sim = run_policy(make_policy(policy, seed), catalog, residents=residents, weeks=weeks,
                          seed=seed, end=end, sink=sink)
    return sink.table(), sim, run


@pytest.fixture(scope="session")
def simulate() -> Callable[..., tuple[pa.Table, Simulation, PolicyRun]]:
    """The helper above, for tests (test modules import nothing from conftest)."""
    return simulate_to_table


@pytest.fixture(scope="session")
def end_date() -> date:
    return END


@pytest.fixture(scope="session")
def popular_run(catalog: Catalog) -> tuple[pa.Table, Simulation, PolicyRun]:
    """4,000 residents, 8 weeks, shown popular bundles: every event type occurs."""
    return simulate_to_table(catalog, residents=4000, weeks=8, seed=7, policy="popular")
