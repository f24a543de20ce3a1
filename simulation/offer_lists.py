"""What the outreach planner reads of a pull policy's published lists, in memory.

:func:`bouquet.outreach.decide.decide` takes the published version as
:class:`~bouquet.outreach.candidates.PublishedLists` and each resident's precomputed list as
packed bytes (what ``OutreachStore`` reads from Redis). The closed loop offers bundles only
(the behaviour model answers bundle offers), so only bundle lists are handed over: with no
service list the planner's service candidates are empty.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bouquet.core.catalog import Catalog
from bouquet.models.online import Audience, PublishedVersion, pack_list, unpack_list
from bouquet.outreach.candidates import PublishedLists

#: A resident's packed bundle list (b"": none), by resident id.
PackedOf = Callable[[str], bytes]
#: What a pull policy offers the planner: its published lists and residents' own lists.
OutreachOffers = tuple[PublishedLists, PackedOf]


def no_list(resident_id: str) -> bytes:
    """Residents without a precomputed list (a non-personalised version)."""
    return b""


def lists_of_version(version: PublishedVersion) -> PublishedLists:
    """The planner's view of a version as serving holds it (bundle lists only)."""
    model = version.model
    return PublishedLists(
        version=version.version, model_version=version.model_version,
        bundle_ids=list(model.bundle_ids), service_ids=list(model.service_ids),
        reason_vocab=list(version.reason_vocab), audience=version.audience,
        use_rate={"b": model.bundle_use_rate, "s": model.service_use_rate},
        popular={key: entries for key, entries in version.popular.items() if key[0] == "b"})


def popularity_lists(catalog: Catalog, scores: np.ndarray, name: str,
                     use_rate: dict[str, np.ndarray]) -> PublishedLists:
    """A non-personalised version whose city-wide bundle list ranks bundles by ``scores``
    (what a popularity baseline would publish), with its offers' ``use_rate`` by kind in
    catalog order (what training would have measured)."""
    order = np.argsort(-scores, kind="stable")
    entries = unpack_list(pack_list(order, scores[order].astype(np.float32)))
    return PublishedLists(version=name, model_version=name,
                          bundle_ids=list(catalog.bundle_ids),
                          service_ids=list(catalog.service_ids), reason_vocab=["cf"],
                          audience=Audience(personalised=False, segment_lists=False),
                          popular={("b", "_all"): entries}, use_rate=use_rate)


def packed(entries: np.ndarray) -> bytes:
    """A resident's unpacked list packed again, as Redis holds it."""
    if not len(entries):
        return b""
    return pack_list(entries["i"], entries["s"], entries["r"])
