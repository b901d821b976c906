"""Jinja2 environment: autoescaping on, with the filters our templates use."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .config import EMBEDDED_MODELS
from .progress import duration, tab_title
from .reports import seconds_text
from .sizes import aspect_choices

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def job_title(job: dict[str, Any]) -> str:
    """progress.tab_title of a job snapshot (JobState.snapshot)."""
    return tab_title(job["status"], job["percent"], job["eta_s"], job["position"], job["params"]["prompt"])


def timestamp(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _base_context(request: Request) -> dict[str, Any]:
    """What base.html needs on every page, error pages included."""
    settings = request.app.state.settings
    return {"settings": settings, "embedded_model": settings.model in EMBEDDED_MODELS}


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=TEMPLATES_DIR, context_processors=[_base_context])
    templates.env.filters["duration"] = duration
    templates.env.filters["timestamp"] = timestamp
    templates.env.filters["job_title"] = job_title
    templates.env.globals["aspect_choices"] = aspect_choices
    templates.env.filters["seconds"] = seconds_text
    templates.env.autoescape = True
    return templates


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A page from one of our templates, with the app's environment (and its context processor)."""
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, context, status_code=status_code, headers=headers)


def error_page(
    request: Request, status_code: int, title: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return render(request, "error.html", {"title": title, "message": message}, status_code, headers)
