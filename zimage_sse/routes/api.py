"""The JSON API: submit, list, read and cancel jobs, and the images they produce."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..config import Settings
from ..eta import accuracy_report
from ..events import STATUSES
from ..images import JOB_ID
from ..jobs import JobFinished, JobManager, JobNotFound
from ..params import InvalidRequest, validate

IMAGE_NAME_SUFFIX = ".png"


def manager_of(request: Request) -> JobManager:
    manager: JobManager = request.app.state.manager
    return manager


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_id_of(request: Request) -> str:
    job_id = str(request.path_params["job_id"])
    if not JOB_ID.match(job_id):
        raise JobNotFound(job_id)
    return job_id


async def submit_job(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        return JSONResponse({"errors": {"body": f"is not valid JSON: {exc}"}}, status_code=400)
    params = validate(body, settings_of(request))
    state = await manager_of(request).submit(params)
    return JSONResponse(state.snapshot(), status_code=201, headers={"Location": f"/api/jobs/{state.id}"})


async def list_jobs(request: Request) -> Response:
    errors: dict[str, str] = {}
    limit = _query_int(request, "limit", 50, 1, 500, errors)
    offset = _query_int(request, "offset", 0, 0, 10**9, errors)
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
    if errors:
        raise InvalidRequest(errors)
    jobs = await manager_of(request).recent(limit=limit, offset=offset, status=status)
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
    return JSONResponse({**manager.model_status_snapshot(), "queued": len(manager.queued())})


async def eta_accuracy(request: Request) -> Response:
    """How far the predicted total was from the actual run time at 0, 10, 25 and 50 % of each job."""
    rows = await manager_of(request).store.eta_accuracy_rows()
    return JSONResponse(accuracy_report(rows))


def _query_int(request: Request, name: str, default: int, low: int, high: int, errors: dict[str, str]) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        errors[name] = f"must be a whole number between {low} and {high}"
        return default
    return int(raw)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidRequest)
    return JSONResponse({"errors": exc.errors}, status_code=422)


async def job_not_found(request: Request, exc: Exception) -> Response:
    message = f"no job with id {exc}"
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=404)
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, "error.html", {"title": "Job not found", "message": message}, status_code=404
    )


async def job_finished(request: Request, exc: Exception) -> Response:
    job_id = str(exc)
    state = await manager_of(request).get(job_id)
    body: dict[str, Any] = {
        "error": f"job {job_id} has already ended ({state.status})",
        "job": state.snapshot(),
    }
    return JSONResponse(body, status_code=409)


exception_handlers: dict[Any, Any] = {
    InvalidRequest: invalid_request,
    JobNotFound: job_not_found,
    JobFinished: job_finished,
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
