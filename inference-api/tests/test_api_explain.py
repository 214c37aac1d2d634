"""POST /predict?explain=true and /predict/batch?explain=true on a real registry: exact, additive
contributions, the query's errors, a model without explanations, and the explanations in the log."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from apisupport import Registry, settings_for, wait_until
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from livesupport import multinomial_champion
from sqlalchemy import inspect, select

from inference_api.app import create_app
from inference_api.contract import InvalidBodyError
from inference_api.explaining import DEFAULT_TOP, MAX_TOP, parse_explain
from readmission import schema
from readmission.db import create_db_engine
from readmission.explanation import DERIVED_NUMERIC
from readmission.prediction_table import prediction_explanations, prediction_log

EXAMPLES = list(schema.EXAMPLE_ENCOUNTERS.values())
N_FEATURES = len(schema.MODEL_INPUT_NAMES) + len(DERIVED_NUMERIC)


@pytest.fixture
def log_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture
def client(registry: Registry, log_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(registry.uri, log_url)), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        yield c


def _total(explanation: dict[str, Any]) -> float:
    listed = sum(c["contribution"] for c in explanation["contributions"])
    return float(explanation["base_value"] + listed + explanation["other_features"]["contribution"])


def test_explain_adds_exact_contributions_to_the_30_day_log_odds(client: TestClient) -> None:
    body = client.post("/predict?explain=true", json=EXAMPLES[0]).json()
    explanation = body["explanation"]
    risk = body["risk_30_days"]
    assert explanation["scale"] == "log-odds" and explanation["calibrated"] is False
    assert explanation["value"] == pytest.approx(math.log(risk / (1 - risk)), abs=1e-6)
    assert _total(explanation) == pytest.approx(explanation["value"], abs=1e-6)
    listed = explanation["contributions"]
    assert len(listed) == 10 and explanation["other_features"]["count"] == N_FEATURES - 10
    sizes = [abs(c["contribution"]) for c in listed]
    assert sizes == sorted(sizes, reverse=True)
    for item in listed:
        sign = item["contribution"]
        assert item["direction"] == ("raises the risk" if sign > 0 else "lowers the risk" if sign < 0 else "no effect")
        assert item["description"]
        if item["feature"] in EXAMPLES[0]:
            assert item["value"] == EXAMPLES[0][item["feature"]]
    plain = client.post("/predict", json=EXAMPLES[0]).json()
    assert "explanation" not in plain and plain["probabilities"] == body["probabilities"]
    info = client.get("/model").json()
    assert info["explanations"] is True and info["explain_problem"] is None
    assert info["risk_band_thresholds"] == [0.15, 0.30]


def test_explain_top_lists_every_feature_or_a_few(client: TestClient) -> None:
    every = client.post("/predict?explain=1&explain_top=100", json=EXAMPLES[1]).json()["explanation"]
    assert len(every["contributions"]) == N_FEATURES and every["other_features"] == {"count": 0, "contribution": 0.0}
    assert {c["feature"] for c in every["contributions"]} >= set(schema.MODEL_INPUT_NAMES) - {"payer_code"}
    three = client.post("/predict?explain=true&explain_top=3", json=EXAMPLES[1]).json()["explanation"]
    assert three["contributions"] == every["contributions"][:3]
    assert _total(three) == pytest.approx(_total(every), abs=1e-9)


def test_batch_explanations_equal_the_single_ones(client: TestClient) -> None:
    batch = client.post("/predict/batch?explain=true&explain_top=5", json={"encounters": EXAMPLES}).json()
    for encounter, scored in zip(EXAMPLES, batch["predictions"], strict=True):
        single = client.post("/predict?explain=true&explain_top=5", json=encounter).json()["explanation"]
        ours, theirs = scored["explanation"]["contributions"], single["contributions"]
        assert [c["feature"] for c in ours] == [c["feature"] for c in theirs]
        assert [c["contribution"] for c in ours] == pytest.approx([c["contribution"] for c in theirs], abs=1e-12)
        assert scored["explanation"]["base_value"] == pytest.approx(single["base_value"], abs=1e-12)
    plain = client.post("/predict/batch?explain=false", json={"encounters": EXAMPLES}).json()
    assert all("explanation" not in p for p in plain["predictions"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("explain=maybe", "explain"),
        ("explain", "explain"),
        ("explain=", "explain"),
        ("explain=true&explain=false", "explain"),
        ("explain=true&explain_top=0", "explain_top"),
        ("explain=true&explain_top=101", "explain_top"),
        ("explain=true&explain_top=ten", "explain_top"),
        ("explain=true&explain_top=-1", "explain_top"),
    ],
)
def test_a_bad_explain_parameter_is_refused_naming_it(client: TestClient, query: str, field: str) -> None:
    for path in ("/predict", "/predict/batch"):
        body = EXAMPLES[0] if path == "/predict" else {"encounters": EXAMPLES}
        response = client.post(f"{path}?{query}", json=body)
        assert response.status_code == 422, response.text
        answer = response.json()
        assert answer["error"] == "invalid_input" and answer["errors"][0]["field"] == field
        assert "send" in answer["errors"][0]["message"]


def test_explanations_are_logged_with_their_predictions(client: TestClient, log_url: str) -> None:
    client.post("/predict", json=EXAMPLES[0])
    explained = client.post("/predict?explain=true&explain_top=4", json=EXAMPLES[1]).json()
    client.post("/predict/batch?explain=true&explain_top=2", json={"encounters": EXAMPLES[:2]})
    engine = create_db_engine(log_url)
    try:

        def stored() -> list[Any]:
            if not inspect(engine).has_table(prediction_explanations.name):  # the writer creates it
                return []
            with engine.connect() as conn:
                query = select(
                    prediction_log.c.request_id, prediction_log.c.item, prediction_explanations.c.explanation
                )
                joined = prediction_log.join(
                    prediction_explanations, prediction_log.c.log_id == prediction_explanations.c.log_id
                )
                return list(conn.execute(query.select_from(joined)))

        wait_until(lambda: len(stored()) == 3, what="three explanations in the log")
        with engine.connect() as conn:
            assert conn.execute(select(prediction_log.c.id)).all().__len__() == 4
        rows = {(r.request_id, r.item): r.explanation for r in stored()}
        assert rows[(explained["request_id"], 0)] == explained["explanation"]
    finally:
        engine.dispose()


def test_a_model_without_explanations_answers_409_and_still_predicts(multinomial_registry: str, tmp_path: Path) -> None:
    settings = settings_for(multinomial_registry, f"sqlite:///{tmp_path / 'log.db'}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        assert c.post("/predict", json=EXAMPLES[0]).status_code == 200
        info = c.get("/model").json()
        assert info["explanations"] is False and "LogisticRegression" in info["explain_problem"]
        for path, body in (("/predict", EXAMPLES[0]), ("/predict/batch", {"encounters": EXAMPLES})):
            response = c.post(f"{path}?explain=true", json=body)
            assert response.status_code == 409, response.text
            answer = response.json()
            assert answer["error"] == "not_explainable"
            assert "version 1 of diabetes-readmission is served without explanations" in answer["message"]
            assert "LogisticRegression models are not explained" in answer["message"]
            assert "without explain=true" in answer["message"]


@pytest.fixture(scope="module")
def multinomial_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry whose champion cannot be explained (``livesupport.multinomial_champion``)."""
    return multinomial_champion(tmp_path_factory.mktemp("multinomial"))


@settings(max_examples=300, deadline=None)
@example(explain="true", top="²", other="", twice=False)  # str.isdigit() says yes, int() says no: was a 500
@example(explain="yes", top="٣", other="", twice=False)
@example(explain="", top=None, other="", twice=False)  # `?explain=`: was read as false, silently
@example(explain="false", top="5", other="", twice=False)  # explain_top alone: schema-valid, accepted, unused
@example(explain="true", top=None, other="", twice=True)  # explain=true&explain=true: the last one won
@given(
    explain=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["true", "TRUE", "1", "yes", "false", "0"])),
    top=st.one_of(st.none(), st.text(max_size=6), st.integers(-5, 200).map(str)),
    other=st.text(max_size=10),
    twice=st.booleans(),
)
def test_any_query_string_is_read_or_refused_naming_the_parameter(
    explain: Any, top: Any, other: str, twice: bool
) -> None:
    """The whole kind: whatever the query holds, the answer is an explanation request or a 422 naming
    `explain` or `explain_top`, never an error of another kind; other parameters are ignored."""
    pairs = [("other", other)] + [(k, v) for k, v in (("explain", explain), ("explain_top", top)) if v is not None]
    query = urlencode(pairs + ([("explain", explain)] if twice and explain is not None else [])).encode()
    try:
        asked = parse_explain(query)
    except InvalidBodyError as exc:
        refused = exc.errors[0]
    else:
        refused = None
    if refused is not None:
        assert refused["field"] in {"explain", "explain_top"} and "send" in refused["message"]
        return
    assert not (twice and explain is not None), "a parameter given twice must be refused"
    wanted = explain is not None and explain.lower() in ("true", "1", "yes", "on")
    assert (asked.top is not None) == wanted
    assert explain is None or explain.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off")
    if wanted:
        assert 1 <= asked.top <= MAX_TOP and asked.top == (DEFAULT_TOP if top is None else int(top))


def test_explanations_run_one_at_a_time_and_a_waiter_gives_up_with_503() -> None:
    """The limiter itself, on a real event loop and worker threads: a second explanation waits for the first;
    one that would wait longer than its limit is refused (ExplanationsBusyError, answered 503 with Retry-After)."""
    import asyncio
    import threading

    from inference_api.explaining import ExplainLimiter, ExplanationsBusyError

    release, running = threading.Event(), []

    def slow(name: str) -> str:
        running.append(name)
        release.wait(10)
        return name

    async def scenario() -> tuple[str, str]:
        limiter = ExplainLimiter(wait_seconds=0.3)
        first = asyncio.create_task(limiter.run(slow, "first"))
        await asyncio.sleep(0.1)
        with pytest.raises(ExplanationsBusyError, match=r"kept the explainer busy for 0\.3 s"):
            await limiter.run(slow, "refused")
        assert "refused" not in running  # it never ran
        release.set()
        return await first, await limiter.run(slow, "after")  # the turn was given back

    assert asyncio.run(scenario()) == ("first", "after")


def test_an_explained_batch_over_100_encounters_is_refused_naming_explain(registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(registry.uri, f"sqlite:///{tmp_path / 'log.db'}", max_batch_size=200)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/health/ready").status_code == 200, what="the model to load")
        body = {"encounters": EXAMPLES * 34}  # 102 encounters
        refused = c.post("/predict/batch?explain=true", json=body)
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "explain"
        assert "at most 100 encounters per request and this one has 102" in refused.json()["errors"][0]["message"]
        assert c.post("/predict/batch", json=body).status_code == 200  # without explanations: as before
