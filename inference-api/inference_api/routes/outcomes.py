"""POST /outcomes: the outcome feed over HTTP (``readmission outcomes FILE`` is the same feed from a file).

Observed readmissions, keyed by the ``encounter_id`` the caller sent with its predictions, recorded in the
prediction log's database (table ``prediction_outcomes``) by ``readmission.outcomes``: a malformed feed records
nothing (422 naming each bad outcome); otherwise each outcome is recorded once, and the ones already recorded,
conflicting with a stored label, or of an encounter never predicted are counted and listed, never stored.
Needs ``Authorization: Bearer <RELOAD_TOKEN>`` (the operator token of POST /model/reload), checked before the
body is read as JSON; the body is then validated as /predict's is (``contract.parse_body``: the same 400 for a
body that is not UTF-8, 422 naming each bad field or repeated key), so the OpenAPI document describes it
(``openapi_extra``).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api.contract import ErrorBody, InvalidBodyError, parse_body
from inference_api.deps import ComponentsDep, require_token
from inference_api.errors import ERROR_RESPONSES
from readmission import schema
from readmission.db import create_db_engine
from readmission.errors import short_reason
from readmission.outcomes import LogNotReadyError, OutcomeFeedError, check_outcomes, prepare_log, record_outcomes

router = APIRouter(tags=["outcomes"])

MAX_OUTCOMES = 10_000  # outcomes per request


_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["encounter_id", "readmitted", "observed_at"],
    "properties": {
        "encounter_id": {"type": "integer", "minimum": 1, "maximum": schema.MAX_ENCOUNTER_ID},
        "readmitted": {"type": "string", "enum": list(schema.TARGET_LABELS)},
        "observed_at": {
            "type": "string",
            "description": "When the outcome was known: ISO 8601 (UTC without an offset), not in the future.",
            "examples": ["2026-11-30", "2026-11-30T14:00:00Z"],
        },
    },
}


class OutcomeFeed(BaseModel):
    """Observed outcomes: each ``{"encounter_id": 123, "readmitted": "<30", "observed_at": "2026-11-30"}``
    (``readmitted`` one of NO, >30, <30; ``observed_at`` ISO 8601, UTC without an offset)."""

    # Checked by ``readmission.outcomes`` (the feed's one check, shared with the file command), so the items are
    # plain objects here; the document still states what each holds.
    outcomes: list[dict[str, Any]] = Field(
        max_length=MAX_OUTCOMES, description=f"At most {MAX_OUTCOMES:,}.", json_schema_extra={"items": _ITEM}
    )


class OutcomeReceipt(BaseModel):
    """What was recorded, and the encounters skipped by kind (never stored)."""

    received: int
    recorded: int
    already_recorded: int = Field(description="Stored before with the same label (a feed may be resent).")
    conflicting: int = Field(description="Stored before with a different label: the stored one is kept.")
    unknown_encounter: int = Field(description="No logged prediction carries this encounter_id (yet).")
    conflicting_ids: list[int]
    unknown_ids: list[int]


class OutcomeStore:
    """The engine of the prediction log's database for the feed, made on first use (with the tables the feed
    needs: ``readmission.outcomes.prepare_log``, once per process), disposed at shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._prepared = False
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The engine, the log prepared (``LogNotReadyError`` while its encounter_id column cannot be added)."""
        with self._lock:
            if self._engine is None:
                self._engine = create_db_engine(self.url)
            if not self._prepared:
                prepare_log(self._engine)
                self._prepared = True
            return self._engine

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _record(store: OutcomeStore, checked: list[Any]) -> Any:
    """Record the checked feed (a worker thread); 503 naming the fix while the log cannot take outcomes or its
    database cannot be reached."""
    try:
        return record_outcomes(store.engine(), checked, "api", prepared=True)
    except LogNotReadyError as exc:
        raise StarletteHTTPException(503, str(exc)) from None
    except OperationalError as exc:  # the database is down or refuses the connection: nothing was recorded
        raise StarletteHTTPException(
            503, f"the prediction log's database cannot be reached ({short_reason(exc)}): nothing recorded; send again"
        ) from None


_EXAMPLE = {"outcomes": [{"encounter_id": 123, "readmitted": "<30", "observed_at": "2026-11-30"}]}
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": OutcomeFeed.model_json_schema(), "example": _EXAMPLE}},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: ERROR_RESPONSES[400],
    401: {"model": ErrorBody, "description": "No valid `Authorization: Bearer <RELOAD_TOKEN>`."},
    413: {"model": ErrorBody, "description": "A body over MAX_BODY_BYTES."},
    422: {
        "model": ErrorBody,
        "description": f'Not `{{"outcomes": [...]}}` of at most {MAX_OUTCOMES:,} (`invalid_input`), or a '
        "malformed outcome (`invalid_outcomes`, each named `outcomes[i].field`): nothing recorded.",
    },
    500: ERROR_RESPONSES[500],
    503: {
        "model": ErrorBody,
        "description": "The log cannot take outcomes yet (no encounter_id column): says the fix.",
    },
}


def _invalid(exc: OutcomeFeedError) -> InvalidBodyError:
    """The feed's problems as the API's 422 body: ``outcomes[i].field`` and the message."""
    errors = [{"field": f"outcomes[{p['row'] - 1}].{p['field']}", "message": p["message"]} for p in exc.problems[:50]]
    return InvalidBodyError(errors, error="invalid_outcomes", total=exc.total)


@router.post("/outcomes", response_model=OutcomeReceipt, responses=_RESPONSES, openapi_extra={"requestBody": _BODY})
async def post_outcomes(request: Request, parts: ComponentsDep) -> OutcomeReceipt:
    """Record observed readmissions by encounter (idempotent; needs `Authorization: Bearer <RELOAD_TOKEN>`)."""
    require_token(request, parts.settings.reload_token)
    feed = await run_in_threadpool(parse_body, await request.body(), OutcomeFeed)
    try:
        checked = check_outcomes(feed.outcomes, "the outcomes")
    except OutcomeFeedError as exc:
        raise _invalid(exc) from None
    store: OutcomeStore = request.app.state.outcome_store
    report = await run_in_threadpool(_record, store, checked)
    return OutcomeReceipt(**vars(report))
