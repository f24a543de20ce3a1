"""Run the next step of a sequence while the caller works on the current one.

A plan alternates between waiting for Redis (a pipeline of script calls: the time is the
server's) and computing on what came back (decoding, candidates, draws: the time is this
process's). Done one after the other, the two CPUs of a small machine take turns; with the
next call already in flight while the current reply is worked on, they work at once. The
calls are reads or writes whose results do not depend on the work done meanwhile, so the
outcome is the same as calling them in turn; only the order in time changes.

One call at most runs ahead (one worker thread): enough to keep both sides busy, and the
memory held is one extra reply. The worker waits on a socket most of the time, which
releases the GIL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def one_ahead(calls: Iterable[Callable[[], T]]) -> Iterator[T]:
    """The results of ``calls`` in order; call k + 1 runs in a worker thread while the
    caller handles result k (the single worker runs them in order, never two at once).
    An exception of a call is raised where its result is taken; leaving early waits for
    the call in flight."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outreach-ahead") as pool:
        pending: Future[T] | None = None
        for call in calls:
            submitted = pool.submit(call)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()
