"""The engagement service: cached on the event log's files, and the report command."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bouquet.analytics.service import EngagementService
from bouquet.core.recommendation import development_ids
from bouquet.core.settings import Settings
from tests.analytics.engagement_helpers import Log


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settings_for(root: Path, **extra: object) -> Settings:
    return Settings(env="test", state_dir=root / "state", event_log_dir=root / "log",
                    redis_url="redis://127.0.0.1:1/0", **extra)


def sample_log(root: Path, residents: int = 8, day: int = 0) -> None:
    log = Log()
    for i in range(residents):
        log.add(f"r{day}_{i}", "use", day)
    log.write(root)


def test_the_log_is_read_once_until_its_files_change(tmp_path: Path) -> None:
    sample_log(tmp_path / "log")
    clock = Clock()
    svc = EngagementService(settings_for(tmp_path), ttl_s=30, clock=clock)
    first = svc.figure("cadence")
    assert svc.figure("cadence") is first
    svc.figure("stickiness", by="channel")
    svc.summary()
    assert svc.computations == 1
    sample_log(tmp_path / "log", day=1)  # the consumer writes a new file
    clock.now = 10  # within the TTL the cached figures are served
    assert svc.figure("cadence").rows[0]["known"] == 8
    assert svc.computations == 1
    clock.now = 31  # after it, the file list is checked and has changed
    assert svc.figure("cadence").rows[0]["known"] == 16
    assert svc.computations == 2
    clock.now = 100  # checked again, unchanged: nothing is re-read
    svc.figure("cadence")
    assert svc.computations == 2


def test_report_engagement_prints_the_same_figures_as_the_service(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from bouquet.cli import app
    from bouquet.core import settings as settings_module

    sample_log(tmp_path / "log", residents=12)
    sample_log(tmp_path / "log", residents=3, day=8)
    monkeypatch.setenv("BOUQUET_EVENT_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("BOUQUET_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    settings_module.get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(app, ["report", "engagement", "--json", "--no-live"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output)
        service = EngagementService(settings_module.get_settings())
        assert payload["cadence"]["rows"] == service.figure("cadence", last=12).to_json()["rows"]
        assert payload["summary"]["source"]["contacts"] == 15
        assert payload["cadence"]["rows"][1]["known"] == 15
        second_week = payload["stickiness"]["rows"][1]
        assert second_week["wau"] is None  # 3 residents active in the second week: hidden
        assert "wau" in second_week["suppressed"]

        table = runner.invoke(app, ["report", "engagement", "--by", "neighbourhood",
                                    "--weeks", "2", "--no-live"])
        assert table.exit_code == 0, table.output
        assert "Residents by cadence" in table.output and "_unknown" in table.output
        assert "◌" in table.output
        bad = runner.invoke(app, ["report", "engagement", "--by", "domain", "--value",
                                  "nowhere", "--no-live"])
        assert bad.exit_code == 2 and "no data" in bad.output
    finally:
        settings_module.get_settings.cache_clear()


def test_computed_figures_are_kept_in_a_bounded_cache(tmp_path: Path) -> None:
    """Every distinct request (figure, breakdown, value, period count) is a cache entry: an
    operator key looping over ``?days=1…5200`` must not grow the process without end."""
    from bouquet.analytics.service import MEMO_ENTRIES

    sample_log(tmp_path / "log")
    svc = EngagementService(settings_for(tmp_path), ttl_s=3600)
    for days in range(1, MEMO_ENTRIES + 60):
        svc.figure("daily", last=days)
    assert len(svc._memo) == MEMO_ENTRIES
    assert svc.computations == 1


def test_the_headline_counts_use_with_response_and_exposure_beside(tmp_path: Path) -> None:
    """Residents shown an offer every day but who use a service once are not at a weekly
    cadence: showing more must not raise the headline."""
    log = Log()
    for i in range(12):
        log.add(f"r{i}", "use", 0)
        for day in range(35):
            log.add(f"r{i}", "view", day)
            if day % 2 == 0:
                log.add(f"r{i}", "click", day)
    log.write(tmp_path / "log")
    svc = EngagementService(settings_for(tmp_path, small_cell_k=5), ttl_s=3600)
    summary = svc.summary(None)
    headline, beside = summary["headline"], summary["beside"]
    assert headline["events"] == "use" and headline["share_weekly_plus"] == 0.0
    assert set(beside) == {"response", "exposure"}
    assert beside["exposure"]["share_weekly_plus"] == 1.0
    assert beside["response"]["share_weekly_plus"] == 1.0
    assert headline["week"] == beside["exposure"]["week"]
    use = svc.figure("contacts", events="use").rows[-1]
    shown = svc.figure("contacts", events="exposure").rows[-1]
    assert use["contacts"] == 0 and shown["contacts"] == 12 * 7
    assert svc.figure("cadence").to_json()["events"] == "use"


def test_an_empty_funnel_says_what_front_ends_must_send(tmp_path: Path) -> None:
    sample_log(tmp_path / "log")  # uses, none echoing a recommendation id
    svc = EngagementService(settings_for(tmp_path), ttl_s=3600)
    empty = svc.funnel().to_json()
    assert empty["rows"] == [] and "recommendation_id" in empty["hint"]
    assert "docs/engagement.md" in empty["hint"]
    # and where it is documented: the event contract in the API's own description
    assert empty["doc"]["href"].startswith("/docs#/events/")
    log = Log()
    for i in range(6):
        log.add(f"v{i}", "view", 1, recommendation_id=development_ids().mint(
            "v1", "personal", nonce=i))
    log.write(tmp_path / "log")
    svc.invalidate()
    filled = svc.funnel().to_json()
    assert filled["rows"] and "hint" not in filled and "doc" not in filled
