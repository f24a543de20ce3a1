"""The soak's CPU reading: cores a process used between two samples."""

from __future__ import annotations

import pytest

from bouquet.benchmarks.soak import cores_used


def test_cores_are_cpu_seconds_over_wall_seconds_between_the_nearest_samples() -> None:
    ts = [0.0, 10.0, 20.0, 30.0]
    cpu = [1.0, 6.0, 16.0, 31.0]  # 0.5, then 1.0, then 1.5 cores
    assert cores_used(ts, cpu, 0.0, 10.0) == pytest.approx(0.5)
    assert cores_used(ts, cpu, 19.0, 31.0) == pytest.approx(1.5)
    assert cores_used(ts, cpu, 0.0, 30.0) == pytest.approx(1.0)


def test_a_missing_sample_or_an_empty_span_gives_no_figure() -> None:
    ts = [0.0, 10.0, 20.0]
    assert cores_used(ts, [None, 5.0, 9.0], 0.0, 20.0) is None
    assert cores_used(ts, [0.0, 5.0, 9.0], 10.0, 11.0) is None
