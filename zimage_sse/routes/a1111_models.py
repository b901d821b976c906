"""The AUTOMATIC1111 API's catalogue: the one checkpoint, the options, samplers and schedulers, the
empty lists of what this server does not have, PNG info, and errors in A1111's shape.

Shapes follow AUTOMATIC1111/stable-diffusion-webui `modules/api/api.py` and `modules/api/models.py`.
Only what is true is listed: one model, the one sampler the pipeline runs. routes/a1111.py has the
generation endpoints and includes these routes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from io import BytesIO
from pathlib import PurePath
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..answers import error_body
from ..repro import _A1111_PAIR, A1111_CHUNK, UnreadablePng, parse_a1111
from .api import MalformedJSON, json_body, manager_of, settings_of

BASE = "/sdapi/v1"
# What the pipeline runs (diffusers FlowMatchEulerDiscreteScheduler), named as the PNGs' `parameters`
# chunk names it (zimage_sse/images.py). txt2img accepts any sampler name and runs this one.
SAMPLER = "FlowMatchEuler"
SCHEDULER = "automatic"  # the model's own flow-matching sigma schedule; what A1111's clients send
# A1111's size values "WIDTHxHEIGHT" become "Key-1" and "Key-2" (modules/infotext_utils.py).
_SIZE_KEYS = ("Size", "Hires resize")


def a1111_error(
    request: Request,
    status: int,
    message: str,
    *,
    errors: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """`{"error", "detail", "body", "errors"}` as A1111 answers, with the per-field reasons in `errors`."""
    body = error_body(request.url.path, status, message)
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(request: Request, errors: dict[str, str]) -> JSONResponse:
    """422 for bad input, every offending field with its reason (nothing was queued or changed)."""
    detail = "; ".join(f"{name}: {reason}" for name, reason in errors.items())
    return a1111_error(request, 422, detail, errors=errors)


async def object_body(request: Request) -> dict[str, Any] | JSONResponse:
    """The JSON object a POST carries, or the 422 to answer (FastAPI's status for a body it cannot read)."""
    try:
        data = await json_body(request)
    except MalformedJSON as exc:
        return invalid(request, {"body": str(exc)})
    if not isinstance(data, dict):
        return invalid(request, {"body": "must be a JSON object"})
    return data


# -- the checkpoint and options ------------------------------------------------------------------------


def checkpoint(request: Request) -> dict[str, Any]:
    """The served model as an `SDModelItem`. Weights are not hashed (gigabytes at every load), so the
    hashes are null, as A1111 shows them for a checkpoint it has not hashed yet."""
    model = manager_of(request).model
    return {
        "title": model,
        "model_name": PurePath(model).name or model,
        "hash": None,
        "sha256": None,
        "filename": model,
        "config": None,
    }


async def sd_models(request: Request) -> Response:
    return JSONResponse([checkpoint(request)])


async def get_options(request: Request) -> Response:
    settings = settings_of(request)
    return JSONResponse(
        {
            "sd_model_checkpoint": checkpoint(request)["title"],
            "sd_checkpoint_hash": None,
            "sd_vae": "Automatic",  # the checkpoint's own VAE
            "samples_format": "png",
            "samples_save": True,  # every image is stored (GET /images/NAME)
            "CLIP_stop_at_last_layers": 1,
            "eta_noise_seed_delta": 0,
            "live_previews_enable": settings.preview_every > 0,
            "live_previews_image_format": "jpeg",
            "show_progress_every_n_steps": settings.preview_every or -1,
        }
    )


async def set_options(request: Request) -> Response:
    """Naming the served model (its title, name or file, any case) is accepted, and so is naming none
    (Open WebUI posts "" when no model is chosen); another model is a 422, since this server serves
    one. Every other option is accepted and ignored, as A1111 answers: null."""
    data = await object_body(request)
    if isinstance(data, JSONResponse):
        return data
    wanted = data.get("sd_model_checkpoint")
    if wanted is not None and wanted != "":
        names = {
            str(v).lower() for k, v in checkpoint(request).items() if k in ("title", "model_name", "filename")
        }
        if not isinstance(wanted, str) or wanted.strip().lower() not in names:
            model = manager_of(request).model
            shown = wanted if isinstance(wanted, str) else type(wanted).__name__
            return invalid(
                request,
                {
                    "sd_model_checkpoint": f"model {shown!r} not found: this server serves one model, "
                    f"{model!r}, and cannot switch to another"
                },
            )
    return JSONResponse(None)


# -- what there is (and is not) ------------------------------------------------------------------------


async def samplers(request: Request) -> Response:
    return JSONResponse([{"name": SAMPLER, "aliases": ["FlowMatchEulerDiscreteScheduler"], "options": {}}])


async def schedulers(request: Request) -> Response:
    item = {"name": SCHEDULER, "label": "Automatic", "aliases": None, "default_rho": -1.0}
    return JSONResponse([{**item, "need_inner_model": False}])


async def nothing(request: Request) -> Response:
    """Upscalers, VAEs, LoRAs, styles…: this server has none."""
    return JSONResponse([])


async def scripts(request: Request) -> Response:
    return JSONResponse({"txt2img": [], "img2img": []})


async def embeddings(request: Request) -> Response:
    return JSONResponse({"loaded": {}, "skipped": {}})


async def refresh(request: Request) -> Response:
    """Nothing to rescan: the one model is the server's setting."""
    return JSONResponse(None)


# -- PNG info ------------------------------------------------------------------------------------------


def infotext_fields(text: str) -> dict[str, Any]:
    """A `parameters` text as A1111's `parse_generation_parameters` gives it: Prompt, Negative prompt,
    then each "Key: value" of the last line as text, a size split into "Key-1" and "Key-2"."""
    try:
        found, _ = parse_a1111(text)
    except UnreadablePng:  # a number that is not one: the pairs below still say what it is
        found = {}
    fields: dict[str, Any] = {
        "Prompt": found.get("prompt", ""),
        "Negative prompt": found.get("negative_prompt", ""),
    }
    last = text.strip().split("\n")[-1]
    pairs = _A1111_PAIR.findall(last)
    for key, raw in pairs if len(pairs) >= 3 else []:
        value = raw.strip()
        if value.startswith('"'):
            # A1111 quotes a value holding a comma, colon or quote as a JSON string.
            with contextlib.suppress(ValueError):
                value = str(json.loads(value))
        width, cross, height = value.partition("x")
        if key in _SIZE_KEYS and cross and width.isdigit() and height.isdigit():
            fields[f"{key}-1"], fields[f"{key}-2"] = width, height
        else:
            fields[key] = value
    return fields


async def png_info(request: Request) -> Response:
    data = await object_body(request)
    if isinstance(data, JSONResponse):
        return data
    encoded = data.get("image")
    if not isinstance(encoded, str) or not encoded.strip():
        return invalid(request, {"image": "must be a base64-encoded image or a data: URL"})
    encoded = encoded.strip()
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        raw = base64.b64decode(encoded)  # like A1111: characters outside base64 are skipped
        with Image.open(BytesIO(raw)) as image:
            chunks = dict(image.info)
    except (binascii.Error, ValueError):
        return invalid(request, {"image": "is not valid base64"})
    except (UnidentifiedImageError, OSError):
        return invalid(request, {"image": "is not an image this server can read"})
    text = chunks.pop(A1111_CHUNK, None)
    info = text if isinstance(text, str) else ""
    items = {key: value for key, value in chunks.items() if isinstance(key, str) and isinstance(value, str)}
    return JSONResponse({"info": info, "items": items, "parameters": infotext_fields(info) if info else {}})


# -- everything else -----------------------------------------------------------------------------------

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def fallback(known: dict[str, list[str]]) -> Route:
    """A1111-shaped 404 for a path this server lacks (img2img, extras, training…) and 405 for a known
    path asked with another method, instead of Starlette's plain-text answers."""

    async def answer(request: Request) -> Response:
        path = request.url.path
        methods = known.get(path.rstrip("/"))
        if methods is not None:
            allow = ", ".join(methods)
            return a1111_error(request, 405, f"{path} answers {allow} only", headers={"Allow": allow})
        return a1111_error(
            request,
            404,
            f"{path} is not an endpoint of this server: it runs text-to-image only (txt2img, progress, "
            "interrupt, options, sd-models, samplers, png-info; see the README)",
        )

    return Route("/sdapi/{rest:path}", answer, methods=ALL_METHODS)


EMPTY_LISTS = (
    "upscalers",
    "latent-upscale-modes",
    "sd-vae",
    "loras",
    "prompt-styles",
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
)

routes = [
    Route(f"{BASE}/options", get_options, methods=["GET"]),
    Route(f"{BASE}/options", set_options, methods=["POST"]),
    Route(f"{BASE}/sd-models", sd_models, methods=["GET"]),
    Route(f"{BASE}/samplers", samplers, methods=["GET"]),
    Route(f"{BASE}/schedulers", schedulers, methods=["GET"]),
    *(Route(f"{BASE}/{name}", nothing, methods=["GET"]) for name in EMPTY_LISTS),
    Route(f"{BASE}/scripts", scripts, methods=["GET"]),
    Route(f"{BASE}/embeddings", embeddings, methods=["GET"]),
    Route(f"{BASE}/refresh-checkpoints", refresh, methods=["POST"]),
    Route(f"{BASE}/png-info", png_info, methods=["POST"]),
]
