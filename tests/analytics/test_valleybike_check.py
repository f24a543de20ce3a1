"""Real check: the engagement report on real riders (ValleyBike Share) is right.

The path is the real one, end to end, through the command line: ``bouquet replay
valleybike trips.tsv.gz`` produces every trip to the Kafka-protocol broker,
``bouquet ingest --until-idle`` consumes it into the event log and Redis, and ``bouquet
report engagement --json`` reports. (The Kafka path fits in about a minute on two cores:
~150,000 events; the replay's direct event-log mode is not used.)

The expected figures are recomputed here from the file with plain pandas, sharing no code
with the replay or the metrics: the same documented trip rules as the replay (a trip needs
a start time; a start more than 45 days from the middle of the month its route id is
tagged with — or, untagged, more than 30 days before its end — is a clock error; an end
before the start is dropped; trips under a minute are false starts), then riders, trips,
the share of riders with a single trip and, for a month of the season, the mean weekly
actives over the monthly actives (weeks assigned to the month of their Thursday).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bouquet.core import settings as settings_module
from bouquet.core.settings import Settings

pytestmark = pytest.mark.slow

MONTHS = ("2019-07", "2019-10", "2020-08")


def independent_figures(path: Path) -> dict:
    raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    start = pd.to_datetime(raw["started_at"].replace("-", None), errors="coerce", utc=True,
                           format="ISO8601")
    end = pd.to_datetime(raw["ended_at"].replace("-", None), errors="coerce", utc=True,
                         format="ISO8601")
    tag = raw["route_id"].str.extract(r"^route_(\d{2})_(\d{4})@")
    tagged = tag[0].notna()
    middle = pd.to_datetime(tag[1] + "-" + tag[0] + "-16", errors="coerce", utc=True)
    clock_error = (tagged & ((start - middle).abs() > pd.Timedelta(days=45))) | \
        (~tagged & ((end - start) > pd.Timedelta(days=30)))
    duration = (end - start).dt.total_seconds()
    keep = start.notna() & ~clock_error.fillna(False) & ~(duration < 0) & ~(duration < 60)
    trips = pd.DataFrame({"user": raw.loc[keep, "user_id"], "start": start[keep]})
    per_rider = trips.groupby("user").size()
    out = {"rows": len(raw), "trips": len(trips), "riders": int(per_rider.size),
           "single_share": float((per_rider == 1).mean()), "wau_over_mau": {}}
    day = trips["start"].dt.tz_convert("UTC").dt.floor("D")
    monday = day - pd.to_timedelta(day.dt.weekday, unit="D")
    thursday_month = (monday + pd.Timedelta(days=3)).dt.strftime("%Y-%m")
    month = day.dt.strftime("%Y-%m")
    for m in MONTHS:
        mau = trips.loc[month == m, "user"].nunique()
        weekly = trips[thursday_month == m].groupby(monday[thursday_month == m])["user"]
        out["wau_over_mau"][m] = weekly.nunique().mean() / mau
    return out


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        "BOUQUET_ENV": "test", "BOUQUET_STATE_DIR": str(settings.state_dir),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": settings.redis_url, "BOUQUET_TOPIC_EVENTS": settings.topic_events,
        "BOUQUET_TOPIC_DLQ": settings.topic_dlq, "BOUQUET_TOPIC_PARTITIONS": "2",
        "BOUQUET_CONSUMER_GROUP": settings.consumer_group,
        "BOUQUET_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "BOUQUET_INGEST_SESSION_TIMEOUT_MS": "6000",
        "BOUQUET_INGEST_HEARTBEAT_INTERVAL_MS": "1000",
    }


def test_report_on_real_riders_matches_an_independent_count(
        settings: Settings, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bouquet.cli import app

    path = shared_data / "valleybike" / "trips.tsv.gz"
    for name, value in cli_env(settings).items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    runner = CliRunner()
    try:
        replay = runner.invoke(app, ["replay", "valleybike", str(path), "--no-progress",
                                     "--json", str(settings.state_dir / "replay.json")])
        assert replay.exit_code == 0, replay.output
        ingest = runner.invoke(app, ["ingest", "--until-idle", "--idle-seconds", "2",
                                     "--log-every", "0"])
        assert ingest.exit_code == 0, ingest.output
        report = runner.invoke(app, ["report", "engagement", "--json", "--weeks", "200"])
        assert report.exit_code == 0, report.output
    finally:
        settings_module.get_settings.cache_clear()
    tables = json.loads(report.output)
    want = independent_figures(path)
    counts = json.loads((settings.state_dir / "replay.json").read_text())["counts"]
    assert counts["rows"] == want["rows"] == 135_972

    source = tables["summary"]["source"]
    assert source["contacts"] == want["trips"]
    assert source["contacted_residents"] == want["riders"]
    life = tables["lifetime"]["rows"][0]
    assert (life["dimension"], life["residents"], life["contacts"]) == \
        ("all", want["riders"], want["trips"])
    assert life["share_single"] == pytest.approx(want["single_share"], abs=1e-6)
    monthly = {r["month"]: r for r in tables["monthly"]["rows"]}
    for month, ratio in want["wau_over_mau"].items():
        assert monthly[month]["wau_mau"] == pytest.approx(ratio, abs=1e-6), month
    # the shape the simulator is calibrated on: most riders ride once or twice, weekly
    # actives are about a third of monthly actives in season
    assert 0.3 < want["single_share"] < 0.45
    assert 0.25 < monthly["2019-07"]["wau_mau"] < 0.45
