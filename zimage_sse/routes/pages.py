"""Server-rendered pages. Forms work without JavaScript; htmx's SSE extension keeps them live."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..answers import queue_full_answer
from ..history import job_details
from ..images import JOB_ID
from ..params import FIELDS, InvalidRequest, validate
from ..service import JobFinished, JobNotFound, QueueFull
from ..templating import render
from .api import job_id_of, manager_of, settings_of
from .estimate import estimate_view, form_values
from .history import card, png_upload


def _form_defaults(request: Request) -> dict[str, Any]:
    s = settings_of(request)
    return {
        "prompt": "",
        "negative_prompt": "",
        "width": s.default_width,
        "height": s.default_height,
        "steps": s.default_steps,
        "guidance": s.default_guidance,
        "seed": "",
        "num_images": 1,
    }


async def home(request: Request) -> Response:
    manager = manager_of(request)
    recent = [card(job) for job in await manager.recent(limit=6, status="done")]
    form, used = await _used_form(request)
    return render(
        request,
        "home.html",
        {
            "form": form,
            "used": used,
            "errors": {},
            "queue": manager.queue_snapshot(),
            "recent": recent,
            "following": await _following(request),
            "estimate": estimate_view(request, form_values(form)),
        },
        # A /?use= link to a job that is not here: the defaults, and the page says so.
        status_code=404 if used and not used["found"] else 200,
    )


# The newest job this browser queued from the home page: its tab title follows that job (static/title.js).
NEWEST_COOKIE = "zimage_newest"


async def _following(request: Request) -> dict[str, Any] | None:
    """The snapshot of the newest job queued from this browser's home page, while it is queued or running."""
    job_id = request.cookies.get(NEWEST_COOKIE, "")
    if not JOB_ID.match(job_id):
        return None
    try:
        state = await manager_of(request).get(job_id)
    except JobNotFound:
        return None
    return None if state.terminal else state.snapshot()


async def _used_form(request: Request) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The home form, filled from a job's parameters by `/?use=JOB_ID` ("use these settings" in the
    gallery), with what the page says about it; the defaults when there is no such job."""
    job_id = request.query_params.get("use")
    if job_id is None:
        return _form_defaults(request), None
    try:
        state = await manager_of(request).get(job_id) if JOB_ID.match(job_id) else None
    except JobNotFound:
        state = None
    if state is None:
        return _form_defaults(request), {"found": False, "job_id": job_id}
    return {**_form_defaults(request), **state.params.to_dict()}, {"found": True, "job_id": state.id}


async def submit_form(request: Request) -> Response:
    form = await request.form()
    values = {k: v for k, v in form.items() if k in FIELDS and isinstance(v, str)}
    manager = manager_of(request)
    headers: dict[str, str] = {}
    try:
        state = await manager.submit(validate(values, settings_of(request), from_form=True))
    except InvalidRequest as exc:
        errors, status_code = exc.errors, 422
    except QueueFull as exc:  # said on the form, which keeps what was typed
        message, _body, headers = queue_full_answer(exc)
        errors, status_code = {"queue": message}, 429
    else:
        redirect = RedirectResponse(f"/jobs/{state.id}", status_code=303)
        redirect.set_cookie(NEWEST_COOKIE, state.id, httponly=True, samesite="lax")
        return redirect
    context = {
        "form": {**_form_defaults(request), **values},
        "errors": errors,
        "queue": manager.queue_snapshot(),
        "recent": [],
        "estimate": estimate_view(request, values),
    }
    response = render(request, "home.html", context, status_code=status_code)
    response.headers.update(headers)
    return response


async def job_page(request: Request) -> Response:
    manager = manager_of(request)
    state = await manager.get(job_id_of(request))
    details = await job_details(manager, state)
    return render(request, "job.html", {"job": state.snapshot(), "details": details})


async def from_png_form(request: Request) -> Response:
    """POST /from-png (a file upload): the home page with its form refilled from the PNG's parameters."""
    manager = manager_of(request)
    context: dict[str, Any] = {"queue": manager.queue_snapshot(), "recent": []}
    try:
        found = await png_upload(request)
    except InvalidRequest as exc:
        form = _form_defaults(request)
        context.update(form=form, errors=exc.errors, estimate=estimate_view(request, form_values(form)))
        return render(request, "home.html", context, status_code=422)
    form = {**_form_defaults(request), **found.params}
    context.update(form=form, errors={}, loaded=found, estimate=estimate_view(request, form_values(form)))
    return render(request, "home.html", context)


async def cancel_form(request: Request) -> Response:
    job_id = job_id_of(request)
    with suppress(JobFinished):  # it ended while the user clicked: the job page shows how
        await manager_of(request).cancel(job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


routes = [
    Route("/", home, methods=["GET"]),
    Route("/jobs", submit_form, methods=["POST"]),
    Route("/jobs/{job_id}", job_page, methods=["GET"]),
    Route("/jobs/{job_id}/cancel", cancel_form, methods=["POST"]),
    Route("/from-png", from_png_form, methods=["POST"]),
]
