"""``one_ahead``: results in order, the next call running while the caller works, never
two calls at once, a call's failure raised where its result is taken."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from bouquet.outreach.overlap import one_ahead


def test_results_in_order_with_the_next_call_in_flight() -> None:
    started: list[int] = []
    running = threading.Semaphore(1)
    second_started = threading.Event()

    def call(k: int) -> Callable[[], int]:
        def run() -> int:
            assert running.acquire(blocking=False), "two calls at once"
            try:
                started.append(k)
                if k == 1:
                    second_started.set()
                time.sleep(0.01)
                return k * k
            finally:
                running.release()
        return run

    results = []
    for value in one_ahead(call(k) for k in range(6)):
        if value == 0:  # the caller works on result 0 while call 1 runs
            assert second_started.wait(5)
        results.append(value)
    assert results == [k * k for k in range(6)]
    assert started == list(range(6))


def test_a_failed_call_raises_where_its_result_is_taken() -> None:
    def fail() -> int:
        raise ValueError("boom")

    taken = []
    with pytest.raises(ValueError, match="boom"):
        for value in one_ahead([lambda: 1, fail, lambda: 3]):
            taken.append(value)
    assert taken == [1]


def test_no_calls_no_results() -> None:
    assert list(one_ahead([])) == []
