"""Server-rendered pages. Forms work without JavaScript; htmx's SSE extension keeps them live."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..answers import queue_full_answer
from ..history import job_details
from ..params import FIELDS, InvalidRequest, validate
from ..service import JobFinished, QueueFull
from ..templating import render
from .api import job_id_of, manager_of, settings_of
from .history import png_upload


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
    recent = [job.snapshot() for job in await manager.recent(limit=6, status="done")]
    return render(
        request,
        "home.html",
        {
            "form": _form_defaults(request),
            "errors": {},
            "queue": manager.queue_snapshot(),
            "recent": recent,
        },
    )


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
        return RedirectResponse(f"/jobs/{state.id}", status_code=303)
    context = {
        "form": {**_form_defaults(request), **values},
        "errors": errors,
        "queue": manager.queue_snapshot(),
        "recent": [],
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
        context.update(form=_form_defaults(request), errors=exc.errors)
        return render(request, "home.html", context, status_code=422)
    context.update(form={**_form_defaults(request), **found.params}, errors={}, loaded=found)
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
