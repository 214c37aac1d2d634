"""The HTTP contract: request and response models, raw-body validation and the OpenAPI additions.

The request bodies are read as bytes and validated by pydantic-core in one pass (``parse_body``); FastAPI's
own body handling would decode the JSON into Python objects first and validate them after. The OpenAPI
document still describes them (``request_body`` and ``with_request_models``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api.model_manager import LoadedModel
from readmission import schema

# --- response models (documentation and contract) ---------------------------------------------------------


class ModelRef(BaseModel):
    """The registry version that answered."""

    name: str
    version: str
    alias: str | None = Field(
        description="The registry alias pointing at this version; null when the registry no longer names it "
        "(see registry_status)."
    )
    registry_status: str | None = Field(
        None,
        description="Only when the alias is null: alias_missing (the alias was deleted), version_deleted (the "
        "version was deleted) or alias_moved (the alias names another version, which failed to load); the last "
        "good model still answers.",
    )
    registry_message: str | None = Field(None, description="Only when the alias is null: what the registry says.")


class Scores(BaseModel):
    """One encounter's prediction."""

    predicted_class: str = Field(description="Most probable class of `readmitted`: NO, >30 or <30.")
    probabilities: dict[str, float] = Field(description="Probability of each class; they sum to 1.")
    risk_30_days: float = Field(description="P(<30): the 30-day readmission risk.")
    risk_band: str = Field(description="low / medium / high, from RISK_BAND_THRESHOLDS.")


class Prediction(Scores):
    """Answer of POST /predict."""

    request_id: str
    model: ModelRef


class BatchPrediction(BaseModel):
    """Answer of POST /predict/batch: one entry per encounter, in request order."""

    request_id: str
    model: ModelRef
    predictions: list[Scores]


class BatchRequest(BaseModel):
    """Several encounters scored in one call."""

    encounters: list[schema.EncounterFeatures]


class ModelInfo(BaseModel):
    """The model being served."""

    name: str
    version: str
    alias: str | None = Field(
        description="The registry alias of this version; null when the registry no longer names it."
    )
    registry_status: str = Field(
        description="ok, alias_missing (alias deleted), version_deleted (version deleted) or alias_moved (the alias "
        "names another version, which failed to load)."
    )
    registry_message: str | None = Field(description="What the registry says, when the status is not ok.")
    run_id: str
    loaded_at: datetime
    prediction_path: str
    metrics: dict[str, float]


class ErrorItem(BaseModel):
    """One invalid field."""

    field: str
    message: str
    allowed: list[str] | None = None
    minimum: int | None = None
    maximum: int | None = None


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: str
    message: str
    request_id: str
    errors: list[ErrorItem] | None = None


class InvalidBodyError(Exception):
    """The request body is not a valid request: each bad field, as the 422 answer lists them."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_body(body: bytes, model: type[ModelT]) -> ModelT:
    """Validate raw JSON bytes straight into ``model`` (one pass in pydantic-core, no intermediate dict).

    Raises ``InvalidBodyError`` (422) naming every bad field, or a 400 when the body is not UTF-8 text.
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                raise StarletteHTTPException(400, "the request body is not UTF-8 text") from None
        raise InvalidBodyError([_field_error(dict(e)) for e in errors]) from None


def _field_error(err: dict[str, Any]) -> dict[str, Any]:
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error") or err.get("msg", "")
        return {"field": "body", "message": f"the body is not valid JSON ({detail})"}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    # A Literal failure on a nullable field is reported under its type branch ("race", "literal[...]").
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"none", "int", "str"}))]
    name = parts[-1] if parts else ""
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
    item: dict[str, Any] = {"field": where or "body", "message": err.get("msg", "invalid")}
    col = schema.COLUMNS_BY_NAME.get(name)
    if col is not None and col.levels:
        item["allowed"] = [*col.levels, *(["null"] if col.may_be_missing else [])]
    elif col is not None and col.minimum is not None:
        item["minimum"], item["maximum"] = col.minimum, col.maximum
    elif name in schema.HISTORY_FEATURE_NAMES:
        history = next(h for h in schema.HISTORY_FEATURES if h.name == name)
        item["minimum"], item["maximum"] = 0, history.maximum
    elif col is not None and col.kind is schema.Kind.DIAGNOSIS:
        item["message"] += f" (an ICD-9 code like 428, 250.13, V45 or E888; pattern {schema.DIAGNOSIS_PATTERN})"
    return item


REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "EncounterFeatures": schema.EncounterFeatures,
    "BatchRequest": BatchRequest,
}


def request_body(name: str, examples: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of an endpoint that validates its raw body with ``parse_body``."""
    content = {"schema": {"$ref": f"#/components/schemas/{name}"}, "examples": examples}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def with_request_models(spec: dict[str, Any], max_batch_size: int) -> dict[str, Any]:
    """Add the request models (and the models they use) to the document's components, with the batch
    limit this instance enforces (MAX_BATCH_SIZE; a longer batch is answered 413)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, model in REQUEST_MODELS.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    encounters = schemas["BatchRequest"]["properties"]["encounters"]
    encounters["maxItems"] = max_batch_size
    encounters["description"] = f"At most {max_batch_size:,} encounters (MAX_BATCH_SIZE); more are answered 413."
    return spec


def model_ref(model: LoadedModel) -> dict[str, str | None]:
    """The ``model`` block of an answer (``ModelRef``): the registry status only when it is not ok."""
    if model.alias is not None:
        return {"name": model.name, "version": model.version, "alias": model.alias}
    return {
        "name": model.name,
        "version": model.version,
        "alias": None,
        "registry_status": model.registry_status,
        "registry_message": model.registry_message,
    }
