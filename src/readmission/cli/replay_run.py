"""`readmission replay`: the CLEAN test split through a running API, then its true outcomes.

The encounters go to POST /predict/batch in batches with their ``encounter_id``; after ``delay_seconds`` a
random ``fraction`` of their true ``readmitted`` goes to POST /outcomes. The API logs predictions a few
milliseconds after answering, so an outcome may reach it before its prediction is stored: those come back as
``unknown_encounter`` and are sent again (at most ``RETRIES`` times, a second apart).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from readmission.errors import ReadmissionError

BATCH = 500  # encounters per request (the API's MAX_BATCH_SIZE is 1,000 by default)
RETRIES = 10


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how (see `readmission replay --help`)."""

    api_url: str
    token: str | None
    fraction: float
    delay_seconds: float
    where: list[str]
    limit: int | None
    seed: int


def _post(url: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
    """POST ``body`` as JSON; the answer's JSON, or ``ReadmissionError`` naming the URL, status and error."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310 - http(s) only: run_replay checks
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - http(s) only: run_replay checks
            parsed: dict[str, Any] = json.loads(answer.read())
            return parsed
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", "replace")
        raise ReadmissionError(f"{url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ReadmissionError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}; is the API running?") from None


def selected(frame: Any, where: list[str], limit: int | None) -> Any:
    """The rows of ``frame`` matching every FIELD=VALUE of ``where`` (compared as text), at most ``limit``."""
    for condition in where:
        name, sep, value = condition.partition("=")
        if not sep or name not in frame.columns:
            raise ReadmissionError(f"--where {condition!r}: write FIELD=VALUE with a CLEAN column, e.g. age=[70-80)")
        frame = frame[frame[name].astype("string") == value]
    if frame.empty:
        raise ReadmissionError(f"no test encounter matches {' and '.join(where)}")
    return frame.head(limit) if limit else frame


def _outcomes(frame: Any, fraction: float, seed: int) -> list[dict[str, Any]]:
    chosen = frame.sample(frac=fraction, random_state=seed) if fraction < 1 else frame
    now = dt.datetime.now(dt.UTC).isoformat()
    return [
        {"encounter_id": int(e), "readmitted": str(r), "observed_at": now}
        for e, r in zip(chosen["encounter_id"], chosen["readmitted"], strict=True)
    ]


def _feed(api: str, outcomes: list[dict[str, Any]], token: str | None) -> dict[str, int]:
    """Send the outcomes in batches, resending those the API does not know yet; the summed counts."""
    totals = {"recorded": 0, "already_recorded": 0, "conflicting": 0, "unknown_encounter": 0}
    pending = outcomes
    for attempt in range(RETRIES + 1):
        unknown: list[dict[str, Any]] = []
        for start in range(0, len(pending), BATCH):
            chunk = pending[start : start + BATCH]
            answer = _post(f"{api}/outcomes", {"outcomes": chunk}, token)
            for key in ("recorded", "already_recorded", "conflicting"):
                totals[key] += int(answer[key])
            missing = set(answer["unknown_ids"])
            unknown.extend(o for o in chunk if o["encounter_id"] in missing)
        if not unknown or attempt == RETRIES:
            totals["unknown_encounter"] = len(unknown)
            return totals
        pending = unknown
        time.sleep(1.0)
    return totals


def run_replay(clean_url: str, options: ReplayOptions, console: Console) -> str:
    """Replay the CLEAN test split (filtered) through the API at ``options.api_url``; a one-line summary."""
    from readmission.clean import encounter_requests, read_clean
    from readmission.db import create_db_engine

    if not options.api_url.startswith(("http://", "https://")):
        raise ReadmissionError(f"--api-url must be an http:// or https:// address, got {options.api_url!r}")

    engine = create_db_engine(clean_url)
    try:
        frame = selected(read_clean(engine, "test"), options.where, options.limit)
    finally:
        engine.dispose()
    api = options.api_url.rstrip("/")
    _post(f"{api}/outcomes", {"outcomes": []}, options.token)  # the token, before anything is predicted
    requests = encounter_requests(frame, with_ids=True)
    with console.status(f"sending {len(requests):,} test encounters to {api}/predict/batch"):
        for start in range(0, len(requests), BATCH):
            _post(f"{api}/predict/batch", {"encounters": requests[start : start + BATCH]}, None)
    time.sleep(options.delay_seconds)
    outcomes = _outcomes(frame, options.fraction, options.seed)
    with console.status(f"feeding {len(outcomes):,} outcomes to {api}/outcomes"):
        fed = _feed(api, outcomes, options.token)
    return (
        f"{len(requests):,} test encounter(s) predicted; {len(outcomes):,} outcome(s) fed: {fed['recorded']:,} "
        f"recorded, {fed['already_recorded']:,} already recorded, {fed['conflicting']:,} conflicting, "
        f"{fed['unknown_encounter']:,} still unknown to the API"
    )
