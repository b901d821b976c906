"""The JSON API: submit, list, read and cancel jobs, and the images they produce."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..answers import queue_full_answer
from ..config import Settings
from ..estimate import accuracy_report
from ..history import parse_filter
from ..images import JOB_ID
from ..params import InvalidRequest, validate
from ..security import decimal
from ..service import JobFinished, JobNotFound, JobService, QueueFull, ShuttingDown
from ..templating import error_page

IMAGE_NAME_SUFFIX = ".png"


def manager_of(request: Request) -> JobService:
    manager: JobService = request.app.state.manager
    return manager


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_id_of(request: Request) -> str:
    job_id = str(request.path_params["job_id"])
    if not JOB_ID.match(job_id):
        raise JobNotFound(job_id)
    return job_id


class MalformedJSON(Exception):
    """The body is not JSON at all (400; a body that is JSON but wrong gets a 422 per field)."""


async def json_body(request: Request, *, empty: Any = None) -> Any:
    """The request's JSON body; `empty` when it has none and that is allowed (None: it is not)."""
    raw = await request.body()
    if empty is not None and not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[…" nested deep
        raise MalformedJSON(f"is not valid JSON: {exc}") from None


async def submit_job(request: Request) -> Response:
    params = validate(await json_body(request), settings_of(request))
    state = await manager_of(request).submit(params)
    return JSONResponse(state.snapshot(), status_code=201, headers={"Location": f"/api/jobs/{state.id}"})


async def list_jobs(request: Request) -> Response:
    errors: dict[str, str] = {}
    limit = _query_int(request, "limit", 50, 1, 500, errors)
    offset = _query_int(request, "offset", 0, 0, 10**9, errors)
    chosen = parse_filter(request.query_params, errors)  # status, q (prompt text), size (WxH)
    if errors:
        raise InvalidRequest(errors)
    jobs = await manager_of(request).recent(limit=limit, offset=offset, **chosen.store_args())
    return JSONResponse({"jobs": [job.snapshot() for job in jobs], "limit": limit, "offset": offset})


async def get_job(request: Request) -> Response:
    state = await manager_of(request).get(job_id_of(request))
    return JSONResponse(state.snapshot())


async def cancel_job(request: Request) -> Response:
    state = await manager_of(request).cancel(job_id_of(request))
    return JSONResponse(state.snapshot(), status_code=202)


async def image(request: Request) -> Response:
    name = str(request.path_params["name"])
    stem, _, index = name.removesuffix(IMAGE_NAME_SUFFIX).rpartition("-")
    if not name.endswith(IMAGE_NAME_SUFFIX) or not JOB_ID.match(stem) or not index.isdigit():
        raise HTTPException(404, "no such image")
    path = settings_of(request).images_dir / name
    if not path.is_file():
        raise HTTPException(404, "no such image")
    # Names are unique per job and never rewritten, so the file can be cached for good.
    return FileResponse(
        path, media_type="image/png", headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )


async def model_status(request: Request) -> Response:
    """GET /api/status: the model unloaded, loading (which part, about how long), ready or failed."""
    manager = manager_of(request)
    return JSONResponse({**manager.status_snapshot(), "queued": len(manager.queued())})


async def eta_accuracy(request: Request) -> Response:
    """How far the predicted total was from the actual run time at 0, 10, 25 and 50 % of each job."""
    rows = await manager_of(request).store.eta_accuracy_rows()
    return JSONResponse(accuracy_report(rows))


def whole_number(raw: str | None) -> int | None:
    """A query parameter as a non-negative int, or None."""
    return int(raw) if raw is not None and decimal(raw) else None


def _query_int(request: Request, name: str, default: int, low: int, high: int, errors: dict[str, str]) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        errors[name] = f"must be a whole number between {low} and {high}"
        return default
    return value


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return JSONResponse({"errors": exc.errors}, status_code=422)


async def job_not_found(request: Request, exc: Exception) -> Response:
    message = f"no job with id {exc}"
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=404)
    return error_page(request, 404, "Job not found", message)


async def job_finished(request: Request, exc: Exception) -> Response:
    job_id = str(exc)
    state = await manager_of(request).get(job_id)
    body: dict[str, Any] = {
        "error": f"job {job_id} has already ended ({state.status})",
        "job": state.snapshot(),
    }
    return JSONResponse(body, status_code=409)


async def queue_full(request: Request, exc: Exception) -> Response:
    """429 with Retry-After and the predicted wait (the home form shows it on the form instead)."""
    assert isinstance(exc, QueueFull)
    message, body, headers = queue_full_answer(exc)
    if wants_json(request):
        return JSONResponse(body, status_code=429, headers=headers)
    return error_page(request, 429, "Queue full", message, headers)


async def shutting_down(request: Request, exc: Exception) -> Response:
    """503 while the server drains on SIGTERM: nothing was queued; try again once it is back."""
    headers = {"Retry-After": "10"}
    if wants_json(request):
        return JSONResponse({"error": str(exc)}, status_code=503, headers=headers)
    return error_page(request, 503, "Shutting down", str(exc), headers)


async def malformed_json(request: Request, exc: Exception) -> Response:
    return JSONResponse({"errors": {"body": str(exc)}}, status_code=400)


exception_handlers: dict[Any, Any] = {
    MalformedJSON: malformed_json,
    InvalidRequest: invalid_request,
    JobNotFound: job_not_found,
    JobFinished: job_finished,
    QueueFull: queue_full,
    ShuttingDown: shutting_down,
}

routes = [
    Route("/api/jobs", submit_job, methods=["POST"]),
    Route("/api/jobs", list_jobs, methods=["GET"]),
    Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/api/eta/accuracy", eta_accuracy, methods=["GET"]),
    Route("/api/status", model_status, methods=["GET"]),
    Route("/images/{name}", image, methods=["GET"]),
]
