"""`bouquet demo --quick` (what `make demo-quick` runs) works end to end and cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bouquet.analytics.outreach import funnel_table, lift_table, load_outreach_data
from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings
from bouquet.localstack import free_port


@pytest.mark.integration
@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_leaves_nothing_running(tmp_path) -> None:
    env = {
        **os.environ,
        "BOUQUET_STATE_DIR": str(tmp_path / "state"),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "BOUQUET_API_PORT": str(free_port()),
        "COLUMNS": "120",
    }
    result = subprocess.run([sys.executable, "-m", "bouquet", "demo", "--quick"], env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for stage in ("1/8 local stack", "2/8 simulate", "3/8 ingest", "4/8 train", "5/8 publish",
                  "6/8 serve", "7/8", "answered by the API", "8/8 live personalisation",
                  "Bouquet demo is up"):
        assert stage in output, stage
    assert "registered version 1" in output
    assert "is gone" in output, "a dismissed bundle must disappear from the next answer"
    # residents were answered by serving in the loop: both arms of the demo's experiment
    # are in the funnel (ids minted by the API, attributed by ingestion)
    assert "v1:champion" in output and "v1:popular" in output
    assert "nudged by outreach" in output and "nudges planned" in output
    _outreach_reached_the_operators(tmp_path / "state")
    # the quick demo stops the API when it ends: its summary (stdout; the API's own log is
    # on stderr) must not advertise its addresses
    summary = result.stdout.split("Bouquet demo is up")[1]
    assert f"127.0.0.1:{env['BOUQUET_API_PORT']}" not in summary
    assert not _processes_of(env), "the demo left processes running"


def _outreach_reached_the_operators(state: Path) -> None:
    """Every simulated day was planned by the deployment's planner (the ledger), and its
    nudges came back through the API and ingestion as events the operators' outreach
    figures count: sent each week, some opened, and a lift computed against the holdout
    over the four weeks after contact consent was given."""
    settings = Settings(state_dir=state)
    data = load_outreach_data(settings.event_log_path, settings.outreach_ledger_path,
                              load_catalog(), settings.outreach_holdout_salt,
                              settings.outreach_holdout_share)
    funnel = funnel_table(data, data.weeks)
    funnel = funnel[funnel["dimension"] == "all"]
    planned, sent = funnel["planned"].sum(), funnel["sent"].sum()
    # the ledger keeps no ids, so an erased resident's nudges stay planned while their
    # events are gone; the simulated city erases about 0.1% of residents
    assert planned > 0 and planned * 0.99 <= sent <= planned, funnel
    assert funnel["opened"].sum() > 0, funnel
    lift = lift_table(data, data.weeks)
    lift = lift[lift["dimension"] == "all"].dropna(subset=["difference"])
    assert len(lift) and (lift["holdout_residents"] > 0).all(), lift


def _processes_of(env: dict[str, str]) -> list[str]:
    """Processes started for this demo: its broker and Redis (by port) or any process
    whose environment names its state directory."""
    ports = (env["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1],
             env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            ours = any(f":{port}" in cmdline for port in ports) or \
                proc.environ().get("BOUQUET_STATE_DIR") == env["BOUQUET_STATE_DIR"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if ours and proc.pid != os.getpid():
            found.append(cmdline)
    return found
