"""The interval and repeat rules of long-running commands (``compact --every``)."""

from __future__ import annotations

import threading

import pytest

from bouquet.commands.schedule import parse_interval, repeat


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("30m", 1800.0), ("6h", 21600.0),
                                               ("1d", 86400.0), (" 1.5h ", 5400.0)])
def test_intervals_in_their_units(text: str, seconds: float) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0h", "-1h", "1w", "h", "24 hours"])
def test_a_bad_interval_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="30m, 6h or 1d"):
        parse_interval(text)


def test_repeat_goes_on_after_a_failed_run_and_stops_when_asked() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def job() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("one bad night")
        if len(calls) == 4:
            stop.set()

    assert repeat(job, 0.01, stop) == 4
    assert calls == [0, 1, 2, 3]
