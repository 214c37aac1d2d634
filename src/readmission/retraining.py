"""Retraining on demand: start a run of the training DAG through Airflow 3's public REST API (issue #22).

The monitor (``readmission.monitoring``) calls this when live quality or input drift crosses its threshold and
its trigger is on (off by default). Three calls, as Airflow 3.3 documents them:

1. ``POST {url}/auth/token`` with ``{"username", "password"}`` answers ``{"access_token": <JWT>}`` (201): the
   token API of the simple auth manager ("Generate JWT token with simple auth manager",
   https://airflow.apache.org/docs/apache-airflow/3.3.2/core-concepts/auth-manager/simple/token.html, and
   "Simple auth manager token API", .../core-concepts/auth-manager/simple/sam-token-api-ref.html);
2. ``GET {url}/api/v2/dags/{dag_id}`` (operation ``get_dag``): the DAG is known, and whether it is paused;
3. ``POST {url}/api/v2/dags/{dag_id}/dagRuns`` with ``{"logical_date": null, "conf", "note"}`` (operation
   ``trigger_dag_run``; ``logical_date`` is required, null: a run without a data interval, for now), answered
   by the new run (200, ``dag_run_id``). Both: "Airflow public API",
   https://airflow.apache.org/docs/apache-airflow/3.3.2/stable-rest-api-ref.html, with the bearer token.

A paused DAG still accepts the run, which waits queued until the DAG is unpaused: that is a warning in the log
(and in the words of ``AirflowTarget.trigger``), not an error. Every failure raises ``ReadmissionError`` with
one line: the URL (never the password), the HTTP status and Airflow's ``detail``, and what to do.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from readmission.errors import ReadmissionError, short_reason

log = logging.getLogger(__name__)

BASE_URL_HINT = "the API server's base URL, e.g. http://airflow-apiserver:8080, without /api/v2"


@dataclass(frozen=True)
class AirflowTarget:
    """Where retraining runs: an Airflow 3 API server (``url``: its base URL), a user that may trigger DAG runs,
    and the DAG. Independent of the settings: the caller builds it from its own (the password is not in the repr).
    """

    url: str
    username: str
    password: str = field(repr=False)
    dag_id: str

    def trigger(self, conf: dict[str, Any], note: str, timeout: float = 10.0) -> str:
        """Start a run of the DAG with ``conf`` and ``note``; what was done, in words (the run id, the DAG, the
        server; and that the run waits if the DAG is paused). Errors: as ``trigger_dag_run``."""
        run_id, paused = _start_run(self, conf, note, timeout)
        done = f"run {run_id} of DAG {self.dag_id} at {_shown(self.url)}"
        return f"{done} ({_paused_words(self.dag_id)})" if paused else done


def trigger_dag_run(
    base_url: str, username: str, password: str, dag_id: str, conf: dict[str, Any], note: str, timeout: float = 10.0
) -> str:
    """Start a run of ``dag_id`` on the Airflow 3 API server at ``base_url`` as ``username``; its ``dag_run_id``.

    ``conf`` becomes the run's conf (the DAG's params validate it), ``note`` its note; ``timeout``: seconds per
    HTTP call. A paused DAG is logged as a warning (the run waits until it is unpaused).

    Raises ``ReadmissionError`` (one line: URL, HTTP status, Airflow's detail, the fix) when ``conf`` is not JSON;
    when the server is unreachable or silent; when it refuses the credentials (token: 400/401), the user may
    not see or trigger the DAG (401/403), the DAG is unknown (404) or the run (400: conf against the params, import
    errors); or when it answers anything else than Airflow would (not the base URL of an Airflow 3 API server).
    """
    return _start_run(AirflowTarget(base_url, username, password, dag_id), conf, note, timeout)[0]


def _start_run(target: AirflowTarget, conf: dict[str, Any], note: str, timeout: float) -> tuple[str, bool]:
    """The three calls of the module docstring: the new run's id, and whether the DAG is paused."""
    body = _json_body({"logical_date": None, "conf": conf, "note": note}, target.dag_id)
    base, user, dag = target.url.rstrip("/"), target.username, target.dag_id
    dag_url = f"{base}/api/v2/dags/{quote(dag, safe='')}"
    fixes = _dag_fixes(dag)
    with requests.Session() as session:
        session.headers["Content-Type"] = "application/json"
        token = _token(session, base, user, target.password, timeout)
        session.headers["Authorization"] = f"Bearer {token}"
        found = _call(session, "GET", dag_url, timeout, f"to show DAG {dag} to user {user}", fixes)
        run = _call(session, "POST", f"{dag_url}/dagRuns", timeout, f"a run of DAG {dag} for user {user}", fixes, body)
    run_id = _field(run, "dag_run_id", f"{dag_url}/dagRuns")
    paused = found.get("is_paused") is True
    log.info("triggered DAG %s at %s: run %s (%s)", dag, _shown(base), run_id, note)
    if paused:
        log.warning("DAG %s at %s: %s", dag, _shown(base), _paused_words(dag))
    return run_id, paused


def _dag_fixes(dag_id: str) -> dict[int, str]:
    """What to do when Airflow refuses to show or to run the DAG, by HTTP status."""
    role = (
        "give the user a role that may trigger DAG runs (simple auth manager: user, op or admin; not viewer); "
        "'Invalid JWT token' means the API servers do not share one [api_auth] jwt_secret"
    )
    unknown = (
        f"DAG {dag_id} is unknown to this Airflow: check the DAG id, and that the DAG processor parsed its file "
        "without errors (`airflow dags list-import-errors`)"
    )
    return {
        400: "make the conf match the DAG's params (or fix the DAG's import errors)",
        401: role,
        403: role,
        404: unknown,
    }


def _token(session: requests.Session, base: str, username: str, password: str, timeout: float) -> str:
    """A JWT for ``username``: ``POST /auth/token`` (the simple auth manager's token API, 201)."""
    url = f"{base}/auth/token"
    credentials = (
        "check the Airflow username and password given to the monitor (simple auth manager: the users are "
        "[core] simple_auth_manager_users, their passwords in its passwords file)"
    )
    not_api = f"this is not Airflow 3's token API: give {BASE_URL_HINT}"
    fixes = {400: credentials, 401: credentials, 404: not_api, 405: not_api}
    body = json.dumps({"username": username, "password": password})
    answer = _call(session, "POST", url, timeout, f"the credentials of user {username}", fixes, body)
    return _field(answer, "access_token", url)


def _call(
    session: requests.Session,
    method: str,
    url: str,
    timeout: float,
    what: str,
    fixes: Mapping[int, str],
    body: str | None = None,
) -> dict[str, Any]:
    """One call of the API: its JSON object, or ``ReadmissionError`` saying ``what`` Airflow refused and the fix
    for its status (``fixes``)."""
    try:
        response = session.request(method, url, data=body, timeout=timeout, allow_redirects=False)
    except requests.Timeout as exc:
        raise ReadmissionError(
            f"Airflow at {_shown(url)} did not answer within {timeout:g} s: check that its API server is up and not "
            f"overloaded (its /api/v2/monitor/health), and that the URL is {BASE_URL_HINT}"
        ) from exc
    except requests.ConnectionError as exc:
        raise ReadmissionError(
            f"Airflow at {_shown(url)} is unreachable ({short_reason(exc)}): check the URL ({BASE_URL_HINT}) "
            "and that the API server runs"
        ) from exc
    except requests.RequestException as exc:
        raise ReadmissionError(
            f"cannot call Airflow at {_shown(url)} ({short_reason(exc)}): give {BASE_URL_HINT}"
        ) from exc
    status = int(response.status_code)
    if status not in (200, 201):
        fallback = (
            "see the Airflow API server's log"
            if status >= 500
            else f"Airflow 3 would not answer this: give {BASE_URL_HINT}"
        )
        fix = fixes.get(status, fallback)
        raise ReadmissionError(f"Airflow at {_shown(url)} refused {what} (HTTP {status}: {_detail(response)}): {fix}")
    return _json_object(response, url)


def _json_object(response: requests.Response, url: str) -> dict[str, Any]:
    """The JSON object of a successful answer; ``ReadmissionError`` when there is none (not Airflow's API)."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ReadmissionError(
            f"{_shown(url)} answered HTTP {response.status_code} without a JSON object, as Airflow's API never does: "
            f"give {BASE_URL_HINT}"
        )
    return answer


def _field(answer: dict[str, Any], key: str, url: str) -> str:
    """The non-empty string ``answer[key]``; ``ReadmissionError`` when Airflow's answer lacks it."""
    value = answer.get(key)
    if not isinstance(value, str) or not value:
        raise ReadmissionError(
            f"{_shown(url)} answered without {key!r}, as Airflow 3's API never does: give {BASE_URL_HINT}"
        )
    return value


def _detail(response: requests.Response, limit: int = 200) -> str:
    """Airflow's ``detail`` of a refusal on one line (FastAPI's validation errors as ``loc: msg``), else the body."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in detail if isinstance(e, dict)
        )
    elif isinstance(detail, dict):
        detail = detail.get("message") or json.dumps(detail)
    location = response.headers.get("location")
    text = str(detail or (f"redirected to {location}" if location else "") or response.text or response.reason or "")
    line = next((part.strip() for part in text.splitlines() if part.strip()), "no detail")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _json_body(payload: dict[str, Any], dag_id: str) -> str:
    """``payload`` as JSON; ``ReadmissionError`` when the conf holds what JSON cannot (objects, NaN)."""
    try:
        return json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ReadmissionError(
            f"the conf of the run of DAG {dag_id} is not JSON ({exc}): pass numbers, strings, lists and dicts only"
        ) from exc


def _shown(url: str) -> str:
    """``url`` without the credentials it may carry (``http://user:password@host``)."""
    return re.sub(r"//[^/@]*@", "//", url, count=1)


def _paused_words(dag_id: str) -> str:
    """What a paused DAG means for the run just created."""
    return (
        "the DAG is paused: the run waits, queued, until someone unpauses it (the toggle in the Airflow UI, or "
        f"`airflow dags unpause {dag_id}`)"
    )
