"""Schema-driven fuzz of the whole HTTP API from its own OpenAPI document (schemathesis):
every operation, with valid data and with data that violates the schema, with each role's
key and with no key — zero 5xx. Runs against a real Redis (a published version, profiles)
and the real broker, with the app's lifespan (model holder) running."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bouquet.core.catalog import load_catalog
from bouquet.localstack import ensure_topics
from bouquet.serving.app import create_app
from tests.serving.support import ADMIN, APP, OPERATOR, publish, set_profile, small_model

CATALOG = load_catalog()
#: (headers, generation mode, examples per operation)
PLAN = [
    (ADMIN, GenerationMode.POSITIVE, 40),
    (ADMIN, GenerationMode.NEGATIVE, 40),
    ({}, GenerationMode.POSITIVE, 8),
    ({}, GenerationMode.NEGATIVE, 8),
    (APP, GenerationMode.POSITIVE, 8),
    (OPERATOR, GenerationMode.POSITIVE, 8),
]


def fuzz(operation, headers: dict, mode: GenerationMode, examples: int,
         seen: dict[str, dict[int, int]], server_errors: list[str]) -> None:
    """Send ``examples`` generated requests of one operation; count statuses, keep 5xx."""
    label = f"{operation.method.upper()} {operation.path}"

    @given(operation.as_strategy(generation_mode=mode, headers=dict(headers)))
    @hsettings(max_examples=examples, deadline=None, phases=[Phase.explicit, Phase.generate],
               suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call()
        counts = seen.setdefault(label, {})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            server_errors.append(f"{label} {response.status_code} {case.as_curl_command()} "
                                 f"-> {response.text[:200]}")

    try:
        check()
    except Unsatisfiable:  # negative mode on an operation with nothing to get wrong
        assert mode is GenerationMode.NEGATIVE, label


@pytest.mark.timeout(600)
def test_no_operation_of_the_openapi_schema_answers_5xx(settings) -> None:
    from schemathesis.python.asgi import shutdown_lifespans

    ensure_topics(settings)
    publish(settings, small_model(CATALOG))
    for i in range(0, 50, 3):
        set_profile(settings, f"r{i}", consent="1", neighbourhood="gare")
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[str, dict[int, int]] = {}
    server_errors: list[str] = []
    try:
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 19
        for operation in operations:
            for headers, mode, examples in PLAN:
                fuzz(operation, headers, mode, examples, seen, server_errors)
    finally:
        shutdown_lifespans()
    print({label: dict(sorted(c.items())) for label, c in sorted(seen.items())})
    assert server_errors == [], "\n".join(server_errors[:10])
    total = sum(sum(c.values()) for c in seen.values())
    assert total > 500 and all(200 in c or 202 in c for label, c in seen.items()
                               if "metrics" not in label), seen
