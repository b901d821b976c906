"""Server-Sent Events: JSON feeds for curl, EventSource and the CLI; HTML fragments for htmx pages.

Every stream starts with what the client is missing (a snapshot, or the events after its
Last-Event-ID) and a job's stream closes after its terminal event. HTML streams render the same
partial templates as the first page load, from the job's current state.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ..broadcaster import Subscription
from ..events import Event
from ..service import SHUTDOWN
from .api import job_id_of, manager_of, settings_of

logger = logging.getLogger(__name__)

# htmx's hx-sse extension closes the connection on this named event (hx-sse:close="end"). It carries
# data because an SSE message without any is never dispatched (WHATWG HTML, "dispatch the event").
END = ServerSentEvent(data="end", event="end")
# How long a client should wait before reconnecting after a `shutdown` event (the SSE `retry` field,
# which EventSource and htmx honour): a restart takes a few seconds.
SHUTDOWN_RETRY_MS = 2000


def farewell(event: Event) -> ServerSentEvent:
    """The `shutdown` event: no id, so a client's Last-Event-ID stays that of the last real event."""
    return ServerSentEvent(
        data=json.dumps(event.data, separators=(",", ":")), event=SHUTDOWN, retry=SHUTDOWN_RETRY_MS
    )


def json_event(event: Event, *, global_ids: bool = False) -> ServerSentEvent:
    if event.kind == SHUTDOWN:
        return farewell(event)
    data = {"job_id": event.job_id, **event.data} if event.job_id else event.data
    return ServerSentEvent(
        data=json.dumps(data, separators=(",", ":")),
        event=event.kind,
        id=str(event.gseq if global_ids else event.seq),
    )


def wire(event: Event, *, global_ids: bool = False) -> bytes:
    """`json_event` as bytes, made once per event however many clients follow it (bench/fanout.py)."""
    cached = event.encoded.get(global_ids)
    if cached is None:
        cached = event.encoded[global_ids] = json_event(event, global_ids=global_ids).encode()
    return cached


async def _events(
    first: list[Event], subscription: Subscription | None, stop_at_terminal: bool
) -> AsyncIterator[Event]:
    for event in first:
        yield event
        if stop_at_terminal and event.terminal:
            return
    if subscription is None:
        return
    async for event in subscription:
        yield event
        if stop_at_terminal and event.terminal:
            return


class _EventStream(EventSourceResponse):
    """sse-starlette's response with one stall watchdog per stream instead of a timer per send.

    sse-starlette bounds each send with its own anyio cancel scope and timer. With 1,000 clients that
    is a scope and a timer per client per event, a fifth of the event loop's time in the fan-out
    (bench/RESULTS.md "Fan-out"). Here a send only notes when it began, and one watchdog task per
    stream ends the response once a send has been blocked for `stalled_after` seconds: a client that
    stopped reading, whose socket buffer is full. The body generator is then closed by the response's
    task group, so its subscription is released.
    """

    def __init__(
        self, content: AsyncIterator[ServerSentEvent | bytes], *, stalled_after: float, **kwargs: Any
    ) -> None:
        super().__init__(content, data_sender_callable=self._watchdog, **kwargs)
        self.stalled_after = stalled_after
        self._send_began: float | None = None  # time.monotonic() of the send in progress, if any

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        self._send_began = time.monotonic()
        try:
            await send(message)
        finally:
            self._send_began = None

    async def _watchdog(self) -> None:
        while True:
            began, now = self._send_began, time.monotonic()
            if began is not None and now - began >= self.stalled_after:
                raise SendTimeoutError
            # Wake when the send in progress would have stalled, or a full period from now if none
            # is: a send that begins meanwhile is checked then, within `stalled_after` of its start.
            await anyio.sleep(self.stalled_after - (now - began) if began is not None else self.stalled_after)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # Expected, not a fault: the body generator has been closed, so its subscription is gone.
            logger.warning("dropped an event stream whose client took no data for %s s", self.stalled_after)


def event_stream(request: Request, body: AsyncIterator[ServerSentEvent | bytes]) -> Response:
    settings = settings_of(request)
    return _EventStream(
        body,
        ping=settings.heartbeat_s,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        # A client that stops reading blocks our send once its socket is full: after this long the
        # response ends and its subscription is released (its bounded queue holds what waits meanwhile).
        stalled_after=settings.stalled_stream_s,
    )


async def job_events(request: Request) -> Response:
    """GET /api/jobs/{id}/events: snapshot, then queued/phase/step events, then done|failed|cancelled."""
    manager, job_id = manager_of(request), job_id_of(request)
    last_event_id = request.headers.get("last-event-id")
    state = await manager.get(job_id)  # a 404 before the stream starts, not an empty stream
    if manager.seen_the_end(state, last_event_id):
        # 204 tells EventSource to stop reconnecting.
        return Response(status_code=204)

    async def body() -> AsyncIterator[bytes]:
        async with manager.follow(job_id, last_event_id) as (first, subscription):
            async for event in _events(first, subscription, stop_at_terminal=True):
                yield wire(event)

    return event_stream(request, body())


async def all_events(request: Request) -> Response:
    """GET /api/events: every job's events and queue changes, for dashboards."""
    manager = manager_of(request)

    async def body() -> AsyncIterator[bytes]:
        async with manager.follow_all(request.headers.get("last-event-id")) as (first, subscription):
            async for event in _events(first, subscription, stop_at_terminal=False):
                yield wire(event, global_ids=True)

    return event_stream(request, body())


def _render(request: Request, template: str, **context: Any) -> str:
    return str(request.app.state.templates.get_template(template).render(request=request, **context))


async def job_fragments(request: Request) -> Response:
    """GET /jobs/{id}/stream: the job panel re-rendered on every event, then `end`."""
    manager, job_id = manager_of(request), job_id_of(request)
    ended = await manager.get(job_id)

    async def body() -> AsyncIterator[ServerSentEvent]:
        if ended.terminal:
            # A page reconnecting after the end (its connection dropped between the last panel and `end`):
            # nothing more will happen, so the final panel and `end` at once, never a stream left waiting.
            yield ServerSentEvent(data=_render(request, "_job.html", job=ended.snapshot()))
            yield END
            return
        async with manager.follow(job_id, request.headers.get("last-event-id")) as (first, subscription):
            async for event in _events(first, subscription, stop_at_terminal=True):
                if event.kind == SHUTDOWN:
                    yield farewell(event)  # no `end`: htmx reconnects, with Last-Event-ID, when it is back
                    return
                if subscription is not None and subscription.pending():
                    continue  # a newer event is already waiting: render once, from the latest state
                state = await manager.get(job_id)
                yield ServerSentEvent(
                    data=_render(request, "_job.html", job=state.snapshot()), id=str(event.seq)
                )
                if state.terminal:
                    yield END
                    return
            # Dropped for falling behind: no `end`, so htmx reconnects and resumes from its last id.

    return event_stream(request, body())


async def queue_fragments(request: Request) -> Response:
    """GET /queue/stream: the home page's live queue, re-rendered when anything in it changes."""
    manager = manager_of(request)

    def render() -> str:
        return _render(request, "_queue.html", queue=manager.queue_snapshot())

    async def body() -> AsyncIterator[ServerSentEvent]:
        async with manager.follow_all() as (_first, subscription):
            yield ServerSentEvent(data=render())
            async for event in subscription:
                if event.kind == SHUTDOWN:
                    yield farewell(event)
                    return
                if subscription.pending():
                    continue
                yield ServerSentEvent(data=render())

    return event_stream(request, body())


routes = [
    Route("/api/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/api/events", all_events, methods=["GET"]),
    Route("/jobs/{job_id}/stream", job_fragments, methods=["GET"]),
    Route("/queue/stream", queue_fragments, methods=["GET"]),
]
