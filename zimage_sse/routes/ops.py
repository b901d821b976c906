"""Operational endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..metrics import Metrics
from ..service import JobService

logger = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    """GET /health: the process is up and serving requests."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """GET /ready: 200 once the database answers and the model is resident, 503 saying what is not."""
    manager: JobService | None = getattr(request.app.state, "manager", None)
    if manager is None:
        body: dict[str, Any] = {"ready": False, "model": "not loaded", "database": "not open"}
        return JSONResponse(body, status_code=503)
    database = await _database(manager)
    # Ready once any device has the model resident: that device can take jobs.
    model = "loaded" if manager.loaded else "not loaded"
    body = {"ready": database == "open" and model == "loaded", "model": model, "database": database}
    failure = manager.failure()
    if not manager.loaded and failure is not None:
        # The next job tries the load again, so fixing the checkpoint recovers without a restart.
        body["model"] = f"failed: {failure}"
    if manager.draining:
        body.update(ready=False, shutting_down=True)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


async def _database(manager: JobService) -> str:
    try:
        await manager.store.schema_version()  # a real query: the connection is open and answers
    except Exception as exc:
        logger.exception("readiness: the database did not answer")
        return f"unavailable: {type(exc).__name__}"
    return "open"


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus text format, from the app's own registry."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
