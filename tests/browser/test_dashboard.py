"""The engagement dashboard in a real headless Chromium (Debian's, driven by Playwright).

The API runs in a real uvicorn server on a free port, over a synthetic event log plus a
few events of today ingested by the real consumer. The test checks that the page loads
without a request leaving the server, that the charts are drawn as SVG marks carrying
data, and that every number shown equals the API's.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from bouquet.analytics.figures import MERGED_CLASSES as MERGED
from bouquet.analytics.synthetic import SyntheticSpec
from bouquet.analytics.synthetic import write as write_synthetic
from bouquet.core.catalog import load_catalog
from bouquet.core.settings import Settings
from bouquet.localstack import ensure_topics, free_port
from bouquet.serving.app import create_app
from bouquet.simulation.runner import simulate
from bouquet.streaming.consumer import IngestConsumer, IngestOptions
from bouquet.streaming.producer import EventProducer

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "dev-operator-key"
CADENCES = ["daily", "weekly", "monthly", "yearly", "dormant"]


@pytest.fixture(scope="module")
def server(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    tag = uuid.uuid4().hex[:10]
    settings = Settings(env="test", state_dir=tmp_path_factory.mktemp("dashboard") / "state",
                        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
                        redis_url=stack.redis_url, topic_events=f"t{tag}.interactions",
                        topic_dlq=f"t{tag}.interactions.dlq", topic_partitions=2,
                        consumer_group=f"g{tag}", redis_key_prefix=f"t{tag}:")
    catalog = load_catalog(None)
    # The history ends on the last Sunday, so its weeks (and the small cells the test looks
    # for in the latest complete one) are the same whatever the weekday of the run.
    today = datetime.now(UTC).date()
    last_sunday = today - timedelta(days=today.isoweekday())
    write_synthetic(settings.event_log_path, catalog,
                    SyntheticSpec(residents=600, days=150, end=last_sunday, seed=5))
    ensure_topics(settings)
    now = datetime.now(UTC) - timedelta(minutes=1)
    with EventProducer(settings) as producer:
        for i in range(9):
            producer.send({"schema_version": 1, "event_id": f"b-{i}", "resident_id": f"b{i}",
                           "type": "use", "service_id": "tram", "channel": "app",
                           "ts": now.isoformat()})
        producer.flush()
    IngestConsumer(settings, catalog, IngestOptions.from_settings(
        settings, idle_seconds=1.5, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        log_every_s=0, install_signal_handlers=False)).run()
    with serving(settings) as base:
        yield base


@pytest.fixture(scope="module")
def demo_server(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo city's generator, small and without the API in the loop: a year of
    imported records then simulated weeks, a daily class too small to show, and no event
    carrying a recommendation_id."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    tag = uuid.uuid4().hex[:10]
    settings = Settings(env="test", state_dir=tmp_path_factory.mktemp("demo") / "state",
                        redis_url=stack.redis_url, redis_key_prefix=f"t{tag}:")
    simulate(settings, residents=3000, weeks=6, seed=1, progress=False, save_residents=False)
    with serving(settings) as base:
        yield base


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The API in a real uvicorn server on a free port, for as long as the block runs."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def api(base: str, path: str) -> dict:
    response = httpx.get(base + path, headers={"X-API-Key": KEY}, timeout=30)
    response.raise_for_status()
    return response.json()


def attrs(page, selector: str, *names: str) -> list[tuple]:
    return page.eval_on_selector_all(
        selector, f"els => els.map(e => [{', '.join(f'e.getAttribute({n!r})' for n in names)}])")


def fmt_count(v) -> str:
    return "◌" if v is None else f"{round(v):,}"


def fmt_share(v) -> str:
    return "◌" if v is None else f"{100 * v:.1f}%"


def open_dashboard(browser, base: str) -> tuple:
    """A page on the dashboard, ready, with the problems it reports (failed requests,
    console errors) and every URL it fetched."""
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 else None)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{base}/dashboard#key={KEY}")
    page.wait_for_selector("body[data-ready='true']", timeout=30_000)
    return page, requests, problems


def check_cadence_chart(page, rows: list[dict]) -> dict[str, int]:
    """Every bar against the API's row: each shown class drawn with its share, each class
    of the row's ``merged`` list drawn as one band (less its parts already drawn), no
    hidden class drawn (so none looks like 0), the rest one hatched "hidden" segment;
    the legend names every merged band and the hidden segment it uses. Returns how many
    bars had a merged band and a hidden segment."""
    segments: dict[str, list[tuple[str, float]]] = {}
    for week, key, value in attrs(page, "#cadence-chart rect.segment", "data-label",
                                  "data-key", "data-value"):
        segments.setdefault(week, []).append((key, float(value)))
    assert set(segments) == {r["week"] for r in rows if r["known"] != 0}  # 0: nobody yet
    legend = set(page.eval_on_selector_all("#cadence-legend span[data-key]",
                                           "els => els.map(e => e.dataset.key)"))
    seen = {"merged": 0, "hidden": 0}
    for r in rows:
        drawn = dict(segments.get(r["week"], []))
        assert len(drawn) == len(segments[r["week"]]), r["week"]  # each key once
        covered = set()
        for c in CADENCES:
            if r[f"share_{c}"] is not None:
                assert drawn[c] == pytest.approx(r[f"share_{c}"]), (r["week"], c)
                covered.add(c)
            else:
                assert c not in drawn, (r["week"], c)  # hidden, never drawn as a value
        for merged in r["merged"]:
            parts = MERGED[merged]
            below = sum(r[f"share_{p}"] for p in parts if p in covered)
            assert drawn[merged] == pytest.approx(r[f"share_{merged}"] - below), r["week"]
            assert merged in legend, merged
            covered |= set(parts)
            seen["merged"] += 1
        shown = {c for c in CADENCES if r[f"share_{c}"] is not None}
        assert set(drawn) - {"suppressed"} == shown | set(r["merged"]), r["week"]
        if covered != set(CADENCES) and r["known"] != 0:
            assert drawn["suppressed"] > 0, r["week"]
            assert "suppressed" in legend
            seen["hidden"] += 1
        else:
            assert "suppressed" not in drawn, r["week"]
    return seen


def test_dashboard_draws_what_the_api_says(server: str, browser) -> None:
    page, requests, problems = open_dashboard(browser, server)

    # the key left the address bar for sessionStorage; nothing was fetched elsewhere
    assert "key=" not in page.url
    assert page.evaluate("sessionStorage.getItem('bouquet.operatorKey')") == KEY
    assert all(u.startswith(server) for u in requests), [u for u in requests
                                                         if not u.startswith(server)]
    assert not problems, problems

    # headline cards = the summary's headline
    summary = api(server, "/v1/operator/engagement")
    head = summary["headline"]
    assert page.inner_text("#headline-known") == fmt_count(head["known"])
    for field in ("share_weekly_plus", "share_dormant", "dau_mau", "wau_mau"):
        assert page.inner_text(f"#headline-{field}") == fmt_share(head[field]), field
    assert page.inner_text("#headline-live_today") == "9"
    # the headline counts use; response and exposure are beside it, from the same summary
    assert head["events"] == "use"
    for events in ("response", "exposure"):
        assert page.inner_text(f"#headline-{events}_share_weekly_plus") == \
            fmt_share(summary["beside"][events]["share_weekly_plus"]), events
    assert "any contact" in page.inner_text("#headline")  # live counters say what they count

    # cohorts: a hidden retention is ◌ (the legend's "hidden"), never the "–" of no residents
    cohort_rows = api(server, "/v1/operator/engagement/cohorts?months=12")["rows"]
    drawn_cohorts = dict(page.eval_on_selector_all(
        "#cohorts tbody tr", "rows => rows.map(r => [r.dataset.key, Object.fromEntries("
        "[...r.cells].map(c => [c.dataset.col, c.textContent]))])"))
    hidden_cohorts = 0
    for r in cohort_rows:
        shown = drawn_cohorts[r["cohort"]].get(f"m{r['months_since']}")
        if shown is None:  # beyond the twelve months the table draws
            continue
        hidden = "retention" in r["suppressed"]
        want = "◌" if hidden else "–" if r["retention"] is None else fmt_share(r["retention"])
        assert shown == want, (r["cohort"], r["months_since"])
        hidden_cohorts += hidden
    assert hidden_cohorts > 0, "this small city's cohorts have hidden cells"

    # cadence: one stacked bar per week, each segment = the API's share
    cadence = api(server, "/v1/operator/engagement/cadence?weeks=26")["rows"]
    assert len(cadence) >= 20
    check_cadence_chart(page, cadence)
    heights = page.eval_on_selector_all("#cadence-chart rect.segment",
                                        "els => els.map(e => e.getBBox().height)")
    assert max(heights) > 20  # rendered, with a size

    # stickiness: the points are the API's ratios
    stick = {r["week"]: r for r in api(server,
                                       "/v1/operator/engagement/stickiness?weeks=26")["rows"]}
    points = attrs(page, "#stickiness-chart circle.point", "data-series", "data-label",
                   "data-value")
    assert len(points) >= 40
    for series, week, value in points:
        assert float(value) == pytest.approx(stick[week][series]), (series, week)

    # funnel by variant: bars = residents per stage
    arms = {r["arm"]: r for r in api(server, "/v1/operator/funnel?weeks=26")["rows"]}
    bars = attrs(page, "#funnel-chart rect.stage", "data-arm", "data-stage", "data-value")
    assert {b[0] for b in bars} == set(arms)
    column = {"shown": "residents_shown", "opened": "opened_residents",
              "subscribed": "subscribed_residents", "used": "used_residents"}
    for arm, stage, value in bars:
        assert int(value) == arms[arm][column[stage]], (arm, stage)
    assert "hint" not in api(server, "/v1/operator/funnel?weeks=26")
    assert page.is_hidden("#funnel-hint")  # shown only when the API says the funnel is empty
    uplift = api(server, "/v1/operator/funnel/uplift?weeks=26")
    assert page.inner_text("#uplift-baseline") == uplift["baseline"]
    assert page.locator("#uplift tbody tr").count() == len(uplift["rows"])
    # outreach: no nudge in this city yet, so both tables say so (and the page loaded them)
    for table_id, path in (("#outreach", "/v1/operator/outreach?weeks=12"),
                           ("#outreach-lift", "/v1/operator/outreach/lift?weeks=12")):
        assert api(server, path)["rows"] == []
        assert page.inner_text(f"{table_id} tbody") == "no data yet"

    # breakdown table (neighbourhood, latest complete week): every cell = the API, hidden
    # ones ◌, shares of nobody –
    rows = api(server, "/v1/operator/engagement/cadence?by=neighbourhood&weeks=2")["rows"]
    week = max(r["week"] for r in rows if r["week_complete"])
    assert page.inner_text("#breakdown-week") == week
    table = {r["value"]: r for r in rows if r["week"] == week}
    cells = attrs(page, "#breakdown tbody td", "data-col")
    texts = page.eval_on_selector_all("#breakdown tbody tr", "rows => rows.map(r => "
                                      "[r.dataset.key, [...r.cells].map(c => c.textContent)])")
    assert {k for k, _ in texts} == set(table) and cells
    hidden_seen = 0
    for value, shown in texts:
        row = table[value]
        assert shown[2] == fmt_count(row["known"])
        for i, c in enumerate(CADENCES):
            share = row[f"share_{c}"]
            want = "–" if share is None and f"share_{c}" not in row["suppressed"] else \
                fmt_share(share)
            assert shown[3 + i] == want, (value, c)
            hidden_seen += shown[3 + i] == "◌"
    assert hidden_seen > 0, "small neighbourhoods of this synthetic city have hidden cells"

    # a filter: domain = mobility redraws the charts for that slice only
    page.select_option("#by", "domain")
    page.wait_for_selector("body[data-ready='true']")
    page.select_option("#value", "mobility")
    # (no wait_for_function: the page's CSP forbids eval, which it would need)
    page.locator("#cadence-scope", has_text="mobility").wait_for()
    page.wait_for_selector("body[data-ready='true']")
    check_cadence_chart(page, api(
        server, "/v1/operator/engagement/cadence?by=domain&value=mobility&weeks=26")["rows"])
    assert page.inner_text("#breakdown-dimension") == "domain"
    sliced = {r["arm"]: r for r in api(
        server, "/v1/operator/funnel?weeks=26&by=domain&value=mobility")["rows"]}
    for arm, stage, value in attrs(page, "#funnel-chart rect.stage", "data-arm",
                                   "data-stage", "data-value"):
        assert int(value) == sliced[arm][column[stage]], (arm, stage)
    assert not problems, problems


def test_a_wrong_key_asks_for_the_key_again(server: str, browser) -> None:
    page = browser.new_page()
    page.goto(f"{server}/dashboard#key=not-a-key")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "unknown API key" in page.inner_text("#key-error")
    assert page.is_hidden("#main")
    page.fill("#key-input", KEY)
    page.click("#key-form button")
    page.wait_for_selector("body[data-ready='true']", timeout=30_000)
    assert page.locator("#cadence-chart rect.segment").count() > 0


def test_demo_city_shows_merges_the_seam_and_what_the_funnel_needs(demo_server: str,
                                                                   browser) -> None:
    page, _, problems = open_dashboard(browser, demo_server)
    assert not problems, problems

    # a daily class too small to show is merged into "weekly or better", drawn and named
    cadence = api(demo_server, "/v1/operator/engagement/cadence?weeks=26")["rows"]
    seen = check_cadence_chart(page, cadence)
    assert seen["merged"] > 0, "this city's daily class is small: rows must be merged"
    assert all(r["monthly"] is not None for r in cadence if "weekly_plus" in r["merged"])

    # where observed use begins after a year of imported records: explained, and marked
    # on every weekly chart at the week the API names, with a legend entry
    seam = api(demo_server, "/v1/operator/engagement")["backfill"]
    assert seam is not None
    assert page.inner_text("#backfill-note") == seam["note"]
    for chart in ("cadence", "stickiness", "contacts"):
        assert attrs(page, f"#{chart}-chart line.backfill", "data-label") == \
            [[seam["observed_from_week"]]], chart
        assert page.locator(f"#{chart}-legend span[data-key='backfill']").count() == 1

    # no event echoes a recommendation_id: the funnel panel says what front ends must send
    # and links to where the event contract documents it
    funnel = api(demo_server, "/v1/operator/funnel?weeks=26")
    assert funnel["rows"] == [] and funnel["hint"]
    assert page.is_visible("#funnel-hint")
    assert funnel["hint"] in page.inner_text("#funnel-hint")
    assert "recommendation_id" in page.inner_text("#funnel-hint")
    href = page.get_attribute("#funnel-doc", "href")
    assert href == funnel["doc"]["href"]
    described = httpx.get(demo_server + "/openapi.json", timeout=30).json()
    assert "echo it in the view, click, subscribe and use events" in json.dumps(
        described["paths"]["/v1/events"]["post"])
    assert httpx.get(demo_server + href.split("#")[0], timeout=30).status_code == 200
    assert not problems, problems
