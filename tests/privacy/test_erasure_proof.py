"""The proof the issue asks for: after an erasure, no Redis key or value, no file under the
state directory — event log, model artifacts, MLflow store, Redis's own append-only file,
audit log, erasure register — and nothing produced later (training, publish) contains the
erased resident's id.

A whole deployment of its own (``LocalStack``: broker, Redis with its AOF *inside* the
state directory, SQLite MLflow store), driven the way an operator does: events through
Kafka and the real consumer, ``train``, ``bouquet publish``, the admin API's ``DELETE``,
``bouquet compact --models``, ``bouquet train``, ``bouquet publish``. Before the erasure the
same searches find the id everywhere it should be (so they can fail), and afterwards a
control resident is still found (so they did look). On the way, a third resident withdraws
consent over the API: answered non-personalised at once, absent from the retrained model.
The copies an erasure could leave behind are part of it: an event stamped after the request
by a device whose clock runs ahead (and a copy of it arriving after the erasure), a model
artifact of a training run never registered, and a dead letter of the resident.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from kafka import KafkaConsumer
from typer.testing import CliRunner

from bouquet.core.eventlog import read_events
from bouquet.core.keys import Keys
from bouquet.core.settings import Settings
from bouquet.localstack import LocalStack, free_port
from bouquet.models.deployable import (
    DeployableModel,
    find_model_dir,
    load_model_dir,
    model_location,
)
from bouquet.privacy.audit import audit_path, chain_key, resident_ref, verify_chain
from bouquet.privacy.compaction import rewrite_redis_aof
from bouquet.privacy.erasure import ErasureCascade
from tests.privacy.helpers import (
    file_occurrences,
    ingest_until_idle,
    produce_events,
    redis_occurrences,
)
from tests.serving.support import ADMIN, client_for

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.anyio,
              pytest.mark.timeout(300)]
END = date(2025, 6, 2)
ERASED, KEPT, WITHDRAWN = "zqErased7k", "zqKeptRes2", "zqWithdrw3"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from bouquet.core import settings as settings_module

    # the residents' histories are a year old: replayed as a backfill, no past limit
    settings = Settings(env="test", state_dir=tmp_path / "state",
                        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
                        redis_url=f"redis://127.0.0.1:{free_port()}/0", topic_partitions=2,
                        max_past_skew_s={})
    stack = LocalStack(settings)
    stack.up(timeout_s=60)
    for name in ("MLFLOW_TRACKING_URI", "BOUQUET_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"BOUQUET_ENV": "test", "BOUQUET_STATE_DIR": str(settings.state_dir),
                        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                        "REDIS_URL": settings.redis_url,
                        "BOUQUET_TOPIC_PARTITIONS": "2", "BOUQUET_MAX_PAST_SKEW_S": "{}"}.items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    try:
        yield settings
    finally:
        settings_module.get_settings.cache_clear()
        stack.down()


def cli(*args: str) -> str:
    from bouquet.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def history(rid: str) -> list[dict]:
    """A consenting resident with a profile and a few weeks of contacts before the cut-off."""
    start = datetime(2025, 3, 20, 9, tzinfo=UTC)
    events = [{"type": "profile", "ts": start, "context": {"neighbourhood": "gare"}},
              {"type": "consent", "ts": start, "value": 1}]
    services = ["bike-share", "tram", "bus", "bike-share", "car-share"]
    for d in range(24):
        events.append({"type": ("use", "click", "view")[d % 3], "ts": start + timedelta(days=d),
                       "service_id": services[d % len(services)]})
    events.append({"type": "subscribe", "ts": start + timedelta(days=25),
                   "bundle_id": "maas-urban"})
    return [{"schema_version": 1, "event_id": f"ev-{uuid.uuid4().hex}", "resident_id": rid,
             "channel": "app", **e, "ts": e["ts"].isoformat()} for e in events]


def contact(rid: str, kind: str, at: datetime) -> dict:
    return {"schema_version": 1, "event_id": f"ev-{uuid.uuid4().hex}", "resident_id": rid,
            "type": kind, "service_id": "bike-share", "ts": at.isoformat(), "channel": "app"}


def malformed_bytes(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def dead_letters(settings: Settings) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every record of the dead-letter topic, in order."""
    consumer = KafkaConsumer(settings.topic_dlq, **settings.kafka_client_options(),
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        return [(record.key, record.value) for record in consumer]
    finally:
        consumer.close()


def champion_model(settings: Settings) -> DeployableModel:
    """The champion's model files, read where the MLflow store keeps them (not a copy)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    version = client.get_model_version_by_alias(settings.registered_model, "champion")
    location = model_location(client, version.source)
    return load_model_dir(find_model_dir(Path(location.removeprefix("file://"))))


async def test_after_an_erasure_no_key_file_or_later_artifact_holds_the_id(
        deployment: Settings) -> None:
    from bouquet.pipelines.train import TrainOptions, train
    from bouquet.simulation.runner import simulate

    settings = deployment
    state = settings.state_dir
    simulate(settings, residents=600, weeks=10, seed=5, end=END, progress=False,
             save_residents=False)
    # beyond the history: an event from a device whose clock runs ahead (stamped after the
    # erasure request to come), and a malformed one that ends in the dead-letter topic
    started = datetime.now(UTC)
    ahead = contact(ERASED, "use", started + timedelta(minutes=4))
    malformed = {**contact(ERASED, "use", started), "service_id": "teleporter"}
    produce_events(settings, history(ERASED) + history(KEPT) + history(WITHDRAWN)
                   + [ahead, malformed])
    ingest_until_idle(settings)
    train(settings, TrainOptions(params={"factors": 8}, baselines=(), refit=False,
                                 progress=False, candidates=("als",), force=True))
    # a run logged without registration (an experiment): its model holds the resident
    unregistered = train(settings, TrainOptions(params={"factors": 8}, baselines=(),
                                                refit=False, progress=False, candidates=("als",),
                                                force=True, register=False))
    assert unregistered.version is None
    cli("publish", "--no-progress")
    client = redis.Redis.from_url(settings.redis_url)
    keys = Keys(settings.redis_key_prefix)
    reference = resident_ref(ERASED, settings.pseudonym_secret)
    letters = dead_letters(settings)
    assert [k.split(b":")[0] for k, v in letters if v] == [reference.encode()]
    assert all(ERASED.encode() not in k for k, _ in letters)  # keyed by reference only

    # before: the searches find the id in every store that should hold it
    trained = champion_model(settings).resident_ids.tolist()
    assert ERASED in trained and WITHDRAWN in trained
    in_redis = redis_occurrences(client, ERASED)
    assert any(":recent" in f for f in in_redis) and any(":b:{" in f for f in in_redis)
    assert any("{eng}:last_contact" in f for f in in_redis)
    assert rewrite_redis_aof(client) == "rewritten"  # even a rewritten AOF holds live keys
    found = file_occurrences(state, ERASED)
    for where in ("eventlog", "mlartifacts", "appendonlydir"):
        assert any(where in f for f in found), (where, found)
    async with client_for(settings) as c:
        answer = (await c.get(f"/v1/residents/{ERASED}/bundles")).json()
        assert answer["personalised"] is True
        erased = await c.delete(f"/v1/residents/{ERASED}", headers=ADMIN)
        assert erased.status_code == 200, erased.text
        assert erased.json()["published_lists_deleted"] == 2
        assert (await c.get(f"/v1/residents/{ERASED}/bundles")).json()["personalised"] is False
        # and another resident objects to personalisation
        withdrawn = await c.put(f"/v1/residents/{WITHDRAWN}/consent",
                                json={"personalisation": False})
        assert withdrawn.status_code == 200 and withdrawn.json()["effective"] is True
        assert (await c.get(f"/v1/residents/{WITHDRAWN}/bundles")).json()["personalised"] \
            is False

    # publishing the old champion again (no retraining yet) leaves the resident out
    cli("publish", "--no-progress")
    current = client.get(keys.current_version()).decode()
    assert not client.exists(keys.recs(current, ERASED, "b"))
    assert client.exists(keys.recs(current, KEPT, "b"))

    # the erase event reaches the log and the consumer (wired as `bouquet ingest` wires
    # it); readers no longer see the resident — the event stamped ahead included: the
    # cutoff is the later of the request and the newest event time seen
    hooks = ErasureCascade(settings, client)
    ingest_until_idle(settings, erasure=hooks)
    assert ERASED not in set(read_events(settings.event_log_path)["resident_id"])
    # a copy from that device, stamped before the cutoff, arriving now: never written
    produce_events(settings, [contact(ERASED, "click", started + timedelta(minutes=3))])
    assert ingest_until_idle(settings, erasure=hooks).erased_late == 1
    assert ERASED not in set(read_events(settings.event_log_path)["resident_id"])

    report = json.loads(cli("compact", "--models", "--now", "2025-06-10T00:00:00+00:00"))
    # the simulated city has erasures of its own: at least ours, 27 events and 1 request
    assert report["log"]["dropped_erased"] >= 27 and report["log"]["dropped_erase_events"] >= 1
    assert report["redis_aof"] == "rewritten"
    assert isinstance(report["models"], list), report["models"]
    assert sorted((m["version"] is None, m["rows_removed"]) for m in report["models"]) == [
        (False, 1), (True, 1)]  # the champion and the run never registered
    assert report["dead_letters"]["tombstoned"] == 1
    assert [v for k, v in dead_letters(settings) if k.startswith(reference.encode())] \
        == [malformed_bytes(malformed), None]  # the letter, then its tombstone
    scrubbed = champion_model(settings)
    assert ERASED not in scrubbed.resident_ids.tolist() and KEPT in scrubbed.resident_ids
    assert np.isfinite(scrubbed.score(np.arange(2), "b")).all()

    # the next training and publish, made after the erasure
    cli("train", "--no-progress", "--candidates", "als", "--baselines", "", "--no-refit",
        "-p", "factors=8", "--force")
    retrained = champion_model(settings).resident_ids.tolist()
    assert ERASED not in retrained and WITHDRAWN not in retrained and KEPT in retrained
    cli("publish", "--no-progress")

    # after: nothing anywhere, and the control resident is still found everywhere
    assert redis_occurrences(client, ERASED) == []
    assert file_occurrences(state, ERASED) == []
    found = file_occurrences(state, KEPT)
    for where in ("eventlog", "mlartifacts", "appendonlydir"):
        assert any(where in f for f in found), (where, found)
    assert any(":b:{" in f for f in redis_occurrences(client, KEPT))

    # and the audit trail says who did it, without the id
    ok, count, problem = verify_chain(audit_path(settings), chain_key(settings))
    assert ok, problem
    actions = [json.loads(line)["action"] for line in audit_path(settings).read_text()
               .splitlines()]
    for action in ("publish", "erasure", "compaction", "promotion"):
        assert action in actions, actions
    client.close()
