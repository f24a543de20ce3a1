"""One-call entry points used by the CLI and the benchmarks: simulate a city into the
event log or Kafka, and replay the ValleyBike log."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

from bouquet.core.catalog import load_catalog
from bouquet.core.recommendation import RecommendationIds
from bouquet.core.settings import Settings
from bouquet.simulation.behaviour import BehaviourParams
from bouquet.simulation.calibration import CadenceStats, simulated_statistics
from bouquet.simulation.closed_loop import make_policy, run_policy
from bouquet.simulation.nudges import NudgeParams
from bouquet.simulation.replay import ReplayCounts, pacing_offsets, read_trips, replay_table
from bouquet.simulation.sinks import EventLogSink, KafkaSink, MemorySink

log = logging.getLogger(__name__)

Destination = Literal["eventlog", "kafka", "memory"]


def _progress_bar(enabled: bool, desc: str, total: int | None = None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, disable=not enabled,
                mininterval=0.5, smoothing=0.1)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class SimulationSummary:
    residents: int
    weeks: int
    seed: int
    policy: str
    start: date
    end: date
    to: str
    destination: str
    events: int
    events_by_type: dict[str, int]
    seconds: float
    peak_rss_mb: float
    run_tag: str
    residents_path: str | None = None
    hidden_path: str | None = None
    cadence: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] | None = None
    #: with outreach: what the planner and the gateway did, and the residents' side
    outreach: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        return out


def simulate(settings: Settings, *, residents: int, weeks: int, seed: int,
             to: Destination = "eventlog", rate: float | None = None, end: date | None = None,
             policy: str = "none", intensity: float = 1.0,
             params: BehaviourParams | None = None, progress: bool = True,
             residents_path: Path | None = None, hidden_path: Path | None = None,
             save_residents: bool = True, calibrate: bool = False,
             from_week: int = 0, until_week: int | None = None,
             api_url: str | None = None, outreach: bool = False
             ) -> tuple[SimulationSummary, MemorySink | None]:
    """Simulate ``residents`` residents for ``weeks`` weeks (ending yesterday unless
    ``end``) into the event log (``settings.event_log_path``), Kafka
    (``settings.topic_events``) or memory.

    Also writes the residents' public attributes (Parquet) and their hidden tastes
    (``.npz``, for closed-loop studies; never for training) under
    ``settings.state_dir/simulation/`` unless paths are given. ``intensity`` multiplies
    every resident's activity (load tests; it leaves the calibration).

    ``until_week`` stops early and ``from_week`` resumes such a run (same seed, size and
    ``end``; see :func:`~bouquet.simulation.closed_loop.run_policy`). With ``api_url`` the
    residents are answered by a running serving API (policy ``api``: its own ids, one GET
    per resident shown something); to Kafka, each week's events are then waited for until
    ingestion applied them, so the next week's answers know what residents did.
    ``outreach`` (with ``api_url``) also runs the deployment's outreach planner every
    simulated day, the loop acting as the messaging gateway
    (:class:`~bouquet.simulation.gateway.GatewayOutreach`).
    """
    catalog = load_catalog(settings.catalog_path)
    params = params or BehaviourParams()
    if intensity != 1.0:
        params = replace(params, base_rate=params.base_rate * intensity)
    bar = _progress_bar(progress, f"simulate → {to}")
    if to == "eventlog":
        sink: Any = EventLogSink(settings.event_log_path, progress=bar.update)
        destination = str(settings.event_log_path)
    elif to == "kafka":
        sink = KafkaSink(settings, rate=rate, progress=bar.update)
        destination = f"{settings.kafka_bootstrap_servers}/{settings.topic_events}"
    elif to == "memory":
        sink = MemorySink()
        destination = "memory"
    else:
        raise ValueError(f"unknown destination {to!r}")
    started = time.perf_counter()
    if outreach and api_url is None:
        raise ValueError("outreach needs a running deployment (api_url)")
    chosen: Any = (make_policy(policy, seed) if api_url is None
                   else _api_policy(settings, api_url, outreach))
    waits = api_url is not None and isinstance(sink, KafkaSink)

    def on_week(week: int, events: int) -> None:
        bar.set_postfix_str(f"week {week + 1}/{weeks}")
        if waits:
            sink.wait_applied(settings)

    try:
        run, sim = run_policy(chosen, catalog, residents=residents, weeks=weeks, seed=seed,
                              end=end, params=params, sink=sink, on_week=on_week,
                              from_week=from_week, until_week=until_week,
                              recommendation_ids=RecommendationIds.for_settings(settings))
        if to == "memory":
            bar.update(sink.events)
    finally:
        sink.close()
        bar.close()
        if api_url is not None:
            chosen.close()
    if save_residents:
        folder = settings.state_dir / "simulation"
        residents_path = residents_path or folder / "residents.parquet"
        hidden_path = hidden_path or folder / "hidden-tastes.npz"
        sim.residents.write_parquet(residents_path, catalog)
        sim.residents.save_hidden(hidden_path, sim.world)
    else:
        residents_path = hidden_path = None
    summary = SimulationSummary(
        residents=residents, weeks=weeks, seed=seed, policy=chosen.name, start=sim.start,
        end=run.end or sim.start, to=to, destination=destination, events=run.events,
        events_by_type=run.events_by_type, seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(), run_tag=sim.run_tag,
        residents_path=str(residents_path) if residents_path else None,
        hidden_path=str(hidden_path) if hidden_path else None, cadence=run.shares,
        outreach={**run.notes.get("outreach", {}), **run.outreach} if outreach else None)
    memory = sink if isinstance(sink, MemorySink) else None
    if calibrate and memory is not None:
        stats: CadenceStats = simulated_statistics(memory.table(), params.timezone,
                                                   int(sim.day_start_us[0]), sim.end_us)
        summary.calibration = stats.as_dict()
    return summary, memory


def _api_policy(settings: Settings, api_url: str, outreach: bool) -> Any:
    """The serving API at ``api_url`` as the residents' policy, with an app key; with
    ``outreach``, the deployment's planner too, the loop being its messaging gateway."""
    from bouquet.simulation.policies import HttpPolicy

    keys = {role: next((k for k, r in settings.api_keys.items() if r == role), None)
            for role in ("app", "gateway")}
    policy = HttpPolicy(api_url, api_key=keys["app"], name="api")
    if not outreach:
        return policy
    from bouquet.simulation.gateway import GatewayOutreach

    if keys["gateway"] is None:
        raise ValueError("outreach needs a gateway key (BOUQUET_API_KEYS)")
    return GatewayOutreach(policy, settings, api_url, gateway_key=keys["gateway"],
                           open_delay_s=NudgeParams().open_delay_s)


@dataclass
class ReplaySummary:
    path: str
    to: str
    destination: str
    counts: ReplayCounts
    events: int
    uses: int
    profiles: int
    consents: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts.as_dict()
        return out


def replay_valleybike(settings: Settings, path: Path, *, to: Destination = "kafka",
                      speedup: float | None = None, limit: int | None = None,
                      keep_short: bool = False, assign_neighbourhoods: bool = False,
                      grant_consent: bool = False, progress: bool = True
                      ) -> tuple[ReplaySummary, MemorySink | None]:
    """Replay the trips of ``path`` (see :mod:`bouquet.simulation.replay`) to Kafka (paced
    ``speedup`` times faster than real time, or as fast as possible), the event log, or
    memory."""
    started = time.perf_counter()
    catalog = load_catalog(settings.catalog_path)
    trips = read_trips(path, keep_short=keep_short, limit=limit)
    table = replay_table(trips, catalog, settings.pseudonym_secret,
                         assign_neighbourhoods=assign_neighbourhoods,
                         grant_consent=grant_consent)
    bar = _progress_bar(progress, f"replay → {to}", total=table.num_rows)
    memory = None
    try:
        if to == "kafka":
            sink = KafkaSink(settings, progress=bar.update)
            try:
                sink(table, offsets=pacing_offsets(table, speedup))
            finally:
                sink.close()
            destination = f"{settings.kafka_bootstrap_servers}/{settings.topic_events}"
        elif to == "eventlog":
            EventLogSink(settings.event_log_path, progress=bar.update)(table)
            destination = str(settings.event_log_path)
        elif to == "memory":
            memory = MemorySink()
            memory(table)
            destination = "memory"
        else:
            raise ValueError(f"unknown destination {to!r}")
    finally:
        bar.close()
    types = table["type"].to_numpy(zero_copy_only=False)
    summary = ReplaySummary(str(path), to, destination, trips.counts, table.num_rows,
                            int((types == "use").sum()), int((types == "profile").sum()),
                            int((types == "consent").sum()), time.perf_counter() - started)
    return summary, memory
