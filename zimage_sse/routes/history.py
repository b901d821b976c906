"""History pages and their API: the filtered job list, run again / vary, delete, thumbnails, and
reading a PNG's parameters back (zimage_sse/history.py and zimage_sse/repro.py hold the logic)."""

from __future__ import annotations

import asyncio
import math
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup, escape
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import history, repro
from ..events import STATUSES
from ..images import JOB_ID, a1111_parameters
from ..params import InvalidRequest
from ..service import JobState
from ..templating import render
from .api import job_id_of, json_body, manager_of, settings_of, whole_number

THUMB_NAME_SUFFIX = ".jpg"
VIEWS = ("grid", "table")


def _positive(raw: str | None, default: int, high: int) -> int:
    value = whole_number(raw)
    return min(value, high) if value else default


async def history_page(request: Request) -> Response:
    """GET /history?q=&status=&size=WxH&page=&per_page=: newest first, 24 a page."""
    manager = manager_of(request)
    errors: dict[str, str] = {}
    chosen = history.parse_filter(request.query_params, errors)
    per_page = _positive(request.query_params.get("per_page"), history.PAGE_SIZE, history.MAX_PAGE_SIZE)
    total = await manager.store.count_jobs(**chosen.store_args())
    pages = max(1, math.ceil(total / per_page))
    page = min(_positive(request.query_params.get("page"), 1, 10**9), pages)
    jobs = await manager.recent(limit=per_page, offset=(page - 1) * per_page, **chosen.store_args())
    keep = chosen.query() | ({"per_page": str(per_page)} if per_page != history.PAGE_SIZE else {})
    view = request.query_params.get("view") or "grid"
    if view not in VIEWS:
        errors["view"] = f"must be one of {', '.join(VIEWS)} (got {view!r})"
        view = "grid"

    def link(number: int) -> str:
        return "/history?" + urlencode({**keep, **_view_query(view), "page": str(number)})

    return render(
        request,
        "history.html",
        {
            "rows": [card(job) for job in jobs],
            "view": view,
            # The Grid | Table switch keeps the filter and page size, and starts at the first page.
            "views": {name: _history_url({**keep, **_view_query(name)}) for name in VIEWS},
            "filter": chosen,
            "sizes": await manager.store.job_sizes(),
            "statuses": STATUSES,
            "errors": errors,
            "total": total,
            "page": page,
            "pages": pages,
            "newer": link(page - 1) if page > 1 else None,
            "older": link(page + 1) if page < pages else None,
        },
        status_code=422 if errors else 200,
    )


def _history_url(query: dict[str, str]) -> str:
    return "/history?" + urlencode(query) if query else "/history"


def _view_query(view: str) -> dict[str, str]:
    return {} if view == "grid" else {"view": view}


def _thumbs(job: JobState) -> list[str]:
    return [f"/thumbs/{history.thumb_name(name)}" for name in job.images]


def card(job: JobState) -> dict[str, Any]:
    """What templates/_card.html (and the history table) show of a job: its snapshot, thumbnails,
    and the A1111 `parameters` text that its PNGs carry, for the viewer's "copy parameters"."""
    return {
        "job": job.snapshot(),
        "thumbs": _thumbs(job),
        "parameters": attribute_text(a1111_parameters(job.params, job.model)),
        "prompt": attribute_text(job.params.prompt),
    }


def attribute_text(text: str) -> Markup:
    """Text for an attribute value that the browser reads back unchanged: HTML parsing turns a bare
    CR (and CR LF) into LF before decoding references, so a CR is written as a character reference."""
    return Markup(str(escape(text)).replace("\r", "&#13;"))


async def thumbnail(request: Request) -> Response:
    name = str(request.path_params["name"])
    stem, _, index = name.removesuffix(THUMB_NAME_SUFFIX).rpartition("-")
    if not name.endswith(THUMB_NAME_SUFFIX) or not JOB_ID.match(stem) or not index.isdigit():
        raise HTTPException(404, "no such thumbnail")
    path = await asyncio.to_thread(history.thumbnail, settings_of(request), f"{stem}-{index}.png")
    if path is None:
        raise HTTPException(404, "no such image")
    return FileResponse(
        path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=31536000, immutable"}
    )


async def again_form(request: Request) -> Response:
    """POST /jobs/{id}/again (a form; `vary=1` for a new seed) → the new job's page."""
    form = await request.form()
    vary = form.get("vary") == "1"
    try:
        state = await history.run_again(
            manager_of(request), settings_of(request), job_id_of(request), vary=vary
        )
    except InvalidRequest as exc:
        return _error(request, "Cannot run this job again", _reasons(exc.errors), 422)
    return RedirectResponse(f"/jobs/{state.id}", status_code=303)


async def delete_form(request: Request) -> Response:
    """POST /jobs/{id}/delete → the history; a live job gets a page saying to cancel it first."""
    job_id = job_id_of(request)
    try:
        await history.delete_job(manager_of(request), settings_of(request), job_id)
    except history.JobActive:
        return _error(request, "Job not deleted", _active(job_id), 409)
    return RedirectResponse("/history", status_code=303)


def _error(request: Request, title: str, message: str, status_code: int) -> Response:
    return render(request, "error.html", {"title": title, "message": message}, status_code)


def _reasons(errors: dict[str, str]) -> str:
    return "; ".join(f"{field} {reason}" for field, reason in errors.items())


def _active(job_id: str) -> str:
    return f"job {job_id} is queued or running: cancel it first, then delete it"


async def again_api(request: Request) -> Response:
    """POST /api/jobs/{id}/again with an optional {"vary": true} → 201 with the new job."""
    body = await json_body(request, empty={})
    if not isinstance(body, dict):
        raise InvalidRequest({"body": "must be a JSON object"})
    errors = {str(k): "unknown field" for k in body if k != "vary"}
    if not isinstance(body.get("vary", False), bool):
        errors["vary"] = "must be true or false"
    if errors:
        raise InvalidRequest(errors)
    state = await history.run_again(
        manager_of(request), settings_of(request), job_id_of(request), vary=body.get("vary", False)
    )
    return JSONResponse(state.snapshot(), status_code=201, headers={"Location": f"/api/jobs/{state.id}"})


async def delete_api(request: Request) -> Response:
    """DELETE /api/jobs/{id} → 204; a queued or running job → 409 (cancel it first)."""
    job_id = job_id_of(request)
    manager = manager_of(request)
    try:
        await history.delete_job(manager, settings_of(request), job_id)
    except history.JobActive:
        state = await manager.get(job_id)
        return JSONResponse({"error": _active(job_id), "job": state.snapshot()}, status_code=409)
    return Response(status_code=204)


async def png_upload(request: Request) -> repro.PngParameters:
    """The parameters of an uploaded PNG: a multipart field `file`, or the request body itself.
    Raises InvalidRequest naming `file` when there is no PNG or it carries no parameters."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1)
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise InvalidRequest({"file": "is required: choose a PNG made by zimage-sse or AUTOMATIC1111"})
        data = await upload.read(repro.MAX_PNG_BYTES + 1)
    else:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > repro.MAX_PNG_BYTES:
                break
    if not data:
        raise InvalidRequest({"file": "is required: send a PNG as the body or as the multipart field `file`"})
    try:
        return repro.read_png(data)
    except repro.UnreadablePng as exc:
        raise InvalidRequest({"file": str(exc)}) from exc


async def from_png_api(request: Request) -> Response:
    """POST /api/jobs/from-png → 200 {"params", "meta", "source", "parameters"}; queues nothing."""
    return JSONResponse((await png_upload(request)).to_dict())


routes = [
    Route("/history", history_page, methods=["GET"]),
    Route("/thumbs/{name}", thumbnail, methods=["GET"]),
    Route("/jobs/{job_id}/again", again_form, methods=["POST"]),
    Route("/jobs/{job_id}/delete", delete_form, methods=["POST"]),
    Route("/api/jobs/from-png", from_png_api, methods=["POST"]),
    Route("/api/jobs/{job_id}/again", again_api, methods=["POST"]),
    Route("/api/jobs/{job_id}", delete_api, methods=["DELETE"]),
]
