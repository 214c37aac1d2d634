"""The HTTP contract: request and response models, raw-body validation and the OpenAPI additions.

The request bodies are read as bytes and validated by pydantic-core in one pass (``parse_body``); FastAPI's
own body handling would decode the JSON into Python objects first and validate them after. The OpenAPI
document still describes them (``request_body`` and ``with_request_models``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import pydantic_core
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


class Contribution(BaseModel):
    """One feature's part in the 30-day risk."""

    feature: str = Field(
        description="The contract's field, or a sum the model derives from several fields (visits_last_year, "
        "medications_changed, medications_taken)."
    )
    description: str = Field(description="The feature in words.")
    value: str | int | float | None = Field(description="The value sent (for a derived sum, the sum).")
    contribution: float = Field(
        description="Signed contribution on the explanation's scale: positive raises the 30-day risk."
    )
    direction: str = Field(description="raises the risk, lowers the risk or no effect.")


class OtherFeatures(BaseModel):
    """The features not listed, summed."""

    count: int
    contribution: float


class Explanation(BaseModel):
    """Why this risk: exact contributions (TreeSHAP for trees, linear terms for logistic regression).

    ``base_value + sum(contributions[].contribution) + other_features.contribution == value``.
    """

    scale: str = Field(
        description="log-odds (value is the log-odds of P(<30): boosted trees, logistic regression) or "
        "probability (value is P(<30): a random forest, an average of trees)."
    )
    base_value: float = Field(description="The model's average output over its training data, on this scale.")
    value: float = Field(description="This encounter's output on this scale: base_value plus all contributions.")
    calibrated: bool = Field(
        description="True when training recalibrated the model: value is then the model before its "
        "calibration (explained_risk), and risk_30_days is recalibrated from all three class probabilities, "
        "so it is not a function of value alone."
    )
    explained_risk: float = Field(
        description="The P(<30) that value stands for (the inverse logit of value on the log-odds scale): "
        "risk_30_days itself unless calibrated."
    )
    contributions: list[Contribution] = Field(description="The largest contributions first (explain_top of them).")
    other_features: OtherFeatures


class Scores(BaseModel):
    """One encounter's prediction."""

    predicted_class: str = Field(description="Most probable class of `readmitted`: NO, >30 or <30.")
    probabilities: dict[str, float] = Field(description="Probability of each class; they sum to 1.")
    risk_30_days: float = Field(description="P(<30): the 30-day readmission risk.")
    risk_band: str = Field(description="low / medium / high, from RISK_BAND_THRESHOLDS.")
    explanation: Explanation | None = Field(None, description="Only with explain=true in the query.")


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
    risk_band_thresholds: list[float] = Field(
        description="The cut points of risk_band (RISK_BAND_THRESHOLDS): low below the first, high from the second."
    )
    explanations: bool = Field(description="Whether explain=true is served for this version.")
    explain_problem: str | None = Field(description="Why not, when explanations is false.")


class ModelVersionInfo(BaseModel):
    """One registered version and what the promotion gate decided on it (its version tags)."""

    version: str
    created_at: datetime = Field(description="When the version was registered.")
    run_id: str
    family: str | None = Field(description="The model family (tag `model_family`).")
    aliases: list[str] = Field(description="The registry aliases this version holds now (`champion`, `challenger`).")
    serving: bool = Field(description="Whether this instance serves this version now.")
    decision: str | None = Field(
        description="The gate's decision: `promoted`, `kept previous champion`, `re-gating` (an operator's re-gate "
        "in progress); null when the gate has not decided (tag `promotion.decision`)."
    )
    reason: str | None = Field(description="Why, in the gate's words (tag `promotion.reason`).")
    previous_champion: str | None = Field(description="The champion the gate compared it with; null when none.")
    selection_metric: str = Field(description="The metric the gate compares on the same test split.")
    candidate_score: float | None = Field(description="This version's score on the gate's test split.")
    champion_score: float | None = Field(description="The previous champion's score on the same split.")
    rollback_reason: str | None = Field(description="Set when `champion` was rolled back to this version.")


class ModelVersions(BaseModel):
    """Answer of GET /model/versions: the registry's history of the served registered model, newest first."""

    name: str
    serving_version: str | None = Field(description="The version this instance serves; null when none is loaded.")
    versions: list[ModelVersionInfo]
    total: int = Field(description="How many versions the registry holds (the answer lists at most `limit`).")


class FeatureImportance(BaseModel):
    """One input's global importance."""

    feature: str = Field(description="The input's name in the contract.")
    importance: float


class ModelImportance(BaseModel):
    """Answer of GET /model/importance: the serving version's global feature importance, largest first."""

    version: str
    run_id: str
    measure: str = Field(description="What the numbers are.")
    features: list[FeatureImportance]


class ModelPlots(BaseModel):
    """Answer of GET /model/plots: the plot names the API serves and which of them the serving run logged."""

    version: str
    run_id: str
    plots: dict[str, bool] = Field(description="Each allowed plot name: whether the serving version's run has it.")


class ErrorItem(BaseModel):
    """One invalid field."""

    field: str
    message: str
    allowed: list[str | int] | None = Field(None, description="Allowed values: numbers for coded columns.")
    minimum: int | None = None
    maximum: int | None = None


MAX_LISTED_ERRORS = 50  # an answer lists at most this many errors (and says how many there were)


class ErrorBody(BaseModel):
    """Every error answer has this shape."""

    error: str
    message: str
    request_id: str
    errors: list[ErrorItem] | None = Field(None, description=f"The first {MAX_LISTED_ERRORS} problems at most.")
    errors_total: int | None = Field(None, description="How many problems there were, when not all are listed.")


class InvalidBodyError(Exception):
    """The request body is not a valid request: each bad field, as the 422 answer lists them.

    ``error`` is the answer's code: ``invalid_input`` (the contract refuses a value), ``not_eligible`` (a
    valid encounter outside the model's population) or ``duplicate_key`` (a JSON object repeats a key).
    ``errors`` holds at most ``MAX_LISTED_ERRORS`` items; ``total`` counts them all.
    """

    def __init__(self, errors: list[dict[str, Any]], error: str = "invalid_input", total: int | None = None) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors[:MAX_LISTED_ERRORS]
        self.error = error
        self.total = len(errors) if total is None else total


class BatchTooLargeError(Exception):
    """More encounters than MAX_BATCH_SIZE (413), found before any of them is validated."""


def check_eligible(encounters: Sequence[BaseModel], prefix: str = "") -> None:
    """Raise ``InvalidBodyError`` (``not_eligible``) naming each encounter outside the model's population;
    ``prefix`` is the list's field in the body (``encounters``), none for a single encounter."""
    field = schema.column(schema.ELIGIBILITY_FIELD).field_name
    errors = []
    for i, encounter in enumerate(encounters):
        if (problem := schema.eligibility_problem(getattr(encounter, field))) is not None:
            where = f"{prefix}[{i}].{schema.ELIGIBILITY_FIELD}" if prefix else schema.ELIGIBILITY_FIELD
            errors.append({"field": where, "message": problem.split(": ", 1)[1]})
    if errors:
        raise InvalidBodyError(errors, error="not_eligible")


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_body(body: bytes, model: type[ModelT]) -> ModelT:
    """Validate raw JSON bytes straight into ``model`` (one pass in pydantic-core, no intermediate dict).

    Raises ``InvalidBodyError`` (422) naming every bad field, or naming each key that an object of the body
    repeats (``duplicate_key``: JSON readers disagree on which value counts), or a 400 when the body is not
    UTF-8 text.
    """
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid_body(exc, body) from None
    if _key_count(body) != _keys_given(parsed) and (repeated := _repeated_keys(body)):
        raise InvalidBodyError(repeated, error="duplicate_key")
    return parsed


def parse_batch(body: bytes, max_items: int) -> BatchRequest:
    """``parse_body`` for ``BatchRequest``, after checking the item count: more than ``max_items``
    encounters raise ``BatchTooLargeError`` (413) before any encounter is validated, so a pathological
    body (thousands of empty objects) costs one JSON parse, not thousands of error lists."""
    if body.count(b"{") <= max_items + 1:  # at most max_items objects inside: no need to count them
        return parse_body(body, BatchRequest)
    try:
        data = pydantic_core.from_json(body)
    except ValueError:
        return parse_body(body, BatchRequest)  # not JSON: the same 400/422 as everywhere
    items = data.get("encounters") if isinstance(data, dict) else None
    if isinstance(items, list) and len(items) > max_items:
        raise BatchTooLargeError(f"{len(items):,} encounters in one batch; the limit is {max_items:,} (MAX_BATCH_SIZE)")
    return parse_body(body, BatchRequest)


def _invalid_body(exc: ValidationError, body: bytes) -> Exception:
    """The 400 (not UTF-8) or the 422 for a body pydantic refused, listing its first errors only."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return StarletteHTTPException(400, "the request body is not UTF-8 text")
    listed = [_field_error(dict(e)) for e in errors[:MAX_LISTED_ERRORS]]
    return InvalidBodyError(listed, total=exc.error_count())


def _key_count(body: bytes) -> int:
    """An upper bound of the keys in a body that validated: its colons. Every key is followed by one, and
    no value the contract accepts holds one (levels, codes and numbers have none), so for a valid
    encounter the count is exact; a body it over-counts only takes the slow, exact check of
    ``_repeated_keys``. One ``bytes.count`` of one byte: 0.2 us on an encounter."""
    return body.count(b":")


def _keys_given(value: Any) -> int:
    """Keys the body must have held to give ``value``: each model's fields set, recursively."""
    if isinstance(value, schema.EncounterFeatures):
        return len(value.model_fields_set)
    if isinstance(value, BaseModel):
        return len(value.model_fields_set) + sum(_keys_given(getattr(value, f)) for f in value.model_fields_set)
    if isinstance(value, list):
        return sum(_keys_given(v) for v in value)
    return 0


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it repeated."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    seen: set[str] = set()
    obj.repeated = []
    for key, _ in pairs:
        if key in seen and key not in obj.repeated:
            obj.repeated.append(key)
        seen.add(key)
    return obj


def _repeated_keys(body: bytes) -> list[dict[str, Any]]:
    """One error per key that an object of ``body`` repeats, at its place (``encounters[2].age``)."""
    errors: list[dict[str, Any]] = []
    message = "this key appears more than once in the same object; send it once (JSON readers disagree on which counts)"

    def walk(value: Any, where: str) -> None:
        if isinstance(value, _Object):
            errors.extend({"field": f"{where}.{k}".lstrip("."), "message": message} for k in value.repeated)
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(json.loads(body, object_pairs_hook=_object), "")
    return errors


@dataclass(frozen=True)
class _Accepts:
    """What one field of the contract accepts, said once: ``expected`` ends its 422 message, ``keys`` are the
    same values as its error item's ``allowed`` or ``minimum``/``maximum``, ``numeric`` for JSON numbers."""

    expected: str
    keys: dict[str, Any]
    numeric: bool


def _spoken(values: Sequence[str | int]) -> str:
    """'A', 'B' or null: levels quoted, codes as numbers, the "null" of an ``allowed`` list as JSON null."""
    words = ["null" if v == "null" else str(v) if isinstance(v, int) else repr(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _accepts(col: schema.Column) -> _Accepts:
    """``_Accepts`` of a feature or history column, from its declaration in the schema."""
    if col.kind is schema.Kind.CODED:  # the death or hospice codes are valid JSON but answered not_eligible
        codes = [
            int(v) for v in col.levels if col.name != schema.ELIGIBILITY_FIELD or not schema.eligibility_problem(v)
        ]
        return _Accepts(f"one of {_spoken(codes)}", {"allowed": codes}, numeric=True)
    if col.levels:
        allowed = [*col.levels, *(["null"] if col.may_be_missing else [])]
        return _Accepts(f"one of {_spoken(allowed)}", {"allowed": allowed}, numeric=False)
    if col.kind is schema.Kind.DIAGNOSIS:
        code = f"an ICD-9 code like '428', '250.13', 'V45' or 'E888' (pattern {schema.DIAGNOSIS_PATTERN})"
        return _Accepts(code + (", or null when unknown" if col.may_be_missing else ""), {}, numeric=False)
    if col.kind is schema.Kind.IDENTIFIER:  # encounter_id: optional, never a model input
        limits: dict[str, Any] = {"minimum": 1, "maximum": schema.MAX_ENCOUNTER_ID}
        return _Accepts(f"a whole number from 1 to {schema.MAX_ENCOUNTER_ID}, or leave it out", limits, numeric=True)
    bounds = {"minimum": col.minimum, "maximum": col.maximum}
    return _Accepts(f"a whole number from {col.minimum} to {col.maximum}", bounds, numeric=True)


_ACCEPTS: dict[str, _Accepts] = {
    c.name: _accepts(c) for c in (*schema.FEATURE_COLUMNS, *schema.HISTORY_COLUMNS, schema.column(schema.ENCOUNTER_ID))
}


def _shown(value: Any) -> str:
    """A refused value as the body spelled it (JSON words for null and booleans), cut to 40 characters."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "an object"
    return f"{value!r:.40}"


def _field_message(accepts: _Accepts, err: dict[str, Any]) -> str:
    """The message of a contract field's error: what was wrong, then what the field accepts (once)."""
    value = err.get("input")
    if err.get("type") == "missing":
        return f"required: send {accepts.expected}"
    if accepts.numeric and isinstance(value, str):
        return f"send a JSON number, not the string {value!r:.40}: {accepts.expected}"
    if not accepts.numeric and isinstance(value, int | float) and not isinstance(value, bool):
        return f"send a JSON string, not the number {value!r:.40}: {accepts.expected}"
    problem = "is out of range" if err.get("type") in ("greater_than_equal", "less_than_equal") else "is not allowed"
    return f"{_shown(value)} {problem}: send {accepts.expected}"


def _field_error(err: dict[str, Any]) -> dict[str, Any]:
    """One item of a 422 answer: where the error is and, for a field of the contract, what it accepts."""
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error") or err.get("msg", "")
        return {"field": "body", "message": f"the body is not valid JSON ({detail})"}
    loc = [p for p in err.get("loc", ()) if p != "body"]
    # A Literal failure on a nullable field is reported under its type branch ("race", "literal[...]").
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in {"none", "int", "str"}))]
    where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
    accepts = _ACCEPTS.get(parts[-1]) if parts and err.get("type") != "extra_forbidden" else None
    if accepts is None:
        return {"field": where or "body", "message": err.get("msg", "invalid")}
    return {"field": where, "message": _field_message(accepts, err), **accepts.keys}


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
