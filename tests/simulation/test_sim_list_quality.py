"""List quality judged by the simulator's truth (``simulation/list_quality.py``) and the
engine's offer probabilities it shares."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from bouquet.core.catalog import Catalog
from bouquet.simulation.behaviour import Simulation
from bouquet.simulation.list_quality import default_factories, judge, list_gain
from bouquet.simulation.policies import PopularPolicy

END = date(2025, 6, 2)


@pytest.fixture(scope="module")
def judged(catalog: Catalog) -> dict[str, float]:
    found = judge(default_factories(["none", "popular", "random", "oracle"], 3), catalog,
                  residents=1500, seed=3, week=2, weeks=4, end=END)
    return {q.policy: q.top_k for q in found}


def test_expected_gain_is_zero_exactly_where_no_offer_can_be_taken(catalog: Catalog) -> None:
    sim = Simulation.create(catalog, 600, 4, 5, end=END)
    sim.history()  # the holdings the window opens with
    rows = np.arange(sim.n)
    gain = sim.expected_gain(rows)
    blocked = ~sim.bundle_ok(rows) | sim.held_bundles[rows]
    assert blocked.any() and (~blocked).any()
    assert (gain[blocked] == 0).all()
    assert (gain[~blocked] > 0).all()


def test_expected_gain_rises_with_affinity_and_falls_with_fatigue(catalog: Catalog) -> None:
    sim = Simulation.create(catalog, 200, 4, 5, end=END)
    aff = np.array([-1.0, 0.0, 1.0, 2.0, 3.0], np.float32)
    fresh = sim.click_probability(aff, np.zeros(5)) * sim.subscribe_probability(aff) \
        * sim.habit_match(aff)
    tired = sim.click_probability(aff, np.full(5, 3.0)) * sim.subscribe_probability(aff) \
        * sim.habit_match(aff)
    assert (np.diff(fresh) > 0).all()
    assert (tired < fresh).all()


def test_lists_are_worth_what_their_first_k_bundles_are(catalog: Catalog) -> None:
    sim = Simulation.create(catalog, 300, 4, 9, end=END)
    sim.history()
    rows = np.arange(20)
    gain = sim.expected_gain(rows)
    ids = catalog.bundle_ids
    best = [[ids[j] for j in np.argsort(-gain[i])[:4]] for i in range(len(rows))]
    top_k, top_1 = list_gain(gain, ids, [[*b, "no-such-bundle"] for b in best], k=3)
    np.testing.assert_allclose(top_k, np.sort(gain, 1)[:, ::-1][:, :3].sum(1), rtol=1e-6)
    np.testing.assert_allclose(top_1, gain.max(1), rtol=1e-6)
    empty_k, empty_1 = list_gain(gain, ids, [[] for _ in rows], k=3)
    assert not empty_k.any() and not empty_1.any()


def test_the_oracle_beats_popular_and_showing_nothing_is_worth_nothing(
        judged: dict[str, float]) -> None:
    assert judged["none"] == 0
    assert 0 < judged["random"] < judged["oracle"]
    assert judged["popular"] < judged["oracle"]
    # the oracle ranks by affinity alone, not by gain, yet roughly doubles popular's
    assert judged["oracle"] > 1.5 * judged["popular"]


def test_every_policy_answers_on_the_same_state(catalog: Catalog) -> None:
    """Two popular policies judged in one call see one log, so they agree exactly."""
    found = judge({"a": PopularPolicy, "b": PopularPolicy}, catalog, residents=800, seed=4,
                  week=1, weeks=3, end=END)
    assert found[0].top_k == found[1].top_k > 0
    with pytest.raises(ValueError, match="week must be within"):
        judge({"a": PopularPolicy}, catalog, residents=100, seed=4, week=3, weeks=3, end=END)


def test_simulate_lists_cli_writes_the_figures(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from bouquet.cli import app
    from bouquet.core import settings as settings_module

    monkeypatch.setenv("BOUQUET_STATE_DIR", str(tmp_path / "state"))
    settings_module.get_settings.cache_clear()
    out = tmp_path / "lists.json"
    try:
        result = CliRunner().invoke(app, ["simulate", "lists", "--policies",
                                          "none,popular,model,oracle", "--residents", "1200",
                                          "--seeds", "1", "--week", "3", "--force-promotion",
                                          "--json", str(out)])
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["figures"]
    assert figures["gap_closed@oracle"] == pytest.approx(1.0)
    assert figures["gap_closed@popular"] == pytest.approx(0.0)
    assert figures["list_gain@none"] == 0
    assert figures["list_gain@model"] > 0
    assert "gap closed" in result.output
