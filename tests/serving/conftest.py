"""Serving tests run their coroutines on asyncio through anyio's pytest plugin."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bouquet.core.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Most serving tests check a model's exact lists and scores: no exploration slot (a
    Thompson draw) unless a test asks for one (tests/serving/test_serving_rules.py)."""
    return make_settings(serving_explore_share=0.0)
