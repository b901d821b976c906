"""AUTOMATIC1111's web UI API (`/sdapi/v1`) over the job queue: txt2img, progress, interrupt and skip,
so that Open WebUI, SillyTavern, LibreChat and the `webuiapi` package can use this server.

A txt2img request becomes one job like any other (it waits in the queue, shows on the pages and feeds,
and runs on even if the client goes away). What Turbo does not want is translated, never refused:
- `cfg_scale` is ignored (guidance stays the server's default, 0) unless ZIMAGE_SSE_A1111_HONOUR_CFG;
- `steps` are clamped to 1..ZIMAGE_SSE_A1111_MAX_STEPS (default 8, never above ZIMAGE_SSE_MAX_STEPS);
- width and height are rounded to the nearest multiple of size_multiple within min_size..max_size;
- any sampler name runs the pipeline's own sampler; every other field is accepted and ignored.
What was used is reported in `parameters` and `info`, and what was changed in
`info.extra_generation_params`. Wrong types, too many pixels and too many images are 422s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__, sizes
from ..answers import queue_full_answer
from ..config import Settings
from ..images import a1111_parameters
from ..params import InvalidRequest, JobParams, validate
from ..progress import duration
from ..service import JobFinished, JobState, QueueFull, ShuttingDown, image_url
from . import a1111_models
from .a1111_models import BASE, SAMPLER, a1111_error, invalid, object_body
from .api import manager_of, settings_of

# Our validator's field names as A1111's clients know them (num_images is batch_size × n_iter).
A1111_NAMES = {"guidance": "cfg_scale", "num_images": "batch_size"}
# The fields of `parameters` that report what was used rather than echo what was sent.
USED = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height")
TIMESTAMP = "%Y%m%d%H%M%S"  # A1111's job_timestamp (modules/shared_state.py)


# -- the request ---------------------------------------------------------------------------------------


def _whole(body: dict[str, Any], name: str, errors: dict[str, str]) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors[name] = "must be a whole number"
        return None
    return value


def translate(body: dict[str, Any], settings: Settings) -> tuple[JobParams, dict[str, Any]]:
    """The job an A1111 txt2img body asks for, through params.validate, and what was asked of each
    setting the policy changes. Raises InvalidRequest with A1111's field names."""
    errors: dict[str, str] = {}
    asked = {name: _whole(body, name, errors) for name in ("steps", "width", "height", "seed")}
    batch, n_iter = (_whole(body, name, errors) for name in ("batch_size", "n_iter"))
    cfg = body.get("cfg_scale")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, int | float)):
        errors["cfg_scale"] = "must be a number"
        cfg = None
    elif cfg is not None and not math.isfinite(cfg):  # JSON's NaN and 1e400: not even reportable
        errors["cfg_scale"] = f"must be a finite number (got {cfg})"
        cfg = None
    for name, count in (("batch_size", batch), ("n_iter", n_iter)):
        if count is not None and count < 1:
            errors[name] = f"must be at least 1 (got {count})"
    batch, n_iter = (count if count is not None and count >= 1 else 1 for count in (batch, n_iter))
    steps = settings.default_steps if asked["steps"] is None else asked["steps"]
    data: dict[str, Any] = {
        "prompt": body.get("prompt"),
        "negative_prompt": body.get("negative_prompt"),
        "steps": min(max(1, steps), settings.a1111_max_steps, settings.max_steps),
        "width": None if asked["width"] is None else sizes.fit(asked["width"], settings),
        "height": None if asked["height"] is None else sizes.fit(asked["height"], settings),
        # -1 (A1111's "random") and null: a random seed, recorded like any other.
        "seed": None if asked["seed"] == -1 else asked["seed"],
        "guidance": cfg if settings.a1111_honour_cfg else None,
        "num_images": batch * n_iter,
    }
    try:
        # A field refused above is None here: its default. A1111 takes an empty prompt.
        params = validate(data, settings, empty_prompt=True)
    except InvalidRequest as exc:
        for name, reason in exc.errors.items():
            shown = A1111_NAMES.get(name, name)
            errors.setdefault(shown, f"batch_size × n_iter {reason}" if name == "num_images" else reason)
        raise InvalidRequest(errors) from None
    if errors:
        raise InvalidRequest(errors)
    return params, {**asked, "cfg_scale": cfg, "batch_size": batch, "n_iter": n_iter}


def changes(params: JobParams, asked: dict[str, Any]) -> dict[str, Any]:
    """What the policy changed, as A1111's extra_generation_params: the value each client asked for."""
    changed: dict[str, Any] = {}
    if asked["steps"] is not None and asked["steps"] != params.steps:
        changed["Steps requested"] = asked["steps"]
    if asked["cfg_scale"] is not None and asked["cfg_scale"] != params.guidance:
        changed["CFG scale requested"] = asked["cfg_scale"]
    width = params.width if asked["width"] is None else asked["width"]
    height = params.height if asked["height"] is None else asked["height"]
    if (width, height) != (params.width, params.height):
        changed["Size requested"] = f"{width}x{height}"
    if asked["n_iter"] > 1:
        changed["Batch requested"] = f"{asked['batch_size']} x {asked['n_iter']} iterations"
    return changed


def _json_safe(item: dict[str, Any]) -> bool:
    """Whether a key and value can go back in a JSON answer (not NaN, infinity or a lone surrogate)."""
    try:
        json.dumps(item, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # UnicodeEncodeError is one
        return False
    return True


def stamp(when: float | None) -> str:
    return "0" if when is None else time.strftime(TIMESTAMP, time.localtime(when))


def info_of(state: JobState, changed: dict[str, Any]) -> dict[str, Any]:
    """`info` as A1111's `Processed.js()` has it, for what really ran. Every image of a job comes from
    its one seed (worker.py seeds one generator for the whole batch: image i is the i-th of that
    batch, where A1111 gives image i the seed seed+i), so every entry of all_seeds is that seed."""
    params, count = state.params, len(state.images)
    text = a1111_parameters(params, state.model)  # the `parameters` chunk each stored PNG carries
    return {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * count,
        "seed": params.seed,
        "all_seeds": [params.seed] * count,
        "subseed": -1,  # no variation seeds
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": SAMPLER,
        "cfg_scale": params.guidance,
        "steps": params.steps,
        "batch_size": params.num_images,  # one batch of every image asked for
        "n_iter": 1,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": state.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": changed,
        "index_of_first_image": 0,
        "infotexts": [text] * count,
        "styles": [],
        "job_timestamp": stamp(state.started_at or state.created_at),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"zimage-sse {__version__}",
        # Ours: the job, and where each image is (GET /images/NAME serves the same bytes).
        "job_id": state.id,
        "images": [image_url(name) for name in state.images],
    }


# -- the endpoints -------------------------------------------------------------------------------------


async def txt2img(request: Request) -> Response:
    body = await object_body(request)
    if isinstance(body, JSONResponse):
        return body
    settings, manager = settings_of(request), manager_of(request)
    try:
        params, asked = translate(body, settings)
        state = await manager.submit(params)
    except InvalidRequest as exc:
        return invalid(request, exc.errors)
    except QueueFull as exc:
        message, _, headers = queue_full_answer(exc)
        return a1111_error(request, 429, message, headers=headers)
    except ShuttingDown as exc:
        return a1111_error(request, 503, str(exc), headers={"Retry-After": "10"})
    # Awaited here, so a client that disconnects does not cancel the job: uvicorn leaves the handler be.
    async for _event in manager.until_end(state.id):
        pass
    state = await manager.get(state.id)
    if state.status == "cancelled":
        reason = state.error or "Interrupted."
        return a1111_error(request, 409, f"Job {state.id} was interrupted before it made an image: {reason}")
    if state.status == "failed":
        return a1111_error(request, 500, f"Job {state.id} failed: {state.error}")
    if state.status != "done":
        return a1111_error(
            request,
            503,
            f"The server is shutting down; job {state.id} keeps its place and runs after the restart "
            f"(GET /api/jobs/{state.id}).",
            headers={"Retry-After": "10"},
        )
    images = await asyncio.to_thread(lambda: [(settings.images_dir / n).read_bytes() for n in state.images])
    info = info_of(state, changes(state.params, asked))
    used = {k: info[k] for k in USED}
    used.update(batch_size=state.params.num_images, n_iter=1, sampler_name=SAMPLER)
    echoed = {k: v for k, v in body.items() if _json_safe({k: v})}
    return JSONResponse(
        {
            "images": [base64.b64encode(png).decode("ascii") for png in images],
            "parameters": {**echoed, **used},
            "info": json.dumps(info),
        }
    )


def _shown(manager_jobs: list[JobState]) -> JobState | None:
    """The job progress reports: the oldest running one (one per device)."""
    return min(manager_jobs, key=lambda s: s.started_at or s.created_at, default=None)


def _textinfo(state: JobState, remaining: float | None) -> str:
    if state.cancel.is_set():
        return "Interrupted: stopping at the next step"
    if state.status == "queued":
        what = f"Queued at position {state.position}" if state.position else "Queued"
    elif state.phase == "denoising":
        what = f"Denoising: step {state.step} of {state.params.steps}"
    else:
        what = (state.phase or "starting").capitalize()
    if remaining is None:
        return f"{what}; ETA unknown (no timing history for this size yet: eta_relative is 0)"
    return f"{what}, about {duration(remaining)} left"


async def progress(request: Request) -> Response:
    """The running job (the oldest, with several devices), or the first queued one while none runs;
    job_count counts every job queued or running. Idle: progress 0 and job_count 0."""
    manager = manager_of(request)
    running, queued = manager.running_jobs(), manager.queued()
    state = _shown(running) or (queued[0] if queued else None)
    skip_image = request.query_params.get("skip_current_image", "").lower() in ("true", "1", "yes")
    if state is None:
        idle = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": ""}
        counts = {"job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return JSONResponse(
            {
                "progress": 0.0,
                "eta_relative": 0.0,
                "state": {**idle, **counts},
                "current_image": None,
                "textinfo": None,
                "current_task": None,
            }
        )
    now = time.time()
    remaining = state.remaining_s(now)
    preview = state.preview if state.status == "running" else None
    image = None if skip_image or preview is None else str(preview["url"]).partition(",")[2] or None
    interrupted = state.cancel.is_set()
    return JSONResponse(
        {
            "progress": round(state.percent(now) / 100, 4),
            "eta_relative": round(remaining, 3) if remaining is not None else 0.0,
            "state": {
                "skipped": False,
                "interrupted": interrupted,
                "stopping_generation": interrupted,
                "job": f"txt2img {state.id}",
                "job_count": len(running) + len(queued),
                "job_timestamp": stamp(state.started_at),
                "job_no": 0,
                "sampling_step": state.step,
                "sampling_steps": state.params.steps,
            },
            "current_image": image,
            "textinfo": _textinfo(state, remaining),
            "current_task": state.id,
        }
    )


async def _cancel_running(request: Request) -> None:
    """Stop every running job at its next step; queued jobs keep their place, as in A1111."""
    manager = manager_of(request)
    for state in manager.running_jobs():
        with contextlib.suppress(JobFinished):  # it ended meanwhile
            await manager.cancel(state.id)


async def interrupt(request: Request) -> Response:
    await _cancel_running(request)
    return JSONResponse({})


async def skip(request: Request) -> Response:
    """A1111 skips to the next image of a batch; a job here is one batch, so skip stops it too."""
    await _cancel_running(request)
    return JSONResponse(None)


_own = [
    Route(f"{BASE}/txt2img", txt2img, methods=["POST"]),
    Route(f"{BASE}/progress", progress, methods=["GET"]),
    Route(f"{BASE}/interrupt", interrupt, methods=["POST"]),
    Route(f"{BASE}/skip", skip, methods=["POST"]),
]
_known: dict[str, list[str]] = {}
for _route in [*_own, *a1111_models.routes]:
    _known.setdefault(_route.path, []).extend(sorted(_route.methods or ()))

routes = [*_own, *a1111_models.routes, a1111_models.fallback(_known)]
