"""``bench engagement``: the report on a generated log in a process of its own; the
synthetic log can be generated a week at a time."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

from bouquet.analytics.synthetic import SyntheticSpec, generate, generate_chunks
from bouquet.core.catalog import load_catalog

CATALOG = load_catalog(None)


def test_a_log_written_a_week_at_a_time_is_one_city() -> None:
    """Each chunk draws its own events, but the residents are drawn once: one profile per
    resident, event ids unique across chunks, every event inside the spec's days."""
    spec = SyntheticSpec(residents=300, days=30, end=date(2026, 5, 31), seed=3)
    weekly = pa.concat_tables(list(generate_chunks(CATALOG, spec, days_per_chunk=7)))
    whole = generate(CATALOG, spec)
    for table in (weekly, whole):
        types = table["type"].to_pylist()
        profiles = [r for r, t in zip(table["resident_id"].to_pylist(), types, strict=True)
                    if t == "profile"]
        assert len(profiles) == len(set(profiles)) == spec.residents
        assert len(set(table["event_id"].to_pylist())) == table.num_rows
        days = {ts.date() for ts in table["ts"].to_pylist()}
        assert min(days) >= date(2026, 5, 2) and max(days) <= spec.end
    assert 0.8 < weekly.num_rows / whole.num_rows < 1.25


def test_bench_engagement_reports_the_served_report(tmp_path: Path) -> None:
    from bouquet.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "engagement", "--residents", "400", "--days",
                                      "35", "--json", str(out), "--memory-limit", "256MB"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["figures"]
    events = figures["events"]["value"]
    # the report reads every generated event but the duplicates and erased rows it drops
    assert 0.9 * events <= figures["events_read"]["value"] <= events
    for name in ("read_s", "compute_s", "report_s", "report_cpu_s", "report_peak_rss_mb"):
        assert figures[name]["value"] > 0, name
    assert figures["report_s"]["value"] >= figures["compute_s"]["value"]
