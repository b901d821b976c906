"""What a job would cost before it is submitted: GET /api/estimate (JSON) and GET /estimate (the home
page's fragment, refreshed by htmx as the form changes). Both come from `Planning.estimate`, the queue's
own planner and ETA engine, and nothing is queued or published by asking."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Preset, Settings
from ..params import FIELDS, InvalidRequest, JobParams, validate

# The same function the templates' `duration` filter is (templating.py), so page and API agree.
from ..progress import duration
from ..service.planning import Estimate
from ..templating import render
from .api import manager_of, settings_of

# What the estimate depends on; the other fields of a job do not change its time.
ESTIMATED_FIELDS = ("width", "height", "steps", "num_images")


def estimate_params(values: Mapping[str, str], settings: Settings, *, strict: bool) -> JobParams:
    """The job an estimate is for, validated as a job is (no prompt needed): missing or empty fields take
    the defaults. `strict`: any other field must be a job's (GET /api/estimate); otherwise the rest
    of a form is ignored (the home page sends it whole)."""
    chosen = {k: v for k, v in values.items() if strict or k in ESTIMATED_FIELDS}
    # A prompt is no field of an estimate: a given one is checked like any other, none is needed.
    return validate(chosen, settings, from_form=True, empty_prompt=True)


def start_text(estimate: Estimate) -> str:
    if estimate.start_s is None:
        return "its start is unknown (a job ahead has no estimate yet)"
    if estimate.start_s <= 0:
        return "starts now"
    return f"starts in about {duration(estimate.start_s)}"


def run_text(estimate: Estimate) -> str:
    """The run: "about 6.2 s on cuda:0", or honest words for what is not known."""
    where = f"on {estimate.device}"
    if estimate.run_s is None:
        if estimate.source is None:
            return f"unknown until the first job on {estimate.device}"
        return f"unknown {where} until a model load has been timed"
    parts = []
    if estimate.needs_load and estimate.load_s:
        parts.append(f"loading the model first, about {duration(estimate.load_s)}")
    if estimate.needs_warmup and estimate.warmup_s:
        parts.append(f"warm-up {duration(estimate.warmup_s)}")
    extra = f" ({', '.join(parts)})" if parts else ""
    if estimate.source == "size":
        return f"about {duration(estimate.run_s)} {where}{extra}"
    how = "from the cost model" if estimate.source == "cost-model" else "scaled from the nearest size"
    return f"no history for this size yet: roughly {duration(estimate.run_s)} {how} {where}{extra}"


def describe(estimate: Estimate) -> str:
    """One line for people, e.g. "about 6.2 s on cuda:0, starts in about 14 s"."""
    return f"{run_text(estimate)}, {start_text(estimate)}"


def preset_text(estimate: Estimate) -> str:
    """The short figure a preset button carries."""
    if estimate.run_s is None:
        return "time unknown"
    word = "about" if estimate.source == "size" else "roughly"
    return f"{word} {duration(estimate.run_s)}"


def as_json(estimate: Estimate) -> dict[str, Any]:
    params = estimate.params
    return {
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "num_images": params.num_images,
        "run_s": estimate.run_s,
        "source": estimate.source,
        "device": estimate.device,
        "start_s": estimate.start_s,
        "finish_s": None if estimate.finish_s is None else round(estimate.finish_s, 3),
        "needs_load": estimate.needs_load,
        "needs_warmup": estimate.needs_warmup,
        "load_s": estimate.load_s if estimate.needs_load else 0.0,
        "warmup_s": estimate.warmup_s if estimate.needs_warmup else 0.0,
        "jobs_ahead": estimate.jobs_ahead,
        "text": describe(estimate),
    }


@dataclass(frozen=True)
class PresetEstimate:
    preset: Preset
    text: str
    title: str  # the whole sentence, for a tooltip


@dataclass(frozen=True)
class EstimateView:
    """What the home page's estimate region and preset buttons show."""

    text: str
    known: bool  # a run time is predicted
    errors: dict[str, str]  # the form's size, steps or images are not valid
    presets: list[PresetEstimate]


def estimate_view(request: Request, values: Mapping[str, str]) -> EstimateView:
    """The estimate for the form's `values` (strings, as a form sends them) and for each preset at the
    form's number of images."""
    settings = settings_of(request)
    manager = manager_of(request)
    errors: dict[str, str] = {}
    estimate: Estimate | None = None
    try:
        estimate = manager.estimate(estimate_params(values, settings, strict=False))
    except InvalidRequest as exc:
        errors = exc.errors
    images = estimate.params.num_images if estimate is not None else 1
    presets = []
    for preset in settings.presets:
        params = estimate_params(
            {"width": str(preset.width), "height": str(preset.height), "steps": str(preset.steps)}
            | {"num_images": str(images)},
            settings,
            strict=False,
        )
        found = manager.estimate(params)
        presets.append(PresetEstimate(preset, preset_text(found), describe(found)))
    if estimate is None:
        fields = ", ".join(f"{name} {reason}" for name, reason in errors.items())
        text = f"no estimate until the form is valid: {fields}"
    else:
        text = describe(estimate)
    return EstimateView(text, estimate is not None and estimate.run_s is not None, errors, presets)


def form_values(values: Mapping[str, Any]) -> dict[str, str]:
    """A form's fields as strings (the home page's context holds numbers for the defaults)."""
    return {k: str(v) for k, v in values.items() if k in FIELDS and v is not None}


async def estimate_api(request: Request) -> Response:
    """GET /api/estimate?width=&height=&steps=&num_images=: 422 `{"errors": {field: reason}}` when bad."""
    params = estimate_params(dict(request.query_params), settings_of(request), strict=True)
    return JSONResponse(as_json(manager_of(request).estimate(params)), headers={"Cache-Control": "no-store"})


async def estimate_fragment(request: Request) -> Response:
    """GET /estimate: the home page's estimate region, with the preset buttons' figures swapped out of
    band. A bad value is said in the region (200: htmx swaps it; the form's own checks say the rest)."""
    view = estimate_view(request, dict(request.query_params))
    return render(
        request, "_estimate.html", {"estimate": view, "oob": True}, headers={"Cache-Control": "no-store"}
    )


routes = [
    Route("/api/estimate", estimate_api, methods=["GET"]),
    Route("/estimate", estimate_fragment, methods=["GET"]),
]
