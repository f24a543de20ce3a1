"""``bouquet demo [--quick]``: the whole engine, end to end, on the embedded local stack.

Each stage is the same ``bouquet`` command a user would type, run in order with the same
environment, so the demo proves the commands compose: stack up → simulate the demo city's
year of history through Kafka → ingest → compact the log (the nightly job, once) → train
(MLflow) → publish (Redis) → serve (HTTP), with ingestion behind it → the city's weeks, its
residents answered by the API in the loop
(the champion arm: the trained model once training promoted one, else the popular lists
``bouquet publish`` serves without a champion; the baseline arm: popular lists;
recommendation ids minted by serving; each week ingested before the next is answered;
every day the outreach planner plans the day's nudges, which the run delivers as the city's
messaging gateway would and reports opens and opt-outs through the API)
→ ask for bundles, send an event and see the answer change → engagement report, funnel
and uplift.
``--quick`` uses a smaller city and exits when done (tests use it); the full demo keeps the
API, the dashboard and the MLflow UI running until Ctrl-C, then stops what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import httpx
import typer
from rich.console import Console
from rich.rule import Rule

from bouquet.core.keys import Keys
from bouquet.core.settings import (
    DEFAULT_MAX_PAST_SKEW_S,
    DEV_API_KEYS,
    Settings,
    get_settings,
)

console = Console()


@dataclass(frozen=True)
class DemoSize:
    residents: int
    weeks: int  # simulated weeks, every one answered by the API
    search_trials: int


# Sized so the dashboard's headline (residents at a weekly or daily cadence) is not a
# suppressed small cell and the hold-out (the history's last weeks, when most offers were
# taken) has enough residents for a model to be judged against popularity.
QUICK = DemoSize(residents=6000, weeks=7, search_trials=0)
FULL = DemoSize(residents=20000, weeks=8, search_trials=4)
#: The demo's experiment unless BOUQUET_EXPERIMENTS says otherwise: a baseline arm of
#: popular lists beside the champion, so the funnel has two arms and the uplift a baseline.
EXPERIMENT = {"salt": "demo", "variants": [{"name": "champion", "share": 0.8},
                                           {"name": "popular", "share": 0.2}]}


class StageFailed(RuntimeError):
    pass


def _bouquet(*args: str, env: dict[str, str], title: str) -> None:
    """Run one ``bouquet`` command as its own process, as a user would."""
    console.print(Rule(f"[bold]{title}[/]  [dim]bouquet {' '.join(args)}[/]", align="left"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bouquet", *args], env=env, check=False)
    if result.returncode != 0:
        raise StageFailed(f"`bouquet {' '.join(args)}` exited with {result.returncode}")
    console.print(f"[dim]{title}: {time.monotonic() - started:.1f} s[/]")


def _wait_ready(base: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{base}/readyz", timeout=2)
            if answer.status_code == 200:
                return answer.json()
            last = answer.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise StageFailed(f"the API at {base} did not become ready: {last}")


def _show_live_personalisation(base: str, settings: Settings) -> None:
    """Ask for a resident's bundles, send what they just did, ask again."""
    app_key = next(k for k, role in settings.api_keys.items() if role == "app")
    operator_key = next(k for k, role in settings.api_keys.items() if role == "operator")
    headers = {"X-API-Key": app_key}
    summary = httpx.get(f"{base}/v1/operator/engagement", headers={"X-API-Key": operator_key},
                        timeout=60)
    if summary.status_code != 200:
        raise StageFailed(f"GET /v1/operator/engagement answered {summary.status_code}")
    resident, body = _a_personalised_answer(base, headers, settings)
    console.print(f"bundles for {resident} (model {body.get('model_version')}, "
                  f"variant {body.get('variant')}, personalised={body.get('personalised')}, "
                  f"re-ranked={body.get('reranked')}):")
    for item in body.get("bundles", []):
        console.print(f"  {item['bundle_id']:<28} {item['score']:<9.3g} {item['reason']}")
    top = body["bundles"][0] if body.get("bundles") else None
    if top is None:
        return
    event = {"schema_version": 1, "event_id": f"demo-{int(time.time() * 1000)}",
             "resident_id": resident, "type": "dismiss", "bundle_id": top["bundle_id"],
             "ts": datetime.now(UTC).isoformat(), "channel": "app",
             "recommendation_id": body.get("recommendation_id")}
    posted = httpx.post(f"{base}/v1/events", json=event, headers=headers, timeout=10)
    console.print(f"POST /v1/events (dismiss {top['bundle_id']}): HTTP {posted.status_code}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        again = httpx.get(f"{base}/v1/residents/{resident}/bundles?k=3", headers=headers,
                          timeout=10).json()
        if all(b["bundle_id"] != top["bundle_id"] for b in again.get("bundles", [])):
            console.print(f"  a moment later {top['bundle_id']} is gone: "
                          + ", ".join(b["bundle_id"] for b in again["bundles"]))
            return
        time.sleep(0.3)
    console.print("[yellow]the dismissed bundle was still shown after 10 s[/]")


def _a_personalised_answer(base: str, headers: dict[str, str], settings: Settings,
                           tries: int = 200) -> tuple[str, dict]:
    """A consenting resident with a published list, and their current answer."""
    from bouquet.core.redisclient import redis_client

    client = redis_client(settings.redis_url, decode_responses=True)
    pattern = Keys(settings.redis_key_prefix).profiles_pattern()
    last: tuple[str, dict] | None = None
    for key in client.scan_iter(match=pattern, count=500):
        if client.hget(key, "consent") != "1":
            continue
        resident = key.split("{", 1)[1].split("}", 1)[0]
        answer = httpx.get(f"{base}/v1/residents/{resident}/bundles?k=3", headers=headers,
                           timeout=10)
        if answer.status_code != 200:
            raise StageFailed(f"GET bundles answered {answer.status_code}: {answer.text}")
        last = (resident, answer.json())
        if last[1].get("personalised") and last[1].get("bundles"):
            return last
        tries -= 1
        if tries == 0:
            break
    if last is None:
        raise StageFailed("no resident with personalisation consent was ingested")
    return last


def backfill_skew(weeks: int) -> dict[str, int]:
    """Past limits (s) per channel that admit a simulated past of ``weeks`` weeks ending
    yesterday, for every channel that has a limit by default."""
    return {channel: (7 * weeks + 2) * 86400 for channel in DEFAULT_MAX_PAST_SKEW_S}


def demo(
    quick: bool = typer.Option(False, "--quick", help="Smaller city; exit when done."),
    residents: int | None = typer.Option(None, "--residents", help="Override the city size."),
    weeks: int | None = typer.Option(None, "--weeks", help="Override the simulated weeks."),
) -> None:
    """Run every stage end to end on the local stack, then say where to look."""
    settings = get_settings()
    size = QUICK if quick else FULL
    n_residents = str(residents or size.residents)
    n_weeks = weeks or size.weeks
    from bouquet.simulation.behaviour import BehaviourParams

    # one calendar for both halves of the city's simulation (the second resumes the first)
    end = datetime.now(ZoneInfo(BehaviourParams().timezone)).date().isoformat()
    city = ["--residents", n_residents, "--weeks", str(n_weeks), "--end", end, "--to", "kafka",
            "--no-progress" if quick else "--progress"]
    env = dict(os.environ)
    env.setdefault("BOUQUET_EXPERIMENTS", json.dumps(EXPERIMENT))
    # the demo backfills a simulated past through Kafka: people's channels may carry events
    # as old as the simulated weeks here (a deployment keeps a week: BOUQUET_MAX_PAST_SKEW_S)
    env.setdefault("BOUQUET_MAX_PAST_SKEW_S", json.dumps(backfill_skew(int(n_weeks))))
    base = f"http://{settings.api_host}:{settings.api_port}"
    background: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        _bouquet("stack", "up", *([] if quick else ["--mlflow-ui"]), env=env,
                 title="1/8 local stack")
        _bouquet("simulate", "run", *city, "--until-week", "0", env=env,
                 title="2/8 simulate the demo city's year of history through Kafka")
        _bouquet("ingest", "--until-idle", "--idle-seconds", "3", env=env,
                 title="3/8 ingest: validate, log, real-time state")
        # the backfill wrote a file per batch and day: merged as the nightly compaction
        # would (docs/privacy.md), so training, the daily plans and the reports read a file
        # per day instead of several
        _bouquet("compact", "--min-files", "2", "--no-aof", env=env,
                 title="3/8 compact the event log: one file per day, erasures applied")
        train_args = ["train"]
        if quick:
            train_args += ["--baselines", ""]  # BPR is the slowest baseline, and only a reference
        if size.search_trials:
            train_args += ["--search", "random", "--trials", str(size.search_trials)]
        _bouquet(*train_args, env=env, title="4/8 train and register in MLflow")
        _bouquet("publish", env=env, title="5/8 publish the champion to Redis")
        console.print(Rule("[bold]6/8 serve, with ingestion running behind it[/]",
                           align="left"))
        for command in (["serve", "--workers", "2"], ["ingest", "--log-every", "600"]):
            background.append(subprocess.Popen([sys.executable, "-m", "bouquet", *command],
                                               env=env, start_new_session=True))
        server = background[0]
        ready = _wait_ready(base)
        console.print(f"ready: {json.dumps(ready)}")
        _bouquet("simulate", "run", *city, "--from-week", "0", "--api-url", base, "--outreach",
                 env=env, title=f"7/8 {n_weeks} weeks of the city, its residents answered by "
                                "the API (champion and popular arms) and nudged by outreach")
        console.print(Rule("[bold]8/8 live personalisation and engagement[/]", align="left"))
        _show_live_personalisation(base, settings)
        _bouquet("report", "engagement", "--weeks", "4", env=env, title="engagement report")
        console.print(Rule("[bold green]Bouquet demo is up[/]", align="left"))
        console.print(f"  demo ran in {(time.monotonic() - started) / 60:.1f} min")
        if quick:
            # the API and the dashboard stop with this command: no address to open
            console.print("  quick demo: the API, the dashboard and the local stack stop now; "
                          "`make demo` keeps them running")
        else:
            console.print(f"  API docs    {base}/docs")
            operator_key = next(k for k, r in settings.api_keys.items() if r == "operator")
            # a link carrying the key only for the public development key (in a fragment,
            # which the browser never sends); a real key is typed into the page
            fragment = f"#key={operator_key}" if operator_key in DEV_API_KEYS else ""
            console.print(f"  dashboard   {base}/dashboard{fragment}")
            console.print(f"  MLflow UI   http://127.0.0.1:{settings.local_mlflow_port}")
        console.print(f"  event log   {settings.event_log_path}")
        if not quick:
            console.print("Press Ctrl-C to stop the API and the local stack.")
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
    except StageFailed as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        for process in background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in background:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        subprocess.run([sys.executable, "-m", "bouquet", "stack", "down"], env=env, check=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
