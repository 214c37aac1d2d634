"""POST /outcomes: the outcome feed over HTTP (``readmission outcomes FILE`` is the same feed from a file).

Observed readmissions, keyed by the ``encounter_id`` the caller sent with its predictions, recorded in the
prediction log's database (table ``prediction_outcomes``) by ``readmission.outcomes``: a malformed feed records
nothing (422 naming each bad outcome); otherwise each outcome is recorded once, and the ones already recorded,
conflicting with a stored label, or of an encounter never predicted are counted and listed, never stored.
Needs ``Authorization: Bearer <RELOAD_TOKEN>`` (the operator token of POST /model/reload).
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from inference_api.contract import ErrorBody, InvalidBodyError
from inference_api.deps import ComponentsDep, require_token
from readmission.db import create_db_engine
from readmission.outcomes import OutcomeFeedError, check_outcomes, record_outcomes

router = APIRouter(tags=["outcomes"])

MAX_OUTCOMES = 10_000  # outcomes per request


class OutcomeFeed(BaseModel):
    """Observed outcomes: each ``{"encounter_id": 123, "readmitted": "<30", "observed_at": "2026-11-30"}``
    (``readmitted`` one of NO, >30, <30; ``observed_at`` ISO 8601, UTC without an offset)."""

    outcomes: list[dict[str, Any]] = Field(max_length=MAX_OUTCOMES, description=f"At most {MAX_OUTCOMES:,}.")


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
    """The engine of the prediction log's database for the feed, made on first use, disposed at shutdown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = create_db_engine(self.url)
            return self._engine

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _invalid(exc: OutcomeFeedError) -> InvalidBodyError:
    """The feed's problems as the API's 422 body: ``outcomes[i].field`` and the message."""
    errors = [{"field": f"outcomes[{p['row'] - 1}].{p['field']}", "message": p["message"]} for p in exc.problems[:50]]
    return InvalidBodyError(errors, error="invalid_outcomes", total=exc.total)


@router.post(
    "/outcomes",
    response_model=OutcomeReceipt,
    responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def post_outcomes(request: Request, feed: OutcomeFeed, parts: ComponentsDep) -> OutcomeReceipt:
    """Record observed readmissions by encounter (idempotent; needs `Authorization: Bearer <RELOAD_TOKEN>`)."""
    require_token(request, parts.settings.reload_token)
    try:
        checked = check_outcomes(feed.outcomes, "the outcomes")
    except OutcomeFeedError as exc:
        raise _invalid(exc) from None
    store: OutcomeStore = request.app.state.outcome_store
    report = await run_in_threadpool(record_outcomes, store.engine(), checked, "api")
    return OutcomeReceipt(**vars(report))
