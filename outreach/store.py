"""The planner's Redis reads and writes: the contactable set, residents' profiles and
records, their holdings and published lists, the published version — in chunked scripts.

A million residents cannot be read one round trip at a time, and a script per resident
costs more in the client than in Redis. So one script call reads a chunk of residents
(``read_residents.lua``), returning a few strings per resident, and one call writes a
chunk of records (``write_records.lua``). The scripts build key names from fixed parts
checked here against :class:`~bouquet.core.keys.Keys` at start-up (as ingestion does).

A script may touch one hash slot of a Redis Cluster, and every key a call builds carries
its resident's ``{rid}`` tag: on a cluster a call takes the residents of one slot
(:func:`~bouquet.core.redisclient.resident_chunks`) and names one of their keys so the
client routes it, and the replies are put back in the callers' order. Chunks are then
small (a million residents over 16,384 slots: ~60 a slot), so a plan makes more, smaller
calls than on one Redis; the pipelines still group them by node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from bouquet.core.keys import Keys
from bouquet.core.outreach import ResidentRecord, decode_record
from bouquet.core.profile import all_segments, decode_value
from bouquet.core.redisclient import SyncClient, is_cluster, load_scripts, resident_chunks
from bouquet.core.scripts import lua_script
from bouquet.models.online import Audience, decode_meta, unpack_list
from bouquet.outreach.candidates import PublishedLists
from bouquet.outreach.decide import PROFILE_COLUMNS, OfferState, Residents
from bouquet.outreach.overlap import one_ahead

_READ_LUA = lua_script("bouquet.outreach", "read_residents.lua")
_WRITE_LUA = lua_script("bouquet.outreach", "write_records.lua")
#: Profile fields read per resident: consents, the columns decide() needs, and when contact
#: consent was last decided (to tell an erasure before it from one after).
PROFILE_FIELDS: tuple[str, ...] = ("contact", "consent", *PROFILE_COLUMNS, "contact_ts")
#: Residents per script call: each call holds Redis for a few milliseconds.
CHUNK = 1000
#: Script calls per round trip.
PIPELINED_CALLS = 50


class KeyFormatChanged(RuntimeError):
    """``Keys`` builds a name the planner's scripts would not: the scripts must change."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class OutreachStore:
    """Chunked reads and writes of the planner's per-resident state."""

    def __init__(self, client: SyncClient, keys: Keys) -> None:
        self.redis = client
        self.cluster = is_cluster(client)
        self.keys = keys
        sample = keys.profile("R0")
        self._r_pre = sample[: sample.rindex("{R0}") + 1]
        self._r_suf = "}:"
        for kind in ("profile", "outreach", "holdings", "dismissed"):
            built = getattr(keys, kind)("R0")
            if built != f"{self._r_pre}R0{self._r_suf}{kind}":
                raise KeyFormatChanged(f"Keys builds {built!r}; the planner's scripts "
                                       "would not")
        self._read = client.register_script(_READ_LUA)
        self._write = client.register_script(_WRITE_LUA)

    # --- the published version -----------------------------------------------------------
    def published(self, neighbourhoods: Iterable[str]) -> PublishedLists | None:
        """The version the ``current`` pointer names (what the champion variant serves):
        its ids, reason vocabulary and popular lists; None when nothing is published."""
        version = self.redis.get(self.keys.current_version())
        if not version:
            return None
        version = _text(version)
        meta = decode_meta(self.redis.hgetall(self.keys.version_meta(version)))
        if "model_version" not in meta:
            return None
        lists = PublishedLists(
            version=version, model_version=meta["model_version"],
            bundle_ids=json.loads(meta.get("bundle_ids", "[]")),
            service_ids=json.loads(meta.get("service_ids", "[]")),
            reason_vocab=json.loads(meta.get("reason_vocab", '["cf"]')),
            audience=Audience.from_meta(meta),
            use_rate={kind: np.asarray(json.loads(meta[key]), dtype=np.float64)
                      for kind, key in (("b", "bundle_use_rate"), ("s", "service_use_rate"))
                      if key in meta})
        neighbourhoods = list(neighbourhoods)
        # the segments' lists too: serving's cold start for a consenting resident without
        # a list of their own (absent keys are empty lists)
        names = ["_all", *neighbourhoods, *all_segments(neighbourhoods)]
        pipe = self.redis.pipeline(transaction=False)
        for kind in ("b", "s"):
            for nb in names:
                pipe.get(self.keys.popular(version, nb, kind))
        replies = iter(pipe.execute())
        for kind in ("b", "s"):
            for nb in names:
                entries = unpack_list(next(replies))
                if len(entries):
                    lists.popular[(kind, nb)] = entries
        return lists

    # --- residents -----------------------------------------------------------------------
    def contactable(self) -> list[str]:
        """The contactable set, sorted (a plan does not depend on Redis' set order)."""
        return sorted(_text(m) for m in self.redis.smembers(self.keys.contactable()))

    def _groups(self, mode: str, resident_ids: Sequence[str], version: str | None,
                width: int) -> Iterator[list[list[bytes]]]:
        """The script's columns (``width`` of them), one group of chunks at a time, so that
        a caller turns them into arrays before the next group is read."""
        b_pre = s_pre = l_suf = ""
        if version is not None:
            b_key = self.keys.recs(version, "R0", "b")
            b_pre, l_suf = b_key[: b_key.rindex("{R0}") + 1], "}"
            s_key = self.keys.recs(version, "R0", "s")
            s_pre = s_key[: s_key.rindex("{R0}") + 1]
        head = [mode, self._r_pre, self._r_suf, b_pre, s_pre, l_suf, ",".join(PROFILE_FIELDS)]
        load_scripts(self.redis, [_READ_LUA])

        def read(part: list[str]) -> list[list[bytes]]:
            chunks = resident_chunks(part, CHUNK, self.cluster)
            columns: list[list[bytes]] = [[] for _ in range(width)]
            pipe = self.redis.pipeline(transaction=False)
            for chunk in chunks:
                ids = [part[i] for i in chunk]
                pipe.evalsha(self._read.sha, 1, self.keys.profile(ids[0]), *head,
                             "\x1f".join(ids))
            for reply in pipe.execute():
                for column, values in zip(columns, reply, strict=True):
                    column.extend(values)
            return _in_order(columns, chunks) if self.cluster else columns

        group = CHUNK * PIPELINED_CALLS
        # the next group is read while the caller decodes this one
        yield from one_ahead(partial(read, list(resident_ids[first:first + group]))
                             for first in range(0, len(resident_ids), group))

    def _call(self, mode: str, resident_ids: Sequence[str], version: str | None,
              width: int) -> list[list[bytes]]:
        """Every group's columns, joined."""
        out: list[list[bytes]] = [[] for _ in range(width)]
        for columns in self._groups(mode, resident_ids, version, width):
            for whole, part in zip(out, columns, strict=True):
                whole.extend(part)
        return out

    def resident_table(self, resident_ids: Sequence[str]) -> tuple[Residents, np.ndarray]:
        """:class:`Residents` of the ids (profile columns as the profile hash decodes them,
        consents, records; ``erased`` is left False for the caller), and each one's
        contact-consent time (NaN: none)."""
        n = len(resident_ids)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in (*PROFILE_COLUMNS,
                                                                    "contact", "consent",
                                                                    "contact_ts")}
        records: list[ResidentRecord | None] = []
        for columns in self._groups("state", resident_ids, None, len(PROFILE_FIELDS) + 4):
            raw = dict(zip(PROFILE_FIELDS, columns, strict=False))
            for name in PROFILE_COLUMNS:
                parts[name].append(_decoded(name, raw[name]))
            parts["contact"].append(np.array(raw["contact"], dtype=object) == b"1")
            parts["consent"].append(np.array(raw["consent"], dtype=object) == b"1")
            parts["contact_ts"].append(np.array([_float(v) for v in raw["contact_ts"]]))
            sent, pending, streak, paused = columns[len(PROFILE_FIELDS):]
            for a, b, c, d in zip(sent, pending, streak, paused, strict=True):
                records.append(decode_record({"sent": a, "pending": b, "streak": c or b"0",
                                              "paused_until": d or b"0"})
                               if a or b or (c and c != b"0") or (d and d != b"0") else None)

        def joined(name: str, dtype: Any) -> np.ndarray:
            return np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype)

        residents = Residents(
            ids=np.array(resident_ids, dtype=object), contact=joined("contact", bool),
            consent=joined("consent", bool), erased=np.zeros(n, dtype=bool),
            profile={name: joined(name, object) for name in PROFILE_COLUMNS},
            records=records)
        return residents, joined("contact_ts", np.float64)

    def offers(self, resident_ids: Sequence[str], version: str | None) -> OfferState:
        """Holdings, dismissed offers and the published lists of the version (for
        :func:`~bouquet.outreach.decide.decide`'s candidates)."""
        holdings, dismissed, bundles, services = self._call("offers", resident_ids, version, 4)
        return OfferState([v.decode() if v else "" for v in holdings],
                          [v.decode() if v else "" for v in dismissed],
                          {"b": bundles, "s": services})

    def write_records(self, records: dict[str, ResidentRecord], nudged: set[str],
                      ttl_s: int) -> list[str]:
        """Write changed records (chunked script) and make the last consent check with it:
        returns the residents of ``nudged`` whose profile no longer says contact consent,
        whose record was left as it was and whose nudge must be dropped."""
        items = list(records.items())
        head = [self._r_pre, self._r_suf, str(int(ttl_s))]
        load_scripts(self.redis, [_WRITE_LUA])

        def pipelines() -> Iterator[Callable[[], list[Any]]]:
            group = CHUNK * PIPELINED_CALLS
            for first in range(0, len(items), group):
                part = items[first:first + group]
                pipe = self.redis.pipeline(transaction=False)
                for chunk in resident_chunks([rid for rid, _ in part], CHUNK, self.cluster):
                    lines = []
                    for rid, record in (part[i] for i in chunk):
                        encoded = record.encode()
                        lines.append(f"{'1' if rid in nudged else '0'}\x1f{rid}"
                                     f"\x1f{encoded['sent']}\x1f{encoded['pending']}"
                                     f"\x1f{encoded['streak']}\x1f{encoded['paused_until']}")
                    pipe.evalsha(self._write.sha, 1, self.keys.profile(part[chunk[0]][0]),
                                 *head, "\x1e".join(lines))
                yield pipe.execute

        # the next group is encoded while Redis writes this one
        return [_text(rid) for replies in one_ahead(pipelines()) for reply in replies
                for rid in reply]

    def contact(self, resident_ids: Sequence[str]) -> np.ndarray:
        """Whether each resident's profile says contact consent now."""
        (column,) = self._call("contact", resident_ids, None, 1)
        return np.array(column, dtype=object) == b"1"

    def neighbourhoods(self, resident_ids: Sequence[str]) -> dict[str, str]:
        """Declared neighbourhood of residents (those who declared one)."""
        pipe = self.redis.pipeline(transaction=False)
        for rid in resident_ids:
            pipe.hget(self.keys.profile(rid), "neighbourhood")
        return {rid: _text(v) for rid, v in zip(resident_ids, pipe.execute(), strict=True)
                if v}


def _in_order(columns: list[list[bytes]], chunks: list[np.ndarray]) -> list[list[bytes]]:
    """Columns read chunk by chunk put back in the order of the residents asked for."""
    if not chunks:
        return columns
    positions = np.concatenate(chunks)
    out = []
    for column in columns:
        ordered = np.empty(len(positions), dtype=object)
        ordered[positions] = column
        out.append(ordered.tolist())
    return out


def _decoded(name: str, values: list[bytes]) -> np.ndarray:
    """A profile column as the profile hash decodes it (None where absent); each distinct
    stored value is decoded once."""
    if not values:
        return np.empty(0, dtype=object)
    codes, uniques = pd.factorize(np.array(values, dtype=object))
    decoded = np.empty(len(uniques), dtype=object)
    for i, value in enumerate(uniques):  # one by one: a tuple must stay one element
        decoded[i] = decode_value(name, value) if value != b"" else None
    return decoded[codes]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
