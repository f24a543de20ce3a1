"""Operator API: roles, every figure as JSON and CSV, suppression on the wire, live
counters from the real consumer, caching, and the dashboard's offline assets."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bouquet.analytics.service import EngagementService
from bouquet.analytics.synthetic import SyntheticSpec
from bouquet.analytics.synthetic import write as write_synthetic
from bouquet.core.catalog import load_catalog
from bouquet.core.recommendation import development_ids
from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics
from bouquet.streaming.consumer import IngestConsumer, IngestOptions
from bouquet.streaming.producer import EventProducer
from tests.serving.support import ADMIN, APP, OPERATOR, client_for

pytestmark = pytest.mark.anyio
CATALOG = load_catalog(None)
STATIC = Path(__file__).resolve().parents[2] / "serving" / "static"


def today_events(now: datetime, residents: int = 7) -> list[dict]:
    """A few contacts a minute ago, one carrying a recommendation id."""
    out = []
    for i in range(residents):
        out.append({"schema_version": 1, "event_id": f"op-today-{i}", "resident_id": f"t{i}",
                    "type": "use", "service_id": "bus", "channel": "app",
                    "ts": (now - timedelta(minutes=1)).isoformat()})
    out.append({"schema_version": 1, "event_id": "op-today-rec", "resident_id": "t0",
                "type": "view", "bundle_id": "compte-mobilite", "channel": "app",
                "recommendation_id": development_ids().mint("v9", "personal"),
                "ts": (now - timedelta(minutes=1)).isoformat()})
    return out


def isolated_settings(stack: Settings, root: Path) -> Settings:
    """Like the ``settings`` fixture, for a module-scoped deployment (built once: the
    consumer's group join dominates the cost)."""
    tag = uuid.uuid4().hex[:10]
    return Settings(env="test", state_dir=root / "state",
                    kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
                    redis_url=stack.redis_url, topic_events=f"t{tag}.interactions",
                    topic_dlq=f"t{tag}.interactions.dlq", topic_partitions=2,
                    consumer_group=f"g{tag}", redis_key_prefix=f"t{tag}:")


@pytest.fixture(scope="module")
def deployment(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Four months of synthetic history in the event log, and today's events ingested
    through the real consumer (so the live counters exist)."""
    settings = isolated_settings(stack, tmp_path_factory.mktemp("operator"))
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    write_synthetic(settings.event_log_path, CATALOG,
                    SyntheticSpec(residents=400, days=120, end=yesterday, seed=3))
    ensure_topics(settings)
    with EventProducer(settings) as producer:
        for event in today_events(datetime.now(UTC)):
            producer.send(event)
        producer.flush()
    options = IngestOptions.from_settings(settings, idle_seconds=1.5, session_timeout_ms=6000,
                                          heartbeat_interval_ms=1000, log_every_s=0,
                                          install_signal_handlers=False)
    IngestConsumer(settings, CATALOG, options).run()
    return settings


async def test_operator_endpoints_need_the_operator_role(deployment: Settings) -> None:
    async with client_for(deployment) as client:
        for path in ("/v1/operator/engagement", "/v1/operator/engagement/cadence",
                     "/v1/operator/funnel", "/v1/operator/live"):
            assert (await client.get(path, headers={"X-API-Key": ""})).status_code == 401
            assert (await client.get(path, headers=APP)).status_code == 403
            for key in (OPERATOR, ADMIN):
                assert (await client.get(path, headers=key)).status_code == 200, path


async def test_figures_as_json_equal_the_metrics_module(deployment: Settings) -> None:
    service = EngagementService(deployment, CATALOG)
    async with client_for(deployment) as client:
        for figure, query, last in (("cadence", "weeks=8", 8), ("stickiness", "", None),
                                    ("contacts", "weeks=3", 3), ("monthly", "months=2", 2),
                                    ("cohorts", "", None), ("daily", "days=10", 10)):
            got = (await client.get(f"/v1/operator/engagement/{figure}?{query}",
                                    headers=OPERATOR)).json()
            want = service.figure(figure, last=last).to_json()
            assert got["rows"] == want["rows"], figure
            assert got["small_cell_k"] == 5 and got["figure"] == figure
        by_nb = (await client.get("/v1/operator/engagement/cadence?by=neighbourhood&weeks=2",
                                  headers=OPERATOR)).json()
        assert {r["dimension"] for r in by_nb["rows"]} == {"neighbourhood"}
        assert len({r["week"] for r in by_nb["rows"]}) == 2
        one = (await client.get("/v1/operator/engagement/stickiness?by=domain&value=mobility",
                                headers=OPERATOR)).json()
        assert {r["value"] for r in one["rows"]} == {"mobility"}
        summary = (await client.get("/v1/operator/engagement", headers=OPERATOR)).json()
        assert summary["headline"]["week_complete"] is True
        assert summary["headline"]["events"] == "use"  # exposure never raises the headline
        assert set(summary["beside"]) == {"response", "exposure"}
        shown = (await client.get("/v1/operator/engagement/cadence?events=exposure&weeks=2",
                                  headers=OPERATOR)).json()
        assert shown["events"] == "exposure"
        assert shown["rows"] == service.figure("cadence", last=2, events="exposure").to_json()[
            "rows"]
        bad = await client.get("/v1/operator/engagement/cadence?events=views",
                               headers=OPERATOR)
        assert bad.status_code == 422
        assert set(summary["dimensions"]) == {"neighbourhood", "domain", "factor", "channel"}
        assert summary["rules"]["window_days"] == 28
        assert client.app.state.engagement_service.computations == 1  # cached


async def test_csv_exports_carry_the_same_suppressed_cells(deployment: Settings) -> None:
    async with client_for(deployment) as client:
        json_body = (await client.get("/v1/operator/engagement/contacts?by=channel&weeks=6",
                                      headers=OPERATOR)).json()
        response = await client.get("/v1/operator/engagement/contacts?by=channel&weeks=6"
                                    "&format=csv", headers=OPERATOR)
        assert response.headers["content-type"].startswith("text/csv")
        alias = await client.get("/v1/operator/engagement/contacts/export.csv?by=channel"
                                 "&weeks=6", headers=OPERATOR)
        assert alias.text == response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(json_body["rows"])
    hidden = 0
    for row, want in zip(rows, json_body["rows"], strict=True):
        flagged = [c for c in row["suppressed"].split(";") if c]
        assert flagged == want["suppressed"]
        for column in flagged:
            assert row[column] == "" and want[column] is None
            hidden += 1
        for column in ("known", "active", "h1", "h15_plus"):
            if row[column]:
                assert int(row[column]) == want[column]
                assert not 0 < int(row[column]) < 5
    assert hidden > 0, "the kiosk and desk channels of this small city have small cells"


async def test_funnel_uplift_and_bad_queries(deployment: Settings) -> None:
    async with client_for(deployment) as client:
        arms = (await client.get("/v1/operator/funnel", headers=OPERATOR)).json()
        names = {r["arm"] for r in arms["rows"]}
        assert {"v1:control", "v1:personal"} <= names
        uplift = (await client.get("/v1/operator/funnel/uplift", headers=OPERATOR)).json()
        assert uplift["baseline"] == "v1:control"
        personal = [r for r in uplift["rows"] if r["arm"] == "v1:personal"]
        assert {r["stage"] for r in personal} == {"opened", "subscribed", "used"}
        assert all(r["ci_low"] <= r["difference"] <= r["ci_high"] for r in personal)
        sliced = (await client.get("/v1/operator/funnel/uplift?by=neighbourhood",
                                   headers=OPERATOR)).json()
        assert {r["dimension"] for r in sliced["rows"]} == {"neighbourhood"}
        assert len({r["value"] for r in sliced["rows"]}) > 3
        weekly = await client.get("/v1/operator/funnel/weekly?weeks=2&format=csv",
                                  headers=OPERATOR)
        assert weekly.status_code == 200
        assert weekly.text.startswith("dimension,value,model_version,variant,week,")
        for path in ("/v1/operator/engagement/nope", "/v1/operator/engagement/cadence?by=x",
                     "/v1/operator/engagement/cadence?by=domain&value=nowhere",
                     "/v1/operator/engagement/cadence?weeks=0",
                     "/v1/operator/funnel/uplift?baseline=nope"):
            response = await client.get(path, headers=OPERATOR)
            assert response.status_code == 422, path
            assert response.json()["detail"]


async def test_live_counters_come_from_redis(deployment: Settings) -> None:
    today = datetime.now(UTC).date().isoformat()
    async with client_for(deployment) as client:
        live = (await client.get("/v1/operator/live", headers=OPERATOR)).json()
        day = {(r["dimension"], r["value"]): r["active"] for r in live["active"]["rows"]
               if r["period"] == "day" and r["bucket"] == today}
        assert day[("all", "all")] == 7
        assert day[("domain", "mobility")] == 7
        funnel = {r["arm"]: r for r in live["funnel"]["rows"]}
        assert funnel["v9:personal"]["shown_events"] is None  # one event: suppressed
        csv_text = (await client.get("/v1/operator/live/rolling?format=csv",
                                     headers=OPERATOR)).text
        assert csv_text.splitlines()[0] == "window,active,suppressed"
        summary = (await client.get("/v1/operator/engagement", headers=OPERATOR)).json()
        assert summary["live"]["active"]["day"] == today


async def test_the_dashboard_and_its_assets_are_served_from_the_project(
        deployment: Settings) -> None:
    async with client_for(deployment) as client:
        page = await client.get("/dashboard")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name, kind in (("dashboard.js", "javascript"), ("charts.js", "javascript"),
                           ("dashboard.css", "text/css")):
            asset = await client.get(f"/dashboard/assets/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"]
            assert name in page.text
        assert (await client.get("/dashboard/assets/../app.py")).status_code == 404
        assert (await client.get("/dashboard/assets/secret.txt")).status_code == 404
    for path in STATIC.iterdir():  # nothing is fetched from elsewhere
        urls = re.findall(r"https?://[^\s\"')]+", path.read_text())
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
