"""GET /api/openapi.json: the JSON API described for tools (and the fuzz test), built from the same
field list and limits that params.validate enforces, so the description cannot drift from the checks."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..config import Settings
from ..events import STATUSES
from ..params import FIELDS, MAX_SEED, JobParams
from .api import settings_of

JSON_TYPES = {"str": "string", "int": "integer", "float": "number"}


def field_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """JSON Schema keywords per field, from the settings params.validate checks against."""
    size = {"minimum": settings.min_size, "maximum": settings.max_size, "multipleOf": settings.size_multiple}
    return {
        "prompt": {"minLength": 1, "maxLength": settings.max_prompt_chars, "pattern": r"\S"},
        "negative_prompt": {"maxLength": settings.max_prompt_chars, "default": ""},
        "width": {**size, "default": settings.default_width},
        "height": {**size, "default": settings.default_height},
        "steps": {"minimum": 1, "maximum": settings.max_steps, "default": settings.default_steps},
        "guidance": {"minimum": 0, "maximum": settings.max_guidance, "default": settings.default_guidance},
        "seed": {"minimum": 0, "maximum": MAX_SEED, "description": "random when left out, and recorded"},
        "num_images": {"minimum": 1, "maximum": settings.max_images, "default": 1},
    }


def job_request_schema(settings: Settings) -> dict[str, Any]:
    types = {f.name: JSON_TYPES[str(f.type)] for f in dataclasses.fields(JobParams)}
    limits = field_limits(settings)
    # null in an optional field means "left out": the default (validate treats both alike).
    nullable = {name: [types[name], "null"] if name != "prompt" else types[name] for name in FIELDS}
    return {
        "type": "object",
        "properties": {name: {"type": nullable[name], **limits[name]} for name in FIELDS},
        "required": ["prompt"],
        "additionalProperties": False,
        # Not expressible in JSON Schema: width × height may not exceed this.
        "x-max-pixels": settings.max_pixels,
    }


def estimate_operation(settings: Settings) -> dict[str, Any]:
    """GET /api/estimate: what a job of this size would cost if submitted now (routes/estimate.py)."""
    limits = field_limits(settings)
    return {
        "summary": "predicted run time, device and start of a job not yet submitted; nothing is queued",
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "integer", **limits[name]}}
            for name in ("width", "height", "steps", "num_images")
        ],
        "responses": {
            **_answers(200, 401, 422),
            "200": {
                "description": "run_s and start_s in seconds (null: not known), source (size, cost-model, "
                "scaled; null: no history), device, finish_s, needs_load, needs_warmup, load_s, warmup_s, "
                "jobs_ahead, and text for people"
            },
        },
    }


def _answers(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": WHY[code]} for code in codes}


WHY = {
    200: "OK",
    201: "the job, queued",
    202: "cancel requested",
    204: "the client has already seen this ended job's last event",
    400: "malformed JSON, or a Last-Event-ID that is not an event id",
    401: "the access token is missing or wrong (ZIMAGE_SSE_TOKEN)",
    403: "a cross-site request",
    404: "no such job",
    409: "the job has already ended",
    413: "the body is over ZIMAGE_SSE_MAX_BODY_BYTES",
    422: '{"errors": {field: reason}}; nothing was queued',
    429: "queue full or too many submissions; see Retry-After",
}


def describe(settings: Settings) -> dict[str, Any]:
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    last_event_id = {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}
    stream = {"200": {"description": "text/event-stream"}}
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "zimage-sse", "version": __version__},
        "paths": {
            "/api/jobs": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": job_request_schema(settings)}},
                    },
                    "responses": _answers(201, 400, 401, 403, 413, 422, 429),
                },
                "get": {
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
                    ],
                    "responses": _answers(200, 401, 422),
                },
            },
            "/api/jobs/{job_id}": {"get": {"parameters": [job_id], "responses": _answers(200, 401, 404)}},
            "/api/jobs/{job_id}/cancel": {
                "post": {"parameters": [job_id], "responses": _answers(202, 401, 403, 404, 409)}
            },
            "/api/jobs/{job_id}/events": {
                "get": {
                    "parameters": [job_id, last_event_id],
                    "responses": {**stream, **_answers(204, 400, 401, 404)},
                }
            },
            "/api/events": {
                "get": {"parameters": [last_event_id], "responses": {**stream, **_answers(400, 401)}}
            },
            "/api/status": {"get": {"responses": _answers(200, 401)}},
            "/api/estimate": {"get": estimate_operation(settings)},
        },
    }
    if settings.token:
        spec["components"] = {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}}
        spec["security"] = [{"token": []}]
    return spec


async def openapi(request: Request) -> Response:
    return JSONResponse(describe(settings_of(request)))


routes = [Route("/api/openapi.json", openapi, methods=["GET"])]
