"""Outreach's shared vocabulary: the holdout, quiet hours, the per-resident record in Redis
and the plan ledger — what the planner (:mod:`bouquet.outreach`), the operator figures
(:mod:`bouquet.analytics.outreach`) and the privacy tools (export) all read, defined once.

* **Holdout**: a stable keyed hash of the resident id and a salt puts a share of residents
  in the holdout, never nudged; the planner and the lift figures call the same function.
* **Quiet hours**: ``HH:MM-HH:MM`` local time, wrapping past midnight; the start minute is
  quiet, the end minute is not.
* **The resident's record** (``Keys.outreach``, a Redis hash): send times of recent nudges
  (caps and the minimum gap), nudges whose outcome is not settled yet (with their
  recommendation ids), the number of nudges in a row not opened, the end of a pause. It is a
  per-resident key, so erasure deletes it with the others.
* **The plan ledger**: one Parquet file per planned day, one row per nudge, under
  ``STATE_DIR/outreach/ledger/date=YYYY-MM-DD/plan.parquet``. Rows carry no resident id:
  what links a nudge to a resident is its random message and recommendation ids, which only
  the resident's events and Redis record hold — and erasure removes those — so the ledger
  keeps an unlinkable record of what was sent for the operators' counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bouquet.core.eventlog import fsync_dir
from bouquet.core.recommendation import RecommendationIds
from bouquet.core.statefiles import create_private, open_private, private_dir

#: The experiment variant of outreach's recommendation ids (``<model_version>.outreach.<t>``).
OUTREACH_VARIANT = "outreach"
#: Version of the message JSON on the outreach topic.
MESSAGE_SCHEMA_VERSION = 1
_QUIET = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")
MINUTES_PER_DAY = 1440


# --- holdout -------------------------------------------------------------------------------
def outreach_references(references: Iterable[str | None], ids: RecommendationIds
                        ) -> np.ndarray:
    """Which of ``references`` (recommendation ids echoed in events) are ids of nudges this
    deployment minted. Any client may echo any id, so only ids that verify count as a
    nudge's outcome: a made-up ``….outreach.…`` id neither inflates the operators' figures
    nor teaches the planner. One verification per distinct id."""
    values = np.asarray(list(references), dtype=object)
    distinct = {r for r in set(values.tolist()) if isinstance(r, str)}
    ours = set()
    for reference in distinct:
        found = ids.verify(reference)
        if found is not None and found.variant == OUTREACH_VARIANT:
            ours.add(reference)
    return np.fromiter((r in ours for r in values.tolist()), dtype=bool, count=len(values))


def holdout_points(resident_ids: Iterable[str], salt: str) -> np.ndarray:
    """Each resident's stable point in [0, 1): a keyed hash of the id and the salt (changing
    the salt reshuffles everyone)."""
    key = salt.encode()[:64]
    out = [int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8, key=key).digest(),
                          "big") for rid in resident_ids]
    return np.asarray(out, dtype=np.uint64).astype(np.float64) / 2.0**64


def in_holdout(resident_ids: Iterable[str], salt: str, share: float) -> np.ndarray:
    """Which residents are in the holdout (never nudged): point < share."""
    return holdout_points(resident_ids, salt) < share


# --- quiet hours ---------------------------------------------------------------------------
def quiet_window(text: str) -> tuple[int, int]:
    """(start, end) minutes of the day of ``HH:MM-HH:MM``; raises ValueError."""
    found = _QUIET.match(text or "")
    if not found:
        raise ValueError(f"quiet hours {text!r} are not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in found.groups())
    return h1 * 60 + m1, h2 * 60 + m2


def quiet_minutes(text: str) -> np.ndarray:
    """(1440,) bool: True for each minute of the day inside the quiet hours. A window whose
    start equals its end is empty (nothing quiet)."""
    start, end = quiet_window(text)
    minutes = np.arange(MINUTES_PER_DAY)
    if start <= end:
        return (minutes >= start) & (minutes < end)
    return (minutes >= start) | (minutes < end)


# --- the resident's record in Redis --------------------------------------------------------
@dataclass
class ResidentRecord:
    """The planner's record of one resident (``Keys.outreach``), decoded."""

    sent: list[float] = field(default_factory=list)  # epoch s of recent nudges' send times
    pending: list[tuple[float, str]] = field(default_factory=list)  # (send epoch, rec id)
    streak: int = 0  # nudges in a row not opened
    paused_until: float = 0.0  # epoch s; 0: not paused

    def encode(self) -> dict[str, str]:
        return {"sent": " ".join(f"{t:.0f}" for t in sorted(self.sent)),
                "pending": " ".join(f"{t:.0f}/{r}" for t, r in sorted(self.pending)),
                "streak": str(int(self.streak)), "paused_until": f"{self.paused_until:.0f}"}

    def as_dict(self) -> dict[str, Any]:
        return {"sent": sorted(self.sent),
                "pending": [{"send_at": t, "recommendation_id": r}
                            for t, r in sorted(self.pending)],
                "streak": self.streak, "paused_until": self.paused_until or None}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode_record(raw: dict[Any, Any] | None) -> ResidentRecord:
    """A ``Keys.outreach`` hash reply (bytes or str) as a :class:`ResidentRecord`; unknown or
    malformed parts are left out."""
    if not raw:
        return ResidentRecord()
    fields = {_text(k): _text(v) for k, v in raw.items()}
    record = ResidentRecord()
    for part in fields.get("sent", "").split():
        try:
            record.sent.append(float(part))
        except ValueError:
            continue
    for part in fields.get("pending", "").split():
        when, _, reference = part.partition("/")
        try:
            record.pending.append((float(when), reference))
        except ValueError:
            continue
    try:
        record.streak = int(fields.get("streak", "0") or 0)
        record.paused_until = float(fields.get("paused_until", "0") or 0)
    except ValueError:
        pass
    return record


# --- the plan ledger -----------------------------------------------------------------------
LEDGER_SCHEMA = pa.schema([
    ("plan_date", pa.date32()),
    ("message_id", pa.string()),
    ("recommendation_id", pa.string()),
    ("model_version", pa.string()),
    ("segment", pa.string()),  # the resident's neighbourhood ("_unknown" without one)
    ("offer_kind", pa.string()),  # "bundle" or "service"
    ("offer_id", pa.string()),
    ("domain", pa.string()),
    ("channel", pa.string()),
    ("send_at", pa.timestamp("us", tz="UTC")),
    ("reason_code", pa.string()),
    ("p_open", pa.float32()),  # the Thompson draws the choice was made with
    ("p_convert", pa.float32()),
    ("frequency", pa.float32()),  # uses a week the offer brings
    ("gain", pa.float32()),
    ("planned_at", pa.timestamp("us", tz="UTC")),
])
LEDGER_COLUMNS: tuple[str, ...] = tuple(LEDGER_SCHEMA.names)
_PREFIX = "date="


class PlanExists(RuntimeError):
    """A day already has a plan in the ledger: a plan is made once per day."""


class NudgeLedger:
    """The per-day plan files (see the module docstring). Writes take an exclusive lock on
    the ledger folder and are atomic (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, day: date) -> Path:
        return self.root / f"{_PREFIX}{day.isoformat()}" / "plan.parquet"

    def has(self, day: date) -> bool:
        return self.path(day).exists()

    def days(self) -> list[date]:
        if not self.root.exists():
            return []
        out = [date.fromisoformat(p.name[len(_PREFIX):]) for p in self.root.iterdir()
               if p.is_dir() and p.name.startswith(_PREFIX) and (p / "plan.parquet").exists()]
        return sorted(out)

    def files(self, start: date | None = None, end: date | None = None) -> list[Path]:
        return [self.path(d) for d in self.days()
                if (start is None or d >= start) and (end is None or d <= end)]

    def write(self, day: date, table: pa.Table) -> Path:
        """Write the plan of ``day``; raises :class:`PlanExists` when it has one."""
        private_dir(self.root)
        target = self.path(day)
        with _Lock(self.root):
            if target.exists():
                raise PlanExists(f"{day.isoformat()} is already planned ({target})")
            new_dir = not target.parent.exists()
            private_dir(target.parent)
            if new_dir:
                fsync_dir(self.root)
            tmp = target.parent / f".tmp-{target.name}"
            with create_private(tmp) as handle:
                pq.write_table(table.select(list(LEDGER_COLUMNS)).cast(LEDGER_SCHEMA), handle,
                               compression="zstd")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        return target

    def read(self, start: date | None = None, end: date | None = None,
             columns: Sequence[str] | None = None,
             recommendation_ids: Sequence[str] | None = None) -> pa.Table:
        """Rows of the plans of days in [start, end], optionally only those of some
        recommendation ids (a resident's nudges, for their export)."""
        wanted = list(columns or LEDGER_COLUMNS)
        files = self.files(start, end)
        if not files:
            return LEDGER_SCHEMA.empty_table().select(wanted)
        dataset = ds.dataset([str(f) for f in files], schema=LEDGER_SCHEMA, format="parquet")
        where = None
        if recommendation_ids is not None:
            where = pc.field("recommendation_id").isin(pa.array(list(recommendation_ids),
                                                                pa.string()))
        return dataset.to_table(columns=wanted, filter=where)


class _Lock:
    """An exclusive ``flock`` on ``folder/.lock`` for the duration of a ``with`` block."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ".lock"
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.fd = open_private(self.path, os.O_WRONLY | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
