"""The OpenAI images API under /v1: `images.generate` (JSON or streamed), the models, and the images in
the format asked for. Shapes follow the `openai` package (types/images_response.py,
image_gen_partial_image_event.py, image_gen_completed_event.py, model.py); errors are OpenAI's
`{"error": {"message", "type", "param", "code"}}` (answers.error_body).

A generation is a job like any other: it waits in the queue, shows on the pages and feeds, and runs
to its end whether or not the client is still there (the handler awaits it; nothing cancels it).
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image
from sse_starlette import JSONServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from ..answers import OPENAI_PREFIX, error_body, queue_full_answer
from ..images import image_name
from ..params import InvalidRequest, JobParams
from ..service import JobService, JobState, QueueFull, ShuttingDown, image_url
from .api import MalformedJSON, json_body, manager_of, settings_of
from .openai_request import ImageRequest, error_message, parse
from .streams import event_stream

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# jpeg and webp are made from the stored PNG on demand, named with their format and compression.
FILES = "/v1/images/files"
# One name per image, format and compression (no leading zeros): {job}-{index}-q{0–100}.{jpeg|webp}.
CONVERTED = re.compile(r"^([0-9a-f]{16})-(0|[1-9][0-9]{0,2})-q(0|[1-9][0-9]?|100)\.(jpeg|webp)$")
CACHE_FOREVER = {"Cache-Control": "public, max-age=31536000, immutable"}  # as routes/api.py `image`
# The images are always opaque: Turbo has no transparent background.
BACKGROUND = "opaque"
# One image token per 16×16 pixels: the VAE's 8× and the transformer's 2×2 patches (DESIGN.md, "Timing
# truth": step time grows with (W/16)·(H/16)·batch).
TOKEN_PIXELS = 16
# The openai SDKs retry 409, 429 and 5xx by default (`_base_client._should_retry`) unless this header
# says not to. A job that ran and failed, or was cancelled, would only run again for nothing.
NO_RETRY = {"x-should-retry": "false"}
SHUTDOWN_RETRY_S = 10  # as routes/api.py `shutting_down`: a restart takes a few seconds
JOB_HEADER = "X-Job-Id"  # the job behind a generation: /api/jobs/{id}, its page, its cancel


# -- answers -------------------------------------------------------------------------------------------


def openai_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    body = error_body(OPENAI_PREFIX, status, message, param)
    if code is not None:
        body["error"]["code"] = code
    return body


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(openai_body(status, message, param, code), status_code=status, headers=headers)


def invalid(exc: InvalidRequest) -> JSONResponse:
    message, param = error_message(exc.errors)
    return openai_error(400, message, param)


def unfinished(state: JobState) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A job that ended without images, or not at all: failed 500, cancelled 409, shut down 503 (the
    status, the body, the headers)."""
    headers = {JOB_HEADER: state.id, **NO_RETRY}
    if state.status == "failed":
        return 500, openai_body(500, f"The image could not be generated: {state.error}"), headers
    if state.status == "cancelled":
        message = f"{state.error or 'Cancelled.'} No image was made."
        return 409, openai_body(409, message, code="job_cancelled"), headers
    message = (
        f"The server is shutting down. Job {state.id} keeps its place in the queue and runs after the"
        f" restart; its images will be listed at /api/jobs/{state.id}."
    )
    return 503, openai_body(503, message), {**headers, "Retry-After": str(SHUTDOWN_RETRY_S)}


def described(wanted: ImageRequest) -> dict[str, Any]:
    """What every answer says of the images: as asked (quality is only echoed: Turbo has one)."""
    return {
        "background": BACKGROUND,
        "size": wanted.size,
        "quality": wanted.quality,
        "output_format": wanted.output_format,
    }


def usage(params: JobParams) -> dict[str, Any]:
    """The image tokens generated. Input tokens are not counted: the tokenizer lives in the worker."""
    tokens = (params.width // TOKEN_PIXELS) * (params.height // TOKEN_PIXELS) * params.num_images
    return {
        "input_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "output_tokens": tokens,
        "total_tokens": tokens,
    }


# -- images --------------------------------------------------------------------------------------------


def encoded(image: Image.Image, output_format: str, compression: int) -> bytes:
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    else:  # OpenAI's output_compression (0–100) is the JPEG and WebP quality
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=compression)
    return buffer.getvalue()


def stored_as(path: Path, output_format: str, compression: int) -> bytes:
    """The stored PNG itself (the bytes GET /images/NAME serves), or converted from it."""
    if output_format == "png":
        return path.read_bytes()
    with Image.open(path) as image:
        return encoded(image, output_format, compression)


def b64_image(path: Path, wanted: ImageRequest) -> str:
    return base64.b64encode(stored_as(path, wanted.output_format, wanted.compression)).decode("ascii")


def partial_image(preview: dict[str, Any], wanted: ImageRequest) -> str:
    """A preview (a small JPEG data URL of the current x0 estimate) at the requested size and format,
    base64: a partial image the client can draw where the final one will be."""
    _, _, payload = str(preview["url"]).partition(",")
    with Image.open(io.BytesIO(base64.b64decode(payload))) as small:
        size = (wanted.params.width, wanted.params.height)
        image = small.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    return base64.b64encode(encoded(image, wanted.output_format, wanted.compression)).decode("ascii")


def file_url(name: str, wanted: ImageRequest) -> str:
    if wanted.output_format == "png":
        return image_url(name)
    return f"{FILES}/{name.removesuffix('.png')}-q{wanted.compression}.{wanted.output_format}"


async def images_of(request: Request, state: JobState, wanted: ImageRequest) -> list[dict[str, str]]:
    if wanted.response_format == "url":
        base = str(request.base_url).rstrip("/")
        return [{"url": base + file_url(name, wanted)} for name in state.images]
    directory = settings_of(request).images_dir

    def read() -> list[dict[str, str]]:
        return [{"b64_json": b64_image(directory / name, wanted)} for name in state.images]

    return await asyncio.to_thread(read)


# -- generations ---------------------------------------------------------------------------------------


async def generations(request: Request) -> Response:
    """POST /v1/images/generations: queue the job, wait for it, answer with its images (or stream)."""
    manager = manager_of(request)
    try:
        wanted = parse(await json_body(request), settings_of(request))
        state = await manager.submit(wanted.params)
    except MalformedJSON as exc:
        return openai_error(400, f"We could not parse the JSON body of your request: the body {exc}")
    except InvalidRequest as exc:
        return invalid(exc)
    except QueueFull as exc:
        message, _body, headers = queue_full_answer(exc)
        return openai_error(429, message, headers=headers)
    except ShuttingDown as exc:
        return openai_error(503, str(exc), headers={"Retry-After": str(SHUTDOWN_RETRY_S)})
    if wanted.stream:
        response = event_stream(request, streamed(manager, state.id, wanted, settings_of(request).images_dir))
        response.headers[JOB_HEADER] = state.id
        return response
    async for _event in manager.until_end(state.id):
        pass
    state = await manager.get(state.id)
    if state.status != "done":
        status, body, headers = unfinished(state)
        return JSONResponse(body, status_code=status, headers=headers)
    body = {
        "created": int(state.finished_at or time.time()),
        "data": await images_of(request, state, wanted),
        **described(wanted),
        "usage": usage(wanted.params),
    }
    return JSONResponse(body, headers={JOB_HEADER: state.id})


def partial_steps(count: int, steps: int) -> list[int]:
    """The steps after which the partial images are taken, evenly spaced: for 2 of 8, after 3 and 6."""
    return [math.ceil((index + 1) * steps / (count + 1)) for index in range(count)]


async def streamed(
    manager: JobService, job_id: str, wanted: ImageRequest, directory: Path
) -> AsyncIterator[JSONServerSentEvent]:
    """`image_generation.partial_image` events from the job's previews, then one
    `image_generation.completed`; an `error` event (which the SDK raises as APIError) if it ends
    otherwise. No event ids: the SDK's parser would turn every later keep-alive into an empty event."""
    targets = partial_steps(wanted.partial_images, wanted.params.steps)
    sent = 0
    async for event in manager.until_end(job_id):
        # A stream that starts late sees the latest preview in its snapshot.
        preview = event.data if event.kind == "preview" else None
        if event.kind == "snapshot":
            preview = event.data.get("preview")
        if preview is None or sent >= len(targets) or int(preview["step"]) < targets[sent]:
            continue
        b64 = await asyncio.to_thread(partial_image, preview, wanted)
        kind = "image_generation.partial_image"
        data = {"type": kind, "b64_json": b64, "partial_image_index": sent, "created_at": int(time.time())}
        yield JSONServerSentEvent({**data, **described(wanted)}, event=kind)
        sent += 1
    state = await manager.get(job_id)
    if state.status != "done":
        _status, body, _headers = unfinished(state)
        yield JSONServerSentEvent({"type": "error", **body}, event="error")
        return
    b64 = await asyncio.to_thread(b64_image, directory / state.images[0], wanted)
    kind = "image_generation.completed"
    data = {"type": kind, "b64_json": b64, "created_at": int(time.time()), **described(wanted)}
    yield JSONServerSentEvent({**data, "usage": usage(wanted.params)}, event=kind)


# -- files, models, the rest ---------------------------------------------------------------------------


async def image_file(request: Request) -> Response:
    """GET /v1/images/files/{job}-{index}-q{compression}.{jpeg|webp}: a stored image converted (the
    `url` answers for jpeg and webp). The name says everything in it, so it is cached for good."""
    match = CONVERTED.match(str(request.path_params["name"]))
    if match is None:
        return openai_error(404, "No such image.")
    path = settings_of(request).images_dir / image_name(match[1], int(match[2]))
    if not path.is_file():
        return openai_error(404, "No such image.")
    content = await asyncio.to_thread(stored_as, path, match[4], int(match[3]))
    return Response(content, media_type=MEDIA_TYPES[match[4]], headers=CACHE_FOREVER)


def model_card(manager: JobService) -> dict[str, Any]:
    # No creation date is known for a checkpoint: "created" is now, as vLLM's model cards say.
    return {"id": manager.model, "object": "model", "created": int(time.time()), "owned_by": "zimage-sse"}


async def models(request: Request) -> Response:
    """GET /v1/models: the model this server runs (one model per server)."""
    return JSONResponse({"object": "list", "data": [model_card(manager_of(request))]})


async def model(request: Request) -> Response:
    manager = manager_of(request)
    wanted = str(request.path_params["model_id"])
    if wanted != manager.model:
        message = f"The model '{wanted}' does not exist: this server runs '{manager.model}'."
        return openai_error(404, message, "model", code="model_not_found")
    return JSONResponse(model_card(manager))


async def unknown(request: Request) -> Response:
    """Any other /v1/ path: 404, or 405 for a path here asked with the wrong method."""
    allowed = sorted(
        {
            method
            for route in served
            for method in route_methods(route)
            if route.matches(request.scope)[0] != Match.NONE
        }
    )
    what = f"{request.method} {request.url.path}"
    if allowed:
        return openai_error(
            405, f"{what} is not allowed: use {', '.join(allowed)}.", headers={"Allow": ", ".join(allowed)}
        )
    return openai_error(
        404,
        f"Invalid URL ({what}): this server offers POST /v1/images/generations, GET /v1/models and"
        " GET /v1/models/{model}.",
    )


def route_methods(route: BaseRoute) -> set[str]:
    return set(getattr(route, "methods", None) or ())


served: list[BaseRoute] = [
    Route("/v1/images/generations", generations, methods=["POST"]),
    Route(FILES + "/{name}", image_file, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model, methods=["GET"]),
]
routes = [
    *served,
    Route("/v1/{rest:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
]
