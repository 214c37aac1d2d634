"""GET /model (the served version), POST /model/reload (check the registry alias now), and, read-only from
MLflow for the page's Model tab: GET /model/versions (the registry's history with the gate's decisions),
GET /model/plots and /model/plots/{name} (the serving run's evaluation plots), GET /model/importance."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_api import model_details
from inference_api.batcher import ModelNotReadyError
from inference_api.components import Components
from inference_api.contract import ErrorBody, ModelImportance, ModelInfo, ModelPlots, ModelVersions
from inference_api.deps import ComponentsDep, require_token
from inference_api.errors import ERROR_RESPONSES
from inference_api.model_manager import LoadedModel

router = APIRouter(tags=["model"])

_NOT_FOUND = {"model": ErrorBody, "description": "Not an allowed name (the answer lists them), or not logged."}
_REGISTRY_DOWN = {"model": ErrorBody, "description": "MLflow could not be read (down, or it refused the user)."}


@router.get("/model", response_model=ModelInfo, responses={503: ERROR_RESPONSES[503]})
async def model_info(parts: ComponentsDep) -> ModelInfo:
    """The served version, its run, training metrics and when it was loaded."""
    model = parts.manager.current
    if model is None:
        raise ModelNotReadyError(parts.manager.not_ready_reason)
    return ModelInfo(
        name=model.name,
        version=model.version,
        alias=model.alias,
        registry_status=model.registry_status,
        registry_message=model.registry_message,
        run_id=model.run_id,
        loaded_at=model.loaded_at,
        prediction_path=model.predictor.path,
        metrics=model.metrics,
        risk_band_thresholds=list(parts.settings.bands),
        explanations=model.explainer is not None,
        explain_problem=model.explain_problem,
    )


@router.post("/model/reload", responses={401: {"model": ErrorBody}})
async def reload(request: Request, parts: ComponentsDep) -> dict[str, Any]:
    """Check the registry alias now and swap if it moved (needs `Authorization: Bearer <RELOAD_TOKEN>` when set)."""
    require_token(request, parts.settings.reload_token)
    manager = parts.manager
    outcome = await run_in_threadpool(manager.check)
    model = manager.current
    return {"outcome": outcome, "version": model.version if model else None, "last_error": manager.last_error}


def _served(parts: Components) -> LoadedModel:
    model = parts.manager.current
    if model is None:
        raise ModelNotReadyError(parts.manager.not_ready_reason)
    return model


def _client(parts: Components) -> Any:
    """The MLflow client of the registry source (502 when even building it fails)."""
    try:
        return parts.manager.registry_source().client
    except Exception as exc:
        raise model_details.unreachable("be reached", exc) from exc


@router.get("/model/versions", response_model=ModelVersions, responses={502: _REGISTRY_DOWN})
async def model_versions(
    parts: ComponentsDep, limit: Annotated[int, Query(ge=1, le=1000, description="Most versions listed.")] = 100
) -> ModelVersions:
    """The registry's versions of the served registered model, newest first: when each was registered, its run,
    the aliases it holds, and the promotion gate's decision and reason (from its version tags). Answers even
    when no model is loaded; 502 when MLflow cannot be read."""
    current = parts.manager.current
    serving = current.version if current is not None else None
    name = parts.settings.model_name

    def read() -> list[Any]:
        return model_details.version_history(_client(parts), name, serving)

    versions = await run_in_threadpool(read)
    return ModelVersions(name=name, serving_version=serving, versions=versions[:limit], total=len(versions))


@router.get("/model/plots", response_model=ModelPlots, responses={503: ERROR_RESPONSES[503], 502: _REGISTRY_DOWN})
async def model_plots(parts: ComponentsDep) -> ModelPlots:
    """The plot names GET /model/plots/{name} serves, each with whether the serving version's run logged it
    (runs trained before a plot was added lack it). 503 when no model is loaded, 502 when MLflow cannot be read."""
    model = _served(parts)
    available = await run_in_threadpool(model_details.plot_availability, parts.artifacts, _client(parts), model)
    return ModelPlots(version=model.version, run_id=model.run_id, plots=available)


@router.get(
    "/model/plots/{name}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG."},
        404: _NOT_FOUND,
        502: _REGISTRY_DOWN,
        503: ERROR_RESPONSES[503],
    },
)
async def model_plot(name: str, parts: ComponentsDep) -> Response:
    """One evaluation plot of the serving version's run (test split) as PNG: `roc`, `precision-recall`,
    `reliability` (calibration), `confusion-matrix` or `feature-importance`. 404 for any other name (the answer
    lists the allowed ones) or a plot the run did not log; 503 when no model is loaded; 502 when MLflow cannot
    be read. Each (run, plot) is downloaded once and kept in memory."""
    path = model_details.plot_path(name)
    model = _served(parts)
    client = _client(parts)
    try:
        content = await run_in_threadpool(parts.artifacts.read, client, model.run_id, path)
    except model_details.ArtifactMissingError:
        available = await run_in_threadpool(model_details.plot_availability, parts.artifacts, client, model)
        raise StarletteHTTPException(404, model_details.missing_plot_message(name, model, available)) from None
    return Response(content, media_type="image/png", headers={"X-Model-Version": model.version})


@router.get(
    "/model/importance",
    response_model=ModelImportance,
    responses={404: _NOT_FOUND, 502: _REGISTRY_DOWN, 503: ERROR_RESPONSES[503]},
)
async def model_importance(parts: ComponentsDep) -> ModelImportance:
    """The serving version's global feature importance (permutation importance on the test split), largest
    first. 404 when its run did not log it; 503 when no model is loaded; 502 when MLflow cannot be read."""
    model = _served(parts)
    client = _client(parts)
    try:
        return await run_in_threadpool(model_details.importance, parts.artifacts, client, model)
    except model_details.ArtifactMissingError:
        message = f"the run of version {model.version} ({model.run_id}) did not log a feature importance"
        raise StarletteHTTPException(404, message) from None
