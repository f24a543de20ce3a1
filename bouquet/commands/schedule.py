"""Long-running commands: stop on SIGTERM or Ctrl-C, and repeat a job at a fixed interval.

A command that runs until stopped (``bouquet outreach run``, ``bouquet compact --every``)
finishes the job in hand and exits cleanly on either signal, so a process manager can stop
it at any time without leaving a half-written file behind.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_interval(text: str) -> float:
    """Seconds in an interval such as ``90``, ``30m``, ``6h`` or ``1d`` (no unit: seconds).

    Raises ValueError with the accepted forms for anything else, or for zero.
    """
    found = _INTERVAL.match(text)
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"not an interval: {text!r} (use e.g. 90, 30m, 6h or 1d)")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the handlers replace the default exit)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def repeat(job: Callable[[], None], every_s: float, stop: threading.Event) -> int:
    """Run ``job`` now and then every ``every_s`` seconds (start to start; a run longer than
    the interval is followed at once by the next) until ``stop`` is set; how many runs.

    A run that raises is logged and the schedule goes on: one failed night must not end
    the compactions that bound how long erased rows stay in the files.
    """
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            job()
        except Exception:
            log.exception("scheduled run failed; the next one is in %.0f s", every_s)
        runs += 1
        stop.wait(max(0.0, every_s - (time.monotonic() - started)))
    return runs
