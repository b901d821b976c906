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


def wants_page(scope: Scope) -> bool:
    """A browser asking for a page (or posting a form) gets HTML; the API and everyone else JSON."""
    path: str = scope["path"]
    return not path.startswith("/api/") and "text/html" in Headers(scope=scope).get("accept", "")


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
        body: dict[str, Any] = {"errors": {field: message}} if field else {"error": message}
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
