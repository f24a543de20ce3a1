"""The demo city's residents: behaviour model, closed loop and real-log replay.

Public API (see docs/simulation.md):

* :class:`Simulation` / :class:`BehaviourParams` — the week-by-week behaviour engine;
* :func:`run_policy`, :func:`compare`, :data:`CADENCES`, :func:`register_policy` — the
  closed loop and the cadence comparison of policies;
* :class:`Policy` (protocol: ``recommend(resident_ids, k) -> list[list[str]]``) and its
  implementations :class:`NoRecommendations`, :class:`PopularPolicy`,
  :class:`RandomPolicy`, :class:`OraclePolicy`, :class:`ScoringPolicy`,
  :class:`HttpPolicy`;
* :func:`simulate`, :func:`replay_valleybike` — one-call runs into the event log or Kafka;
* :func:`cadence_statistics`, :func:`valleybike_statistics`, :data:`TOLERANCES` — the
  calibration against the real bike-share log.
"""

from bouquet.simulation.behaviour import BehaviourParams, Simulation
from bouquet.simulation.calibration import (
    TOLERANCES,
    CadenceStats,
    cadence_statistics,
    simulated_statistics,
    valleybike_statistics,
)
from bouquet.simulation.closed_loop import (
    CADENCES,
    Comparison,
    PolicyRun,
    cadence_shares,
    compare,
    make_policy,
    register_policy,
    run_policy,
)
from bouquet.simulation.policies import (
    BasePolicy,
    CityView,
    HttpPolicy,
    NoRecommendations,
    OraclePolicy,
    Policy,
    PopularPolicy,
    RandomPolicy,
    ScoringPolicy,
)
from bouquet.simulation.runner import replay_valleybike, simulate

__all__ = [
    "CADENCES", "TOLERANCES", "BasePolicy", "BehaviourParams", "CadenceStats", "CityView",
    "Comparison", "HttpPolicy", "NoRecommendations", "OraclePolicy", "Policy", "PolicyRun",
    "PopularPolicy", "RandomPolicy", "ScoringPolicy", "Simulation", "cadence_shares",
    "cadence_statistics", "compare", "make_policy", "register_policy", "replay_valleybike",
    "run_policy", "simulate", "simulated_statistics", "valleybike_statistics",
]
