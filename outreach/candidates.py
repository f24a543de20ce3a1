"""A nudge's candidates: the first offers of the resident's answer — the published lists
through the serving filters — for every resident at once.

:meth:`bouquet.serving.ranking.OfferRanker.rank` answers one resident at a time (tens of
microseconds); a million residents need the same answer as arrays. The rule is serving's,
without the real-time re-ranking (a plan is made for later, not for what the resident did a
second ago):

1. a consenting resident with a precomputed list of the published version: that list, by
   score; otherwise (and to back-fill a list the filters leave short) the popular list of
   the resident's neighbourhood, then the city's — led, for a consenting resident without
   a list, by the popular list of their segment (residents like them: neighbourhood, age
   band, household), serving's segment cold start;
2. always out: offers the resident holds, dismissed bundles (and dismissed services),
   offers not available where the resident lives, offers whose eligibility the resident
   lacks (the filters' ``permitted``, once per distinct profile), offers no longer in the
   catalog; an offer is taken once.

The first ``n`` survivors of each kind are the candidates. What serving decides from the
resident's last seconds or by chance — re-ranking by recent events, rotating out bundles
shown and ignored, the exploration slots — is not part of a plan. ``tests/outreach`` checks
the candidates against ``OfferRanker.rank`` on random residents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bouquet.core.catalog import Catalog
from bouquet.core.profile import all_segments
from bouquet.models.cadence import cadence_weights
from bouquet.models.online import ENTRY, Audience

#: First byte of a packed list (:func:`bouquet.models.online.pack_list`'s format).
_FORMAT = b"\x01"

KINDS: tuple[str, ...] = ("b", "s")


class OfferFilters(Protocol):
    """The serving filters the planner needs (:class:`bouquet.serving.ranking.OfferRanker`)."""

    def permitted(self, kind: str, state: Any, zone: str | None,
                  domain: str | None) -> frozenset[str]: ...

    def reason_text(self, code: str, today: Any = None) -> str: ...


@dataclass(frozen=True)
class ProfileView:
    """What ``OfferFilters.permitted`` reads of a resident: the profile dict."""

    profile: dict[str, Any]

    @property
    def neighbourhood(self) -> str | None:
        return self.profile.get("neighbourhood") or None


@dataclass
class PublishedLists:
    """What the planner reads of the published version: its ids, reason vocabulary and
    popular lists (by kind and neighbourhood or segment; ``_all`` is the city)."""

    version: str
    model_version: str
    bundle_ids: list[str]
    service_ids: list[str]
    reason_vocab: list[str]
    audience: Audience = field(default_factory=Audience)
    popular: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    #: Uses a week of each offer by those who have it, by kind, aligned with :meth:`ids`:
    #: the rates the version's model was trained with (serving's cadence weights).
    use_rate: dict[str, np.ndarray] = field(default_factory=dict)

    def ids(self, kind: str) -> list[str]:
        return self.bundle_ids if kind == "b" else self.service_ids

    def use_frequency(self, catalog: Catalog) -> np.ndarray:
        """Uses a week of every catalog offer (bundles, then services): the published
        rates (:func:`bouquet.models.cadence.use_rate`), so the planner weighs an offer by
        the same measure serving ranks it by. An offer the version does not know gets the
        median of those it does, and none weighs less than ``FLOOR`` times the most used
        (pushed down, never out, as in serving); a version without rates weighs every
        offer alike."""
        parts = []
        for kind, ids in (("b", catalog.bundle_ids), ("s", catalog.service_ids)):
            found = self.use_rate.get(kind)
            rate = {} if found is None else dict(zip(
                self.ids(kind), np.asarray(found, dtype=np.float64).tolist(), strict=True))
            parts.append(np.array([rate.get(i, np.nan) for i in ids], dtype=np.float64))
        out = np.concatenate(parts)
        known = out[np.isfinite(out)]
        if not len(known) or known.max() <= 0:
            return np.ones(len(out))
        # serving's weights (relative to the most used, floored) back in uses a week
        return known.max() * cadence_weights(np.where(np.isfinite(out), out,
                                                      np.median(known)), 1.0)


@dataclass
class Candidates:
    """Per resident, the first ``n`` offers of each kind (catalog indices, −1 when fewer),
    with their reason codes (indices into :attr:`codes`)."""

    items: dict[str, np.ndarray]  # kind -> (R, n) int32
    reasons: dict[str, np.ndarray]  # kind -> (R, n) int32
    codes: list[str]


class CandidateBuilder:
    """Turns residents' state into :class:`Candidates`, kind by kind, chunk by chunk."""

    def __init__(self, catalog: Catalog, lists: PublishedLists, filters: OfferFilters,
                 neighbourhoods: list[str], per_kind: int) -> None:
        self.catalog = catalog
        self.lists = lists
        self.filters = filters
        self.per_kind = per_kind
        self.catalog_ids = {"b": list(catalog.bundle_ids), "s": list(catalog.service_ids)}
        self.index = {k: {item: i for i, item in enumerate(ids)}
                      for k, ids in self.catalog_ids.items()}
        # version item index -> catalog index (-1: not in the catalog any more)
        self.to_catalog = {k: np.array([self.index[k].get(i, -1) for i in lists.ids(k)]
                                       + [-1], dtype=np.int64) for k in KINDS}
        self.neighbourhoods = list(neighbourhoods)
        #: every segment of the neighbourhoods (index: ``build``'s ``segment``)
        self.segments = all_segments(self.neighbourhoods)
        vocab = list(lists.reason_vocab)
        # a popular list's code is _popular_code + its row in the popular matrix
        self.codes = [*vocab, "", *[f"popular:{nb}" for nb in self.neighbourhoods],
                      "popular:_all", *[f"segment:{seg}" for seg in self.segments]]
        self._no_reason = len(vocab)
        self._popular_code = len(vocab) + 1
        self._popular = {k: self._popular_matrix(k) for k in KINDS}
        self._permitted: dict[str, dict[tuple[Any, ...], int]] = {k: {} for k in KINDS}
        self._permitted_rows: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}

    # --- the pieces --------------------------------------------------------------------------
    def _popular_matrix(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(neighbourhoods + 1 + segments, Q) version item indices of each neighbourhood's
        popular list, the city's (the row after them), then each segment's, padded with −1;
        and their lengths."""
        rows = [self.lists.popular.get((kind, where), np.empty(0, ENTRY))["i"]
                for where in [*self.neighbourhoods, "_all", *self.segments]]
        width = max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out, np.array([len(r) for r in rows])

    def signature(self, kind: str, profile: dict[str, Any]) -> int:
        """Row of the permitted matrix for a profile (filters asked once per distinct
        profile, as serving caches them)."""
        key = (profile.get("neighbourhood"), profile.get("age_band"), profile.get("household"),
               bool(profile.get("student")), bool(profile.get("low_income")))
        found = self._permitted[kind].get(key)
        if found is None:
            allowed = self.filters.permitted(kind, ProfileView(profile), None, None)
            row = np.array([item in allowed for item in self.catalog_ids[kind]], dtype=bool)
            found = self._permitted[kind][key] = len(self._permitted_rows[kind])
            self._permitted_rows[kind].append(row)
        return found

    def permitted_matrix(self, kind: str) -> np.ndarray:
        rows = self._permitted_rows[kind]
        return np.stack(rows) if rows else np.zeros((0, len(self.catalog_ids[kind])), bool)

    def blocked(self, kind: str, holdings: list[str], dismissed: list[str]) -> np.ndarray:
        """(R, items) bool: held, or dismissed — ``OfferRanker``'s rule: bundles held
        (``b:<id>``) or dismissed (plain ids); services held (``s:<id>``) or dismissed
        (``s:<id>``)."""
        index = self.index[kind]
        out = np.zeros((len(holdings), len(self.catalog_ids[kind])), dtype=bool)
        prefix = "b:" if kind == "b" else "s:"
        for row, (held, gone) in enumerate(zip(holdings, dismissed, strict=True)):
            if not held and not gone:
                continue
            for member in held.split():
                if member.startswith(prefix) and (i := index.get(member[2:])) is not None:
                    out[row, i] = True
            for member in gone.split():
                name = member if kind == "b" else (member[2:] if member.startswith("s:")
                                                   else None)
                if name is not None and (i := index.get(name)) is not None:
                    out[row, i] = True
        return out

    # --- the rule ------------------------------------------------------------------------------
    def build(self, kind: str, personalise: np.ndarray, packed: list[bytes],
              neighbourhood: np.ndarray, signature: np.ndarray, blocked: np.ndarray,
              segment: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(items, reasons) of one kind for a chunk of residents (see the module docstring).
        ``neighbourhood`` indexes :attr:`neighbourhoods` and ``segment`` :attr:`segments`
        (−1: not declared; no ``segment``: none declared)."""
        n_rows = len(packed)
        # the resident's own list, by score (a stable sort, as serving's); unpacked for
        # every row at once (what unpack_list reads: a format byte, then 8-byte entries)
        usable = [bool(use) and len(p) > 1 and p[:1] == _FORMAT and (len(p) - 1) % ENTRY.itemsize
                  == 0 for p, use in zip(packed, personalise, strict=True)]
        counts = np.array([(len(p) - 1) // ENTRY.itemsize if ok else 0
                           for p, ok in zip(packed, usable, strict=True)], dtype=np.int64)
        width = int(counts.max()) if n_rows else 0
        own = np.full((n_rows, width), -1, dtype=np.int64)
        own_reason = np.full((n_rows, width), self._no_reason, dtype=np.int64)
        score = np.full((n_rows, width), -np.inf)
        if width:
            entries = np.frombuffer(b"".join(p[1:] for p, ok in zip(packed, usable, strict=True)
                                             if ok), dtype=ENTRY)
            row = np.repeat(np.arange(n_rows), counts)
            column = np.arange(len(entries)) - np.repeat(np.cumsum(counts) - counts, counts)
            own[row, column] = entries["i"]
            own_reason[row, column] = entries["r"]
            score[row, column] = entries["s"]
        if width > 1 and not (score[:, 1:] <= score[:, :-1]).all():  # publish sorts them
            order = np.argsort(-score, axis=1, kind="stable")
            own = np.take_along_axis(own, order, axis=1)
            own_reason = np.take_along_axis(own_reason, order, axis=1)
        own_reason = np.where(own_reason < self._no_reason, own_reason, self._no_reason)
        # then (a consenting resident without a list) the segment's popular list, the
        # neighbourhood's, the city's: each row is the sequence own list, segment's list,
        # neighbourhood's list, city's list, read position by position (the first offers
        # almost always survive the filters, so a short prefix of each row is read first,
        # and the whole row only where the prefix had too few)
        _, lengths = self._popular[kind]
        city = len(self.neighbourhoods)
        if segment is None:
            segment = np.full(n_rows, -1, dtype=np.int64)
        cold = np.asarray(personalise, dtype=bool) & (counts == 0) & (segment >= 0)
        seg_rows = np.where(cold, city + 1 + segment, city)
        near_rows = np.where(neighbourhood >= 0, neighbourhood, city)
        lists = [(seg_rows, np.where(cold, lengths[seg_rows], 0)),
                 (near_rows, np.where(neighbourhood >= 0, lengths[near_rows], 0)),
                 (np.full(n_rows, city), np.full(n_rows, lengths[city]))]
        total = counts + sum(length for _, length in lists)
        n = self.per_kind
        prefix = min(int(total.max()) if n_rows else 0, 2 * n + 8)
        items, reasons = self._sequence(kind, own, own_reason, counts, lists,
                                        np.arange(prefix))
        out_items, out_reasons, found = self._first_allowed(kind, items, reasons, signature,
                                                            blocked)
        short = np.flatnonzero((found < n) & (total > prefix))
        if len(short):
            items, reasons = self._sequence(kind, own[short], own_reason[short], counts[short],
                                            [(r[short], length[short]) for r, length in lists],
                                            np.arange(int(total[short].max())))
            more_items, more_reasons, _ = self._first_allowed(
                kind, items, reasons, signature[short], blocked[short])
            out_items[short], out_reasons[short] = more_items, more_reasons
        return out_items.astype(np.int32), out_reasons.astype(np.int32)

    def _sequence(self, kind: str, own: np.ndarray, own_reason: np.ndarray,
                  counts: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]],
                  positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(catalog items, reasons) at ``positions`` of each row's sequence: its own list
        (``counts`` long), then each of ``lists`` (per row a popular matrix row and how much
        of it is used, 0 to skip it); −1 past the end, or where the version's item is not in
        the catalog."""
        popular, _ = self._popular[kind]
        shape = (len(counts), len(positions))
        at = np.broadcast_to(positions[None, :], shape)
        version_items = np.full(shape, -1, dtype=np.int64)
        reasons = np.full(shape, -1, dtype=np.int64)
        mine = at < counts[:, None]
        if own.shape[1]:
            column = np.minimum(at, own.shape[1] - 1)
            version_items = np.where(mine, np.take_along_axis(own, column, axis=1), -1)
            reasons = np.where(mine, np.take_along_axis(own_reason, column, axis=1), -1)
        if popular.shape[1]:
            width = popular.shape[1] - 1
            start = counts[:, None]
            for rows, length in lists:
                at_list = at - start
                inside = (at_list >= 0) & (at_list < length[:, None])
                version_items = np.where(inside, popular[rows[:, None],
                                                         np.clip(at_list, 0, width)],
                                         version_items)
                reasons = np.where(inside, (self._popular_code + rows)[:, None], reasons)
                start = start + length[:, None]
        lookup = self.to_catalog[kind]
        in_range = (version_items >= 0) & (version_items < len(lookup) - 1)
        items = np.where(in_range, lookup[np.where(in_range, version_items, -1)], -1)
        return items, reasons

    def _first_allowed(self, kind: str, items: np.ndarray, reasons: np.ndarray,
                       signature: np.ndarray, blocked: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first ``per_kind`` items of each row that the filters allow, each once, with
        their reasons (−1 padding), and how many each row had (at most ``per_kind``)."""
        n_rows, width = items.shape
        n_items = len(self.catalog_ids[kind])
        safe = np.maximum(items, 0)
        ok = items >= 0
        if n_items:
            ok &= self.permitted_matrix(kind)[signature[:, None], safe]
            ok &= ~np.take_along_axis(blocked, safe, axis=1)
        # first occurrence of each item in a row
        first = np.full((n_rows, max(n_items, 1)), width, dtype=np.int64)
        rows = np.arange(n_rows)
        for j in range(width - 1, -1, -1):
            hit = ok[:, j]
            first[rows[hit], safe[hit, j]] = j
        ok &= first[rows[:, None], safe] == np.arange(width)[None, :]
        n = self.per_kind
        rank = np.cumsum(ok, axis=1)
        row, column = np.nonzero(ok & (rank <= n))
        out_items = np.full((n_rows, n), -1, dtype=np.int64)
        out_reasons = np.full((n_rows, n), -1, dtype=np.int64)
        slot = rank[row, column] - 1
        out_items[row, slot] = items[row, column]
        out_reasons[row, slot] = reasons[row, column]
        return out_items, out_reasons, np.minimum(rank[:, -1] if width else 0, n)
