"""Answers given without the app: an error page for browsers and JSON for the rest, and what a
submission refused for a full queue says (security.py's middleware and the routes share them)."""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .progress import duration
from .service import QueueFull
from .templating import error_page

# Retry-After when nothing predicts when the queue has room (no timing history yet).
UNKNOWN_WAIT_RETRY_S = 30

# -- answers -------------------------------------------------------------------------------------------


# The compatibility APIs (routes/a1111.py, routes/openai_images.py) answer errors in their own shapes.
A1111_PREFIX = "/sdapi/"
OPENAI_PREFIX = "/v1/"
API_PREFIXES = ("/api/", A1111_PREFIX, OPENAI_PREFIX)


def wants_page(scope: Scope) -> bool:
    """A browser asking for a page (or posting a form) gets HTML; the APIs and everyone else JSON."""
    path: str = scope["path"]
    return not path.startswith(API_PREFIXES) and "text/html" in Headers(scope=scope).get("accept", "")


OPENAI_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(path: str, status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """An error as the API at `path` shapes it.

    - ours: `{"errors": {field: reason}}` for bad input, `{"error": message}` otherwise;
    - AUTOMATIC1111's (`modules/api/api.py`, `api_error`): `{"error", "detail", "body", "errors"}`;
    - OpenAI's: `{"error": {"message", "type", "param", "code"}}`.
    """
    if path.startswith(A1111_PREFIX):
        return {"error": HTTPStatus(status).phrase, "detail": message, "body": "", "errors": ""}
    if path.startswith(OPENAI_PREFIX):
        kind = OPENAI_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": message, "type": kind, "param": field, "code": code}}
    return {"errors": {field: message}} if field else {"error": message}


async def reject(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer `status` without calling the app: an error page for browsers, JSON for the rest."""
    response: Response
    if wants_page(scope):
        response = error_page(Request(scope, receive), status, HTTPStatus(status).phrase, message, headers)
    else:
        body = error_body(scope["path"], status, message, field)
        response = JSONResponse(body, status_code=status, headers=headers)
    await response(scope, receive, send)


def queue_full_answer(exc: QueueFull) -> tuple[str, dict[str, Any], dict[str, str]]:
    """What a submission refused for a full queue says: the message, the JSON body, the headers.

    Retry-After is the predicted time until the running job ends and a place frees up; where nothing
    predicts it the message says so and the header is a plain guess (UNKNOWN_WAIT_RETRY_S).
    """
    if exc.next_slot_s is None:
        retry = UNKNOWN_WAIT_RETRY_S
        when = "When a place frees up is unknown (no timing history for the jobs ahead yet)."
    else:
        retry = max(1, math.ceil(exc.next_slot_s))
        when = f"A place should free up in about {duration(exc.next_slot_s)}"
        if exc.drained_s is not None:
            when += f", and the queue should have run in about {duration(exc.drained_s)}"
        when += "."
    message = f"The queue is full ({exc.limit} jobs waiting): nothing was queued. {when}"
    body = {
        "error": message,
        "max_queue": exc.limit,
        "predicted_wait_s": exc.next_slot_s,
        "queue_drained_s": exc.drained_s,
        "retry_after_s": retry,
    }
    return message, body, {"Retry-After": str(retry)}
