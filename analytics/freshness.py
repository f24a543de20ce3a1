"""When an operator figure cache must read its files again.

The operator API answers many requests from one read of the event log (and the outreach
ledger); a read is repeated only when the files changed. Listing and stating every file on
each request would cost more than the answer, so the files are looked at no more often than
every ``ttl_s`` seconds: a figure may lag a new file by that long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path


def file_states(paths: Iterable[Path], root: Path | None = None) -> list[tuple[str, int, int]]:
    """(name, size, mtime in ns) of each file still there; a file compaction replaced
    between listing and stat is left out. Names are relative to ``root`` when given."""
    out: list[tuple[str, int, int]] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path.relative_to(root) if root else path), st.st_size, st.st_mtime_ns))
    return out


class ChangeWatch:
    """Rebuilds a cache when it must: always when it holds nothing, otherwise only when
    ``fingerprint()`` — looked at most every ``ttl_s`` — differs from the one of the last
    successful rebuild (a rebuild that raised is tried again at the next look). Not
    thread-safe: its owner calls it under the lock of its cache."""

    def __init__(self, fingerprint: Callable[[], tuple], ttl_s: float,
                 clock: Callable[[], float]) -> None:
        self.fingerprint, self.ttl_s, self._clock = fingerprint, ttl_s, clock
        self._seen: tuple | None = None
        self._checked_at = -float("inf")

    def refresh(self, holding: bool, rebuild: Callable[[], None]) -> None:
        """Call ``rebuild`` if the cache (``holding`` data or not) is out of date."""
        now = self._clock()
        if holding and now - self._checked_at < self.ttl_s:
            return
        found = self.fingerprint()
        self._checked_at = now
        if holding and found == self._seen:
            return
        rebuild()
        self._seen = found
