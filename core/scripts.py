"""Redis Lua scripts live in ``.lua`` files beside the Python that runs them.

They ship as package data, so they are read, linted and diffed as Lua, not as strings
inside Python. A script may be assembled from shared parts (the ingestion scripts share a
header and the erasure routine), listed in order.
"""

from __future__ import annotations

from importlib import resources


def lua_script(package: str, *names: str) -> str:
    """The text of the ``names`` files of ``package`` (e.g. ``"bouquet.streaming"``), joined
    in the order given."""
    return "\n".join(resources.files(package).joinpath(name).read_text("utf-8")
                     for name in names)
