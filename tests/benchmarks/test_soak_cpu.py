"""The soak's CPU reading: cores a process used between two samples."""

from __future__ import annotations

import pytest

from bouquet.benchmarks.soak import Reading, cores_used


def _readings(cpu_s: list[float | None], pids: list[int] | None = None) -> list[Reading | None]:
    pids = pids or [7] * len(cpu_s)
    return [None if c is None else Reading(pid, 100.0, c)
            for c, pid in zip(cpu_s, pids, strict=True)]


def test_cores_are_cpu_seconds_over_wall_seconds_between_the_nearest_samples() -> None:
    ts = [0.0, 10.0, 20.0, 30.0]
    cpu = _readings([1.0, 6.0, 16.0, 31.0])  # 0.5, then 1.0, then 1.5 cores
    assert cores_used(ts, cpu, 0.0, 10.0) == pytest.approx(0.5)
    assert cores_used(ts, cpu, 19.0, 31.0) == pytest.approx(1.5)
    assert cores_used(ts, cpu, 0.0, 30.0) == pytest.approx(1.0)


def test_a_missing_sample_or_an_empty_span_gives_no_figure() -> None:
    ts = [0.0, 10.0, 20.0]
    assert cores_used(ts, _readings([None, 5.0, 9.0]), 0.0, 20.0) is None
    assert cores_used(ts, _readings([0.0, 5.0, 9.0]), 10.0, 11.0) is None


def test_a_restarted_process_is_not_read_against_the_one_it_replaced() -> None:
    ts = [0.0, 10.0, 20.0]
    cpu = _readings([50.0, 0.5, 5.5], pids=[7, 8, 8])  # SIGKILLed and restarted before 10 s
    assert cores_used(ts, cpu, 0.0, 20.0) is None
    assert cores_used(ts, cpu, 10.0, 20.0) == pytest.approx(0.5)
