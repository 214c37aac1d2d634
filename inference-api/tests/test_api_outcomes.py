"""The closed loop's API (issue #22), real model, real log: ``encounter_id`` on /predict and /predict/batch
(stored in the log's column, never a model input) and POST /outcomes (operator token, receipt by kind, a
malformed feed records nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from inference_api.app import create_app
from inference_api.prediction_log import count_rows
from readmission import schema
from readmission.db import create_db_engine

EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())
TOKEN = "outcome-token-of-the-tests"  # no digit: not a secret-looking literal (test_kubernetes)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RANGE = f"from 1 to {schema.MAX_ENCOUNTER_ID}"
WHEN = "2026-11-20T08:30:00Z"


@contextmanager
def _app(registry: Registry, log_url: str) -> Iterator[TestClient]:
    app_settings = settings_for(registry.uri, log_url, max_batch_size=20, reload_token=TOKEN)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture
def client(registry: Registry, log_url: str) -> Iterator[TestClient]:
    with _app(registry, log_url) as c:
        yield c


def _query(url: str, sql: str) -> list[Any]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def _logged(url: str) -> int:
    try:
        return count_rows(url)
    except Exception:
        return -1  # the writer has not made the table yet


def _wait_logged(url: str, rows: int) -> None:
    wait_until(lambda: _logged(url) >= rows, what=f"{rows} rows in the prediction log")
    assert count_rows(url) == rows


def _stored(url: str) -> dict[int, str]:
    """The outcome table: encounter id -> label ({} before the first feed made the table)."""
    engine = create_db_engine(url)
    exists = inspect(engine).has_table("prediction_outcomes")
    engine.dispose()
    rows = _query(url, "SELECT encounter_id, readmitted FROM prediction_outcomes") if exists else []
    return {int(e): str(r) for e, r in rows}


def _with_id(i: int, encounter_id: Any) -> dict[str, Any]:
    return {**EXAMPLES[i % len(EXAMPLES)], "encounter_id": encounter_id}


def _predict_ids(client: TestClient, url: str, ids: list[int]) -> None:
    """Predict one encounter per id (one batch) and wait until the log holds them."""
    before = max(_logged(url), 0)
    response = client.post("/predict/batch", json={"encounters": [_with_id(i, e) for i, e in enumerate(ids)]})
    assert response.status_code == 200, response.text
    _wait_logged(url, before + len(ids))


def _feed(client: TestClient, *outcomes: tuple[Any, Any, Any], headers: dict[str, str] = AUTH) -> httpx.Response:
    body = [{"encounter_id": e, "readmitted": r, "observed_at": t} for e, r, t in outcomes]
    response: httpx.Response = client.post("/outcomes", json={"outcomes": body}, headers=headers)
    return response


def _answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return {k: v for k, v in response.json().items() if k != "request_id"}


def _fields(response: httpx.Response) -> list[str]:
    body = response.json()
    assert set(body) >= {"error", "message", "request_id", "errors"}, body
    assert body["request_id"] == response.headers["x-request-id"]
    return [e["field"] for e in body["errors"]]


# --- encounter_id on /predict and /predict/batch -----------------------------------------------------------


def test_encounter_id_changes_no_answer_and_is_logged_apart_from_the_inputs(client: TestClient, log_url: str) -> None:
    for i, example in enumerate(EXAMPLES):
        assert _answer(client.post("/predict", json=_with_id(i, 101 + i))) == _answer(
            client.post("/predict", json=example)
        )
    with_ids = client.post("/predict/batch", json={"encounters": [_with_id(i, 201 + i) for i in range(3)]})
    without = client.post("/predict/batch", json={"encounters": EXAMPLES})
    assert _answer(with_ids) == _answer(without)
    _wait_logged(log_url, 4 * len(EXAMPLES))
    rows = _query(log_url, "SELECT endpoint, item, encounter_id, inputs FROM prediction_log")
    with_id = sorted((endpoint, item, e) for endpoint, item, e, _ in rows if e is not None)
    singles, batch = [("predict", 0, 101 + i) for i in range(3)], [("predict_batch", i, 201 + i) for i in range(3)]
    assert with_id == singles + batch
    assert all("encounter_id" not in raw for *_, raw in rows)
    inputs = {json.dumps(json.loads(raw), sort_keys=True) for *_, raw in rows}
    assert len(inputs) == len(EXAMPLES)  # with or without an id, an encounter's logged inputs are the same


def test_a_null_encounter_id_is_one_left_out(client: TestClient, log_url: str) -> None:
    assert _answer(client.post("/predict", json={**EXAMPLES[0], "encounter_id": None})) == _answer(
        client.post("/predict", json=EXAMPLES[0])
    )
    _wait_logged(log_url, 2)
    assert _query(log_url, "SELECT encounter_id FROM prediction_log") == [(None,), (None,)]


INVALID_IDS: list[Any] = [0, -1, "12", 1.5, 10**18, True]


def test_an_invalid_encounter_id_is_422_naming_it_with_the_range(client: TestClient, log_url: str) -> None:
    for value in INVALID_IDS:
        single = client.post("/predict", json=_with_id(0, value))
        assert single.status_code == 422 and single.json()["error"] == "invalid_input", value
        assert _fields(single) == ["encounter_id"], value
        error = single.json()["errors"][0]
        assert RANGE in error["message"], error
        assert (error["minimum"], error["maximum"]) == (1, schema.MAX_ENCOUNTER_ID)
        batch = client.post("/predict/batch", json={"encounters": [_with_id(0, 7), _with_id(1, value)]})
        assert batch.status_code == 422 and _fields(batch) == ["encounters[1].encounter_id"], value
        assert RANGE in batch.json()["errors"][0]["message"]
    _predict_ids(client, log_url, [9])  # the log keeps its order: only this valid one was logged
    assert _query(log_url, "SELECT encounter_id FROM prediction_log") == [(9,)]


def test_the_documented_encounter_id_states_its_range(client: TestClient) -> None:
    """An OpenAPI client reads `minimum`/`maximum` (before: pydantic's own `ge`/`le`, which no client knows, so
    schemathesis sent encounter_id 0 as valid data and got 422)."""
    spec = client.get("/openapi.json").json()
    field = spec["components"]["schemas"]["EncounterFeatures"]["properties"]["encounter_id"]
    assert field["anyOf"] == [{"type": "integer", "minimum": 1, "maximum": schema.MAX_ENCOUNTER_ID}, {"type": "null"}]


# --- POST /outcomes: the token -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
)
def test_outcomes_without_the_token_are_401_and_nothing_is_read(
    client: TestClient, log_url: str, headers: dict[str, str]
) -> None:
    _predict_ids(client, log_url, [5])
    refused = _feed(client, (5, "<30", WHEN), headers=headers)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"] == "unauthorized" and TOKEN not in refused.text
    not_even_json = client.post("/outcomes", content=b"{nope", headers=headers)  # the token comes first
    assert not_even_json.status_code == 401
    assert _stored(log_url) == {}


# --- POST /outcomes: the receipt ---------------------------------------------------------------------------


def _receipt(received: int, **counts: Any) -> dict[str, Any]:
    zero = {"recorded": 0, "already_recorded": 0, "conflicting": 0, "unknown_encounter": 0}
    return {"received": received, **zero, "conflicting_ids": [], "unknown_ids": [], **counts}


def test_the_receipt_counts_each_kind_and_a_stored_label_is_kept(registry: Registry, either_log_url: str) -> None:
    with _app(registry, either_log_url) as client:
        _predict_ids(client, either_log_url, [11, 12, 13])
        first = ((11, "<30", WHEN), (12, "NO", "2026-11-21"), (99, "NO", WHEN))
        assert _answer(_feed(client, *first)) == _receipt(3, recorded=2, unknown_encounter=1, unknown_ids=[99])
        assert _stored(either_log_url) == {11: "<30", 12: "NO"}
        again = _answer(_feed(client, *first))
        assert again == _receipt(3, already_recorded=2, unknown_encounter=1, unknown_ids=[99])
        changed = _answer(_feed(client, (11, "NO", WHEN), (13, ">30", WHEN)))
        assert changed == _receipt(2, recorded=1, conflicting=1, conflicting_ids=[11])
        assert _stored(either_log_url) == {11: "<30", 12: "NO", 13: ">30"}
    rows = _query(either_log_url, "SELECT encounter_id, observed_at, source FROM prediction_outcomes")
    by_id = {int(e): (str(when)[:19], source) for e, when, source in rows}
    assert by_id[11] == ("2026-11-20 08:30:00", "api") and by_id[12] == ("2026-11-21 00:00:00", "api")


def test_an_encounter_predicted_twice_is_one_outcome(client: TestClient, log_url: str) -> None:
    _predict_ids(client, log_url, [21, 21])
    repeated = _feed(client, (21, "<30", WHEN), ("21", "<30", "2026-11-20"))  # the same encounter, twice
    assert _answer(repeated) == _receipt(1, recorded=1)
    assert _stored(log_url) == {21: "<30"}


# --- POST /outcomes: refused feeds record nothing ----------------------------------------------------------


def test_a_bad_label_or_time_is_422_naming_it_and_nothing_of_the_feed_is_stored(
    client: TestClient, log_url: str
) -> None:
    _predict_ids(client, log_url, [31, 32, 33, 34])
    assert _answer(_feed(client, (31, "NO", WHEN)))["recorded"] == 1
    bad = _feed(
        client,
        (32, "<30", WHEN),  # valid, yet not stored: the feed is refused whole
        (33, "maybe", WHEN),
        (34, "NO", "yesterday"),
        (34, "NO", "2999-01-01"),
        (32, ">30", WHEN),  # the same encounter with another label
    )
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_outcomes"
    fields = [
        "outcomes[1].readmitted",
        "outcomes[2].observed_at",
        "outcomes[3].observed_at",
        "outcomes[4].encounter_id",
    ]
    assert _fields(bad) == fields
    messages = [e["message"] for e in bad.json()["errors"]]
    assert "'maybe' is not one of NO, >30, <30" in messages[0] and "not an ISO 8601 time" in messages[1]
    assert "in the future" in messages[2] and "'<30', here '>30'" in messages[3]
    assert _stored(log_url) == {31: "NO"}


BAD_BODIES: list[tuple[Any, str]] = [
    ([], "body"),
    ({}, "outcomes"),
    ({"outcome": []}, "outcomes"),
    ({"outcomes": "all of them"}, "outcomes"),
    ({"outcomes": {"encounter_id": 1}}, "outcomes"),
    ({"outcomes": [1]}, "outcomes[0]"),
    ({"outcomes": [[1, "NO", WHEN]]}, "outcomes[0]"),
    ({"outcomes": None}, "outcomes"),
]


def test_a_body_that_is_not_an_outcome_list_is_422_in_the_error_body(client: TestClient, log_url: str) -> None:
    _predict_ids(client, log_url, [41])
    for body, field in BAD_BODIES:
        response = client.post("/outcomes", json=body, headers=AUTH)
        assert response.status_code == 422 and response.json()["error"] == "invalid_input", (body, response.text)
        assert _fields(response) == [field], body
    not_json = client.post("/outcomes", content=b'{"outcomes": [', headers=AUTH)
    assert not_json.status_code == 422 and _fields(not_json) == ["body"]
    not_text = client.post("/outcomes", content=b'{"outcomes": ["\x80"]}', headers=AUTH)
    assert not_text.status_code == 400 and not_text.json()["error"] == "malformed_body"
    assert "not UTF-8" in not_text.json()["message"]
    twice = (
        b'{"outcomes": [{"encounter_id": 41, "readmitted": "NO", "readmitted": "<30", "observed_at": "2026-11-20"}]}'
    )
    repeated = client.post("/outcomes", content=twice, headers=AUTH)  # which label counts? neither
    assert repeated.status_code == 422 and repeated.json()["error"] == "duplicate_key"
    assert _fields(repeated) == ["outcomes[0].readmitted"]
    assert _stored(log_url) == {}


def test_more_than_ten_thousand_outcomes_are_refused(client: TestClient, log_url: str) -> None:
    _predict_ids(client, log_url, [1])
    many = [(1 + i, "NO", WHEN) for i in range(10_001)]
    refused = _feed(client, *many)
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_input"
    assert _fields(refused) == ["outcomes"] and "10000" in refused.json()["errors"][0]["message"]
    assert _stored(log_url) == {}
    accepted = _answer(_feed(client, *many[:10_000]))  # the limit itself is accepted
    assert accepted["received"] == 10_000 and accepted["recorded"] == 1
    assert accepted["unknown_encounter"] == 9_999 and accepted["unknown_ids"] == list(range(2, 10_001))
    assert _stored(log_url) == {1: "NO"}


def test_an_unreachable_log_database_is_503_and_a_resend_works(registry: Registry, unreachable_mysql_url: str) -> None:
    """Before: a database that is down answered 500 internal_error; the feed is then refused whole (nothing can
    have been recorded) with what to do, as a 503."""
    app_settings = settings_for(registry.uri, unreachable_mysql_url, max_batch_size=20, reload_token=TOKEN)
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as c:
        answer = c.post("/outcomes", json={"outcomes": [{"encounter_id": 1, "readmitted": "NO", "observed_at": WHEN}]},
                        headers=AUTH)  # fmt: skip
    assert answer.status_code == 503, answer.text
    assert "the prediction log's database cannot be reached" in answer.json()["message"]


# --- POST /outcomes: generated feeds -----------------------------------------------------------------------

PREDICTED = [51, 52, 53, 54]
UNKNOWN = [901, 902]
_OMIT = object()  # the key is left out
_IDS = st.sampled_from(PREDICTED + UNKNOWN)
_MISSING = st.sampled_from([None, "", _OMIT]).map(lambda v: (v, "missing"))
_OK_ID = _IDS.map(lambda e: (e, "ok")) | _IDS.map(lambda e: (str(e), "ok"))  # digits as a CSV gives: accepted
_OK_LABEL = st.sampled_from(schema.TARGET_LABELS).map(lambda v: (v, "ok"))
_OK_TIME = st.sampled_from(["2026-01-05", WHEN, "2026-03-01T08:30:00+02:00"]).map(lambda v: (v, "ok"))
_ID = _OK_ID | st.sampled_from([0, -5, 1.5, True, "abc", 10**18, "5x"]).map(lambda v: (v, "bad")) | _MISSING
_LABEL = _OK_LABEL | st.sampled_from(["no", "YES", "<= 30", 30, True]).map(lambda v: (v, "bad")) | _MISSING
_TIME = _OK_TIME | st.sampled_from(["yesterday", "2999-01-01", "2026-13-01", 2026]).map(lambda v: (v, "bad")) | _MISSING
_VALID = st.tuples(_OK_ID, _OK_LABEL, _OK_TIME)
# Half the feeds hold valid outcomes only (refused only when one encounter gets two labels), half any mix.
_OUTCOMES = st.lists(_VALID, max_size=8) | st.lists(_VALID | st.tuples(_ID, _LABEL, _TIME), max_size=8)
_NAMES = ("encounter_id", "readmitted", "observed_at")


def _body(outcome: tuple[Any, ...]) -> dict[str, Any]:
    return {name: value for name, (value, _) in zip(_NAMES, outcome, strict=True) if value is not _OMIT}


def _expected_errors(outcomes: list[tuple[Any, ...]]) -> list[str]:
    """The fields a refused feed names, in order: the missing ones of an outcome (then only those), else its
    bad ones; then an encounter given again with another label."""
    fields: list[str] = []
    seen: dict[int, str] = {}
    for i, outcome in enumerate(outcomes):
        kinds = [kind for _, kind in outcome]
        wrong = [n for n, k in zip(_NAMES, kinds, strict=True) if k == ("missing" if "missing" in kinds else "bad")]
        fields.extend(f"outcomes[{i}].{name}" for name in wrong)
        if not wrong:
            encounter, label = int(outcome[0][0]), outcome[1][0]
            if seen.setdefault(encounter, label) != label:
                fields.append(f"outcomes[{i}].encounter_id")
    return fields


def _expected_receipt(outcomes: list[tuple[Any, ...]], stored: dict[int, str]) -> dict[str, Any]:
    """The receipt of a valid feed against the outcomes stored before it; ``stored`` gains the recorded ones."""
    distinct = {int(o[0][0]): o[1][0] for o in outcomes}
    receipt = _receipt(len(distinct))
    for encounter, label in distinct.items():
        if encounter in stored:
            kind = "already_recorded" if stored[encounter] == label else "conflicting"
            receipt[kind] += 1
            receipt["conflicting_ids"] += [encounter] if kind == "conflicting" else []
        elif encounter not in PREDICTED:
            receipt["unknown_encounter"] += 1
            receipt["unknown_ids"].append(encounter)
        else:
            receipt["recorded"] += 1
            stored[encounter] = label
    return receipt


@pytest.fixture(scope="module")
def fed_app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """One app for every generated feed, with PREDICTED logged."""
    url = f"sqlite:///{tmp_path_factory.mktemp('generated') / 'predictions.db'}"
    with _app(registry, url) as c:
        _predict_ids(c, url, PREDICTED)
        yield c, url


STORED: dict[int, str] = {}  # what the generated feeds stored so far (the module's app keeps it)


@settings(max_examples=60, deadline=None)
@given(outcomes=_OUTCOMES)
def test_generated_feeds_are_recorded_whole_or_not_at_all(
    fed_app: tuple[TestClient, str], outcomes: list[tuple[Any, ...]]
) -> None:
    """200 only when every outcome is valid, with the receipt the stored outcomes imply; a refused feed names
    exactly its bad fields; the table only ever gains outcomes of predicted encounters, and keeps each label."""
    client, url = fed_app
    response = client.post("/outcomes", json={"outcomes": [_body(o) for o in outcomes]}, headers=AUTH)
    errors = _expected_errors(outcomes)
    event("refused" if errors else "recorded" if outcomes else "empty")
    if errors:
        assert response.status_code == 422 and response.json()["error"] == "invalid_outcomes", response.text
        assert _fields(response) == errors
    else:
        assert _answer(response) == _expected_receipt(outcomes, STORED)
    assert _stored(url) == STORED and set(STORED) <= set(PREDICTED)
