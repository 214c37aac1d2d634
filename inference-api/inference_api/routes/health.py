"""GET /health/live, GET /health/ready and GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_api.contract import model_ref
from inference_api.deps import ComponentsDep

router = APIRouter(tags=["health"])


@router.get("/health/live", responses={503: {"description": "The micro-batcher died: restart the process."}})
async def live(parts: ComponentsDep) -> JSONResponse:
    """The process is up and answering (it may not have a model yet); 503 once the micro-batcher has died,
    which only a restart mends (the kubelet's liveness probe restarts the container). ``instance`` is the
    process's INSTANCE_ID (random when not set)."""
    instance = parts.instance_id
    if parts.batcher.failure is not None:
        return JSONResponse({"status": "dead", "reason": parts.batcher.failure, "instance": instance}, status_code=503)
    return JSONResponse({"status": "alive", "instance": instance})


@router.get("/health/ready", responses={503: {"description": "Not ready, with the reason."}})
async def ready(parts: ComponentsDep) -> JSONResponse:
    """Ready when a model is loaded and the model worker answers; 503 with the reason otherwise (no model yet,
    the micro-batcher stopped, or a model call running past PREDICT_TIMEOUT_SECONDS). The body's ``model``
    block says when the registry no longer names the served version (``alias`` null, ``registry_status``)."""
    model = parts.manager.current
    reason = parts.manager.not_ready_reason if model is None else parts.batcher.unhealthy_reason()
    if model is None or reason is not None:
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "model": model_ref(model)})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
async def prometheus_metrics(parts: ComponentsDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)
