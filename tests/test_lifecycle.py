"""The model lifecycle under faults: the `champion` gate fails closed when the registry errs, and a training
job stopped at any point and run again registers exactly one version, gated exactly once.

The registry outage is real: a real `mlflow server` behind a small HTTP proxy that answers 503 for the
registry calls a test chooses. The stopped job is an exception that no handler catches (like a killed
process), raised right after the registry call it follows has been carried out.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livesupport import free_port, serve
from mlflow import MlflowClient

from readmission import steps
from readmission.names import CHALLENGER, CHAMPION, DECISION_TAG, MODEL_NAME, TRAINING_KEY_TAG
from readmission.registry import (
    RegistryUnavailableError,
    champion_version,
    list_versions,
    promote_if_better,
    quote_filter_value,
    rollback,
)
from readmission.synthetic import build_synthetic_clean

pytestmark = pytest.mark.slow


class FaultyProxy:
    """An HTTP proxy in front of a real server that answers 503 to requests whose path contains ``fail``."""

    def __init__(self, upstream_port: int) -> None:
        self.fail: tuple[str, ...] = ()
        self.failed: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if any(part in self.path for part in proxy.fail):
                    proxy.failed.append(self.path)
                    self.send_response(503)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "19")
                    self.end_headers()
                    self.wfile.write(b"Service Unavailable")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815 (http.server's method names)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite metadata, local artifacts); yields its URL."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--default-artifact-root", (folder / "artifacts").as_uri(), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # No job consumers (MLflow's GenAI jobs): they outlive a stopped server. The group is signalled all the same.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    for _ in serve(command, env, f"{url}/health", folder / "mlflow.log", process_group=True):
        yield url


def _versions(client: MlflowClient, count: int) -> list[str]:
    """``count`` new versions of the model (sources are placeholders: the gate never loads them here)."""
    if not client.search_registered_models(f"name = '{MODEL_NAME}'"):
        client.create_registered_model(MODEL_NAME)
    return [
        str(client.create_model_version(MODEL_NAME, "s3://bucket/model", run_id=None).version) for _ in range(count)
    ]


def test_the_gate_fails_closed_when_the_registry_answers_503(
    registry_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the client's own retries would only slow this
    proxy = FaultyProxy(int(registry_server.rsplit(":", 1)[1]))
    try:
        client = MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
        champion, candidate = _versions(client, 2)
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, champion)
        scored: list[str] = []

        proxy.fail = ("registered-models/get",)  # reading the champion fails; the rest of the registry works
        with pytest.raises(
            RegistryUnavailableError, match=rf"at the MLflow registry {proxy.url} .*`champion` was not moved"
        ):
            promote_if_better(client, candidate, 0.99, lambda v: scored.append(v) or 0.5)
        assert proxy.failed and not scored

        proxy.fail = ()
        assert champion_version(client) == champion  # the candidate was not promoted
        assert DECISION_TAG not in client.get_model_version(MODEL_NAME, candidate).tags  # nor marked as decided

        proxy.fail = ("registered-models/alias",)  # the alias move itself fails: an error, not a decision
        with pytest.raises(RegistryUnavailableError, match="gate version"):
            promote_if_better(client, candidate, 0.99, lambda _v: 0.5)
        proxy.fail = ()
        assert champion_version(client) == champion
        assert DECISION_TAG not in client.get_model_version(MODEL_NAME, candidate).tags

        decision = promote_if_better(client, candidate, 0.99, lambda _v: 0.5)  # the retry, registry healthy
        assert decision.promoted and decision.previous_champion == champion
        assert champion_version(client) == candidate
    finally:
        proxy.close()


def test_listing_and_rollback_fail_with_the_registry_named(
    registry_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy = FaultyProxy(int(registry_server.rsplit(":", 1)[1]))
    try:
        client = MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
        (version,) = _versions(client, 1)
        proxy.fail = ("registered-models/get", "model-versions/get")
        with pytest.raises(RegistryUnavailableError, match=proxy.url):
            list_versions(client)
        with pytest.raises(RegistryUnavailableError, match=proxy.url):
            rollback(client, version)
        proxy.fail = ()
        assert any(v.version == version for v in list_versions(client))
    finally:
        proxy.close()


def test_a_gate_finishing_a_stopped_runs_alias_move_says_champion_already_moved(
    registry_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: with `champion` already on the candidate (a run stopped after its alias move) and the decision
    tag's write failing, the error said "`champion` was not moved", the opposite of the registry's state."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    proxy = FaultyProxy(int(registry_server.rsplit(":", 1)[1]))
    try:
        client = MlflowClient(tracking_uri=proxy.url, registry_uri=proxy.url)
        (candidate,) = _versions(client, 1)
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, candidate)  # the stopped run's alias move
        client.set_model_version_tag(MODEL_NAME, candidate, "promotion.reason", "no champion yet")
        proxy.fail = ("model-versions/set-tag",)
        with pytest.raises(RegistryUnavailableError, match=rf"`champion` already points at version {candidate}"):
            promote_if_better(client, candidate, 0.9, lambda _v: 0.5)
    finally:
        proxy.close()


class Stopped(BaseException):
    """A stop no handler catches (``except Exception`` does not see it), like a killed process."""


# Where the job is stopped: (what, the patched callable's owner, its name, which call).
KILL_POINTS: dict[str, tuple[Any, str, Callable[..., bool]]] = {
    "after register": (mlflow, "register_model", lambda *a, **k: True),
    "after challenger": (MlflowClient, "set_registered_model_alias", lambda _s, _n, alias, _v: alias == CHALLENGER),
    "inside the gate": (MlflowClient, "set_model_version_tag", lambda _s, _n, _v, key, _val: key == "promotion.reason"),
    "after champion": (MlflowClient, "set_registered_model_alias", lambda _s, _n, alias, _v: alias == CHAMPION),
    "after decision": (MlflowClient, "set_model_version_tag", lambda _s, _n, _v, key, _val: key == DECISION_TAG),
}


def _stop_after(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    owner, name, matches = KILL_POINTS[point]
    real = getattr(owner, name)

    def stopping(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if matches(*args, **kwargs):
            raise Stopped(point)
        return result

    monkeypatch.setattr(owner, name, stopping)


@pytest.fixture(scope="module")
def job_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """CLEAN from synthetic encounters and a local MLflow store: (clean URL, tracking URI, artifact root)."""
    folder = tmp_path_factory.mktemp("jobs")
    clean = build_synthetic_clean(folder, rows=1_500, seed=11)
    yield str(clean.url), f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.mark.parametrize(
    ("point", "path"),
    [(p, "promote") for p in KILL_POINTS] + [(p, "keep") for p in KILL_POINTS if p != "after champion"],
)
def test_a_job_stopped_anywhere_and_run_again_registers_once_and_gates_once(
    job_store: tuple[str, str, str], point: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_url, tracking, artifacts = job_store
    key = f"job {point} {path}"
    steps.train_family(clean_url, tracking, "logistic_regression", key, 60, artifact_location=artifacts, max_trials=1)
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    if path == "promote" and champion_version(client) is not None:
        client.delete_registered_model_alias(MODEL_NAME, CHAMPION)  # no champion: the candidate is promoted
    if path == "keep" and champion_version(client) is None:  # a real champion, trained by a job of its own
        steps.train_family(clean_url, tracking, "logistic_regression", "setup", 60, artifact_location=artifacts)
        steps.select_and_promote(clean_url, tracking, "setup", ["logistic_regression"], artifact_location=artifacts)
    # "keep": the candidate must beat the champion by more than 1.0 of ROC-AUC, which none can.
    needed = 1.0 if path == "keep" else 0.0
    champion_before = champion_version(client)

    decisions: list[str] = []
    real_tag = MlflowClient.set_model_version_tag

    def counting(self: MlflowClient, name: str, version: str, key_: str, value: str) -> None:
        real_tag(self, name, version, key_, value)
        if key_ == DECISION_TAG:
            decisions.append(value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", counting)
    with monkeypatch.context() as stop:
        _stop_after(stop, point)
        with pytest.raises(Stopped):
            steps.select_and_promote(
                clean_url, tracking, key, ["logistic_regression"], needed, artifact_location=artifacts
            )
    summary = steps.select_and_promote(
        clean_url, tracking, key, ["logistic_regression"], needed, artifact_location=artifacts
    )

    versions = client.search_model_versions(f"name='{MODEL_NAME}' and tags.{TRAINING_KEY_TAG} = '{key}'")
    assert [str(v.version) for v in versions] == [summary["version"]]  # exactly one version for the job
    assert len(decisions) == 1  # gated exactly once, across the stopped run and the re-run
    promoted = path == "promote"
    assert summary["promoted"] is promoted
    assert decisions == ["promoted" if promoted else "kept previous champion"]
    assert champion_version(client) == (summary["version"] if promoted else champion_before)
    assert (summary["reason"] == "no champion yet") if promoted else ("does not beat" in summary["reason"])


def test_an_operators_regate_stopped_after_the_alias_move_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`readmission promote` re-gates a decided version: its old decision is voided first (overwritten: the
    trainer's MLflow user may not delete tags), so a stop cannot leave a champion tagged "kept"."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion, candidate = _versions(client, 2)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, champion)
    assert not promote_if_better(client, candidate, 0.6, lambda _v: 0.7).promoted  # decided: kept
    with monkeypatch.context() as stop:
        _stop_after(stop, "after champion")
        with pytest.raises(Stopped):
            promote_if_better(client, candidate, 0.8, lambda _v: 0.7, again=True)  # the champion got worse
    assert champion_version(client) == candidate
    assert client.get_model_version(MODEL_NAME, candidate).tags[DECISION_TAG] == "re-gating"  # not "kept" any more
    decision = promote_if_better(client, candidate, 0.8, lambda _v: 0.7)
    assert decision.promoted and client.get_model_version(MODEL_NAME, candidate).tags[DECISION_TAG] == "promoted"


def test_an_operator_regating_the_champion_is_told_it_is_already_champion(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (only,) = _versions(client, 1)
    assert promote_if_better(client, only, 0.7, lambda _v: 0.5).reason == "no champion yet"
    again = promote_if_better(client, only, 0.7, lambda _v: 0.5, again=True)  # `readmission promote --version 1`
    assert again.promoted and again.reason == "already champion" and champion_version(client) == only


QUOTABLE = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)


@given(value=QUOTABLE)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_training_key_is_found_by_exactly_its_own_runs(value: str, tmp_path: Path) -> None:
    """MLflow unescapes nothing in a filter: a key with a quote is searched in the other quote kind, and one
    holding both kinds is refused with a clear error rather than searched wrongly."""
    if "'" in value and '"' in value:
        with pytest.raises(ValueError, match="both quote characters"):
            quote_filter_value(value)
        return
    uri = f"sqlite:///{tmp_path / 'quoting.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("quoting") or client.get_experiment(client.create_experiment("quoting"))
    for tag in (value, value + "x"):
        client.set_tag(client.create_run(experiment.experiment_id).info.run_id, TRAINING_KEY_TAG, tag)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.{TRAINING_KEY_TAG} = {quote_filter_value(value)}", max_results=1000
    )
    assert found and {run.data.tags[TRAINING_KEY_TAG] for run in found} == {value}
