"""Server-rendered pages. Forms work without JavaScript; htmx's SSE extension keeps them live."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..jobs import JobFinished
from ..params import FIELDS, InvalidRequest, validate
from .api import job_id_of, manager_of, settings_of

HISTORY_PAGE = 24


def _page(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, template, context, status_code=status_code
    )


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
    return _page(
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
    try:
        params = validate(values, settings_of(request), from_form=True)
    except InvalidRequest as exc:
        manager = manager_of(request)
        return _page(
            request,
            "home.html",
            {
                "form": {**_form_defaults(request), **values},
                "errors": exc.errors,
                "queue": manager.queue_snapshot(),
                "recent": [],
            },
            status_code=422,
        )
    state = await manager_of(request).submit(params)
    return RedirectResponse(f"/jobs/{state.id}", status_code=303)


async def job_page(request: Request) -> Response:
    state = await manager_of(request).get(job_id_of(request))
    return _page(request, "job.html", {"job": state.snapshot()})


async def cancel_form(request: Request) -> Response:
    job_id = job_id_of(request)
    with suppress(JobFinished):  # it ended while the user clicked: the job page shows how
        await manager_of(request).cancel(job_id)
    return RedirectResponse(f"/jobs/{job_id}", status_code=303)


async def history(request: Request) -> Response:
    raw = request.query_params.get("page", "1")
    page = int(raw) if raw.isdigit() and int(raw) > 0 else 1
    jobs = await manager_of(request).recent(limit=HISTORY_PAGE + 1, offset=(page - 1) * HISTORY_PAGE)
    return _page(
        request,
        "history.html",
        {
            "jobs": [job.snapshot() for job in jobs[:HISTORY_PAGE]],
            "page": page,
            "has_next": len(jobs) > HISTORY_PAGE,
        },
    )


routes = [
    Route("/", home, methods=["GET"]),
    Route("/jobs", submit_form, methods=["POST"]),
    Route("/jobs/{job_id}", job_page, methods=["GET"]),
    Route("/jobs/{job_id}/cancel", cancel_form, methods=["POST"]),
    Route("/history", history, methods=["GET"]),
]
