"""Property-based test of the OpenAPI contract: schemathesis generates valid and invalid requests for every
operation from the service's own schema and sends them to a real server with a real model.

Checks on every response: never a 5xx, the status code is one the schema documents, the content type and
the body match the documented schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from apisupport import ApiServer, Registry, settings_for, wait_until
from hypothesis import HealthCheck, settings

from inference_api.app import create_app

# The schema comes from the app itself (what /openapi.json serves, the batch limit included); the requests
# go to a real server with the same settings.
LIMITS = {"max_batch_size": 20, "reload_token": "fuzz-token-of-24-chars!!"}
# A schema-violating request may also be refused with 413: a batch over MAX_BATCH_SIZE is counted, and
# refused, before any of its encounters is validated (the endpoints document 413).
CONFIG = schemathesis.config.SchemathesisConfig.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]

# An outcome's observed_at must be an ISO 8601 time not in the future, which JSON Schema cannot state: a
# schema-valid feed may be refused 422 (invalid_outcomes). tests/test_api_outcomes.py checks that rule itself.
[[operations]]
include-name = "POST /outcomes"
checks.positive_data_acceptance.expected-statuses = ["200", "422"]
"""
)
schema = schemathesis.openapi.from_dict(
    create_app(settings_for("sqlite://", "sqlite://", **LIMITS)).openapi(), config=CONFIG
)


@pytest.fixture(scope="module")
def api_url(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_url = f"sqlite:///{tmp_path_factory.mktemp('contract') / 'predictions.db'}"
    app_settings = settings_for(registry.uri, log_url, **LIMITS)
    with ApiServer(app_settings) as api:
        wait_until(lambda: httpx.get(f"{api.url}/health/ready").status_code == 200, 60, "the model to load")
        assert httpx.get(f"{api.url}/openapi.json").json() == schema.raw_schema
        yield api.url


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_generated_request_gets_a_documented_non_5xx_answer(case: Any, api_url: str) -> None:
    # With the operator token, so that POST /outcomes' body is fuzzed too (without it: 401 before the body).
    case.call_and_validate(base_url=api_url, headers={"Authorization": f"Bearer {LIMITS['reload_token']}"})


def test_the_contract_test_reaches_the_model() -> None:
    """The schema holds the prediction operations, so the fuzzing above really exercised them."""
    operations = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert {("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/model"), ("POST", "/outcomes")} <= operations
