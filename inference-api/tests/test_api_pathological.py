"""Pathological requests are refused cheaply: the item count before any item is validated (413), error lists
capped, answers never much larger than their requests, compressed or non-JSON bodies refused (415), and the
service keeps answering its liveness probe (its latency under such load: bench/pathological.py)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_api.app import create_app
from inference_api.contract import MAX_LISTED_ERRORS
from readmission import schema

EXAMPLE = next(iter(schema.EXAMPLE_ENCOUNTERS.values()))
JSON = {"Content-Type": "application/json"}
ANSWER_CEILING = 32 * 1024  # bytes: fifty listed errors and a message fit well under it


@pytest.fixture(scope="module")
def client(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("pathological")
    app = create_app(settings_for(registry.uri, f"sqlite:///{folder / 'log.db'}", max_batch_size=1_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


def _empties(count: int) -> bytes:
    return b'{"encounters": [' + b",".join([b"{}"] * count) + b"]}"


@pytest.mark.parametrize("count", [1_001, 10_000, 200_000])
def test_too_many_items_are_413_before_any_is_validated(client: TestClient, count: int) -> None:
    """Before: 1,001 empty objects (4 KB) got a 5.7 MB 422; 10,000 got 57 MB after 13-32 s."""
    response = client.post("/predict/batch", content=_empties(count), headers=JSON)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert f"{count:,} encounters in one batch; the limit is 1,000" in response.json()["message"]
    assert len(response.content) < 1_024


def test_an_error_list_is_capped_and_counted(client: TestClient) -> None:
    response = client.post("/predict/batch", content=_empties(1_000), headers=JSON)
    assert response.status_code == 422
    body = response.json()
    required = sum(1 for c in schema.FEATURE_COLUMNS if not c.may_be_missing)
    assert len(body["errors"]) == MAX_LISTED_ERRORS and body["errors_total"] == 1_000 * required
    assert body["message"].startswith(f"{1_000 * required:,} invalid field(s); the first {MAX_LISTED_ERRORS}:")
    assert len(response.content) < ANSWER_CEILING


@pytest.mark.parametrize(
    ("headers", "content", "message"),
    [
        ({**JSON, "Content-Encoding": "gzip"}, gzip.compress(json.dumps(EXAMPLE).encode()), "Content-Encoding 'gzip'"),
        ({**JSON, "Content-Encoding": "gzip"}, json.dumps(EXAMPLE).encode(), "Content-Encoding 'gzip'"),
        ({"Content-Type": "text/plain"}, json.dumps(EXAMPLE).encode(), "Content-Type 'text/plain' is not JSON"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"age=1", "is not JSON"),
    ],
    ids=["gzip", "gzip-label-on-plain-body", "text-plain", "form"],
)
def test_compressed_or_non_json_bodies_are_415(
    client: TestClient, headers: dict[str, str], content: bytes, message: str
) -> None:
    """Before: a plain body labelled gzip and a text/plain body were silently accepted (200)."""
    for path in ("/predict", "/predict/batch"):
        response = client.post(path, content=content, headers=headers)
        assert response.status_code == 415, path
        assert response.json()["error"] == "unsupported_media_type" and message in response.json()["message"]


BODIES = st.one_of(
    st.integers(1, 30_000).map(_empties),
    # nested lists from depth 2 ([[]]: not an encounter); depth 1 is the empty batch, a valid request (200)
    st.integers(2, 3_000).map(lambda d: b'{"encounters": ' + b"[" * d + b"]" * d + b"}"),
    st.integers(1, 2_000_000).map(lambda n: b'{"encounters": [{"race": "' + b"x" * n + b'"}]}'),
    st.integers(1, 40_000).map(lambda n: ("{" + ",".join(f'"k{i}": {i}' for i in range(n)) + "}").encode()),
    st.integers(1, 2_000).map(lambda n: json.dumps({"encounters": [{**EXAMPLE, "age": 5}] * n}).encode()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES, path=st.sampled_from(["/predict", "/predict/batch"]))
def test_any_pathological_body_gets_a_small_refusal_and_the_service_stays_live(
    client: TestClient, body: bytes, path: str
) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert response.status_code in {400, 413, 422}, response.text[:500]
    assert len(response.content) <= max(ANSWER_CEILING, 2 * len(body))
    errors = response.json().get("errors") or []
    assert len(errors) <= MAX_LISTED_ERRORS
    assert client.get("/health/live").status_code == 200
