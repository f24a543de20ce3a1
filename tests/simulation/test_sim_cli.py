"""The CLI: ``bouquet simulate run | calibrate | compare`` and ``bouquet replay valleybike``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bouquet.core.eventlog import read_events


@pytest.fixture
def cli(tmp_path: Path, monkeypatch) -> Iterator[CliRunner]:
    """A runner whose settings point at a private state directory."""
    from bouquet.core import settings as settings_module

    monkeypatch.setenv("BOUQUET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BOUQUET_EVENT_LOG_DIR", raising=False)
    settings_module.get_settings.cache_clear()
    try:
        yield CliRunner()
    finally:
        settings_module.get_settings.cache_clear()


def _invoke(runner: CliRunner, *args: str, code: int = 0):
    from bouquet.cli import app

    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def test_simulate_run_writes_the_event_log(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = _invoke(cli, "simulate", "run", "--residents", "400", "--weeks", "3", "--seed",
                     "2", "--end", "2025-06-02", "--no-progress", "--json", str(out))
    summary = json.loads(out.read_text())
    assert "events" in result.output and summary["residents"] == 400
    events = read_events(tmp_path / "state" / "eventlog")
    assert len(events) == summary["events"] == sum(summary["events_by_type"].values())
    assert events["ts"].max().date().isoformat() < "2025-06-02"
    assert (tmp_path / "state" / "simulation" / "residents.parquet").exists()
    assert abs(sum(summary["cadence"].values()) - 1) < 1e-9


def test_simulate_run_outreach_needs_a_deployment(cli: CliRunner) -> None:
    result = _invoke(cli, "simulate", "run", "--residents", "200", "--weeks", "1",
                     "--outreach", "--no-progress", code=2)
    # the message as rich boxes it, whatever the width: borders and line breaks removed
    assert "--outreach needs --api-url" in " ".join(result.output.replace("│", " ").split())


def test_simulate_compare_reports_the_question_with_paired_intervals(cli: CliRunner,
                                                                      tmp_path: Path) -> None:
    out, plot = tmp_path / "compare.json", tmp_path / "plot" / "compare"
    result = _invoke(cli, "simulate", "compare", "--quick", "--end", "2025-06-02", "--json",
                     str(out), "--plot", str(plot))
    for text in ("weekly+", "paired difference from popular", "exposure / resident / week",
                 "relative lift of model over popular", "popular → oracle gap", "load average"):
        assert text in result.output, text
    payload = json.loads(out.read_text())  # the benchmark output contract
    assert payload["benchmark"] == "compare"
    assert {"started_at", "machine", "versions", "params", "figures"} <= set(payload)
    figures = {name: found["value"] for name, found in payload["figures"].items()}
    for policy in ("none", "popular", "model", "oracle"):
        share = figures[f"weekly_share_use@{policy}"]
        assert 0 <= figures[f"weekly_share_use@{policy}_ci_low"] <= share <= 1
        assert figures[f"exposure_per_resident_week@{policy}"] >= 0
    exposure = "exposure_per_resident_week@{}"
    assert figures[exposure.format("none")] < figures[exposure.format("popular")]
    low, lift, high = (figures[f"lift_model_vs_popular{end}"] for end in ("_ci_low", "",
                                                                           "_ci_high"))
    assert low <= lift <= high
    gap = (figures["weekly_share_use@model"] - figures["weekly_share_use@popular"]) / (
        figures["weekly_share_use@oracle"] - figures["weekly_share_use@popular"])
    assert figures["oracle_gap_closed"] == pytest.approx(gap)
    # the outreach question: nudges on top of pull, and what they cost in opt-outs
    for text in ("relative lift of model+outreach over model", "opt-outs per month"):
        assert text in result.output, text
    low, lift, high = (figures[f"lift_outreach_vs_pull{end}"] for end in ("_ci_low", "",
                                                                           "_ci_high"))
    assert low <= lift <= high
    assert lift == pytest.approx(figures["weekly_share_use@model+outreach"]
                                 / figures["weekly_share_use@model"] - 1)
    assert "lift_model_outreach_vs_popular_outreach" in figures
    assert 0 < figures["optout_rate_per_month@default_cap"] < 1
    assert figures["optout_rate_per_month@default_cap"] == \
        figures["optout_rate_per_month@model+outreach"]
    assert payload["params"]["residents"] == 2000 and len(payload["params"]["seeds"]) == 2
    page = plot.with_suffix(".html").read_text()
    assert plot.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in page and "src=" not in page and "weekly_share" not in page
    _invoke(cli, "simulate", "compare", "--policies", "none,nonsense", "--weeks", "4",
            "--seeds", "1", "--residents", "100", code=1)


def test_simulate_compare_cap_sweep(cli: CliRunner, tmp_path: Path) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep"
    result = _invoke(cli, "simulate", "compare", "--policies", "none", "--residents", "300",
                     "--seeds", "1", "--weeks", "4", "--end", "2025-06-02", "--cap-sweep",
                     "--json", str(out), "--plot", str(plot))
    assert "cap 4/week (gap 42 h)" in result.output
    figures = {name: found["value"]
               for name, found in json.loads(out.read_text())["figures"].items()}
    rates = [figures[f"optout_rate_per_month@model+outreach@cap{cap}@optout_x1"]
             for cap in (1, 2, 3, 4)]
    assert all(0 <= rate < 1 for rate in rates)
    assert (tmp_path / "sweep-outreach.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_calibrate(cli: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrate.json"
    result = _invoke(cli, "simulate", "calibrate", "--valleybike",
                     str(shared_data / "valleybike" / "trips.tsv.gz"), "--json", str(out))
    assert result.output.count(" ok ") >= 9 and "OUT" not in result.output
    payload = json.loads(out.read_text())  # the benchmark output contract
    assert payload["benchmark"] == "calibrate"
    assert {"started_at", "machine", "versions", "params", "figures"} <= set(payload)
    figures = payload["figures"]
    for name in ("weeks_active_share", "week_persistence", "heavy_weeks_active_share",
                 "weekly_of_active", "median_per_person", "share_once", "top10_share",
                 "dau_mau", "wau_mau"):
        for side in ("real", "sim"):
            assert set(figures[f"{side}_{name}"]) == {"value", "unit"}
        low, high = payload["params"]["tolerances"][name]
        assert low <= figures[f"sim_{name}"]["value"] <= high
    assert figures["real_weeks_active_share"]["value"] == pytest.approx(0.152, abs=0.001)
    assert figures["out_of_tolerance"]["value"] == 0
    _invoke(cli, "simulate", "calibrate", "--valleybike", "/nonexistent.tsv.gz", code=2)


def test_replay_valleybike_into_the_event_log(cli: CliRunner, shared_data: Path,
                                             tmp_path: Path) -> None:
    path = shared_data / "valleybike" / "trips.tsv.gz"
    out = tmp_path / "replay.json"
    result = _invoke(cli, "replay", "valleybike", str(path), "--to", "eventlog", "--limit",
                     "2000", "--no-progress", "--json", str(out))
    assert "kept trips" in result.output
    summary = json.loads(out.read_text())
    events = read_events(tmp_path / "state" / "eventlog")
    assert len(events) == summary["events"]
    assert (events["type"] == "use").sum() == summary["counts"]["kept"]
    _invoke(cli, "replay", "valleybike", str(path), "--speedup", "10",
            "--as-fast-as-possible", code=2)
