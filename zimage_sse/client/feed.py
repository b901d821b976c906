"""One job's event stream, followed to its end across dropped connections."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from ..events import TERMINAL
from .api import ClientError, StreamLost, Unreachable, describe_error, get_job, http_error
from .sse import Message, SseParser

# Read timeout of a stream: the server sends a heartbeat comment every 15 s by default, so four
# missed heartbeats mean the connection is dead and we reconnect.
STREAM_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JobEvent:
    kind: str  # snapshot, queued, phase, step, done, failed, cancelled
    data: dict[str, Any]
    id: int | None

    @property
    def status(self) -> str | None:
        if self.kind in TERMINAL:
            return self.kind
        status = self.data.get("status")
        return str(status) if status is not None else None

    @property
    def terminal(self) -> bool:
        # A job that ended before we connected streams only a snapshot showing how it ended.
        return self.status in TERMINAL


class JobFeed:
    """One job's events in order and each once, from its snapshot to its end, across dropped connections.

    After a drop it reconnects with Last-Event-ID (the server replays what was missed) up to
    `retries` times in a row, waiting `backoff_s`, then twice that, and so on; receiving anything
    resets the count. Events at or below the last id are replays we already have and are dropped.
    Iterating again after an interruption (Ctrl-C) resumes where it stopped.
    """

    def __init__(
        self,
        client: httpx.Client,
        job_id: str,
        *,
        last_id: int | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.last_id = last_id
        self.ended: JobEvent | None = None
        self.connections = 0
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._on_retry = on_retry

    def __iter__(self) -> Iterator[JobEvent]:
        return self.events()

    def events(self, deadline: float | None = None) -> Iterator[JobEvent]:
        """The events still to come; with a `deadline` (time.monotonic()) it stops quietly there."""
        failures = 0
        while self.ended is None:
            if deadline is not None and time.monotonic() >= deadline:
                return
            headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
            problem = "the stream closed before the job ended"
            self.connections += 1
            try:
                with self.client.stream(
                    "GET",
                    f"/api/jobs/{self.job_id}/events",
                    headers=headers,
                    timeout=self._timeout(deadline),
                ) as response:
                    if response.status_code == 204:
                        # "You have seen the end": we resumed from an id given to us, or the
                        # server restarted and numbers afresh. Either way, read how the job ended.
                        job = get_job(self.client, self.job_id)
                        event = JobEvent("snapshot", job, None)
                        if event.terminal:
                            self.ended = event
                            yield event
                            return
                    elif response.status_code != 200:
                        error = http_error(response)
                        if response.status_code < 500:
                            raise error
                        problem = str(error)
                    else:
                        parser = SseParser()
                        for line in response.iter_lines():
                            if line.startswith(":"):
                                failures = 0  # a heartbeat: the connection is alive
                                continue
                            message = parser.feed(line)
                            if message is None:
                                continue
                            accepted = self._accept(message)
                            if accepted is None:
                                continue
                            failures = 0
                            if accepted.terminal:
                                self.ended = accepted
                            yield accepted
                            if self.ended is not None:
                                return
            except httpx.TransportError as exc:
                problem = describe_error(exc)
            except Unreachable as exc:  # from get_job
                problem = str(exc)
            failures += 1
            if failures > self._retries:
                raise StreamLost(
                    f"lost the event stream of job {self.job_id} at {self.client.base_url} "
                    f"({problem}; {self._retries} reconnects failed)"
                )
            delay = min(self._max_backoff_s, self._backoff_s * 2 ** (failures - 1))
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            if self._on_retry is not None:
                self._on_retry(problem, failures, delay)
            self._sleep(delay)

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        read = STREAM_READ_TIMEOUT_S
        if deadline is not None:
            read = max(0.1, min(read, deadline - time.monotonic()))
        return httpx.Timeout(30.0, connect=10.0, read=read)

    def _accept(self, message: Message) -> JobEvent | None:
        event_id = int(message.id) if message.id is not None and message.id.isdigit() else None
        last = self.last_id
        # A snapshot is always taken, even with a lower id: the server's numbering has restarted.
        if message.event != "snapshot" and event_id is not None and last is not None and event_id <= last:
            return None  # replayed: already delivered
        try:
            data = json.loads(message.data)
        except ValueError as exc:
            raise ClientError(f"the server sent an event that is not JSON: {message.data[:80]!r}") from exc
        if event_id is not None:
            self.last_id = event_id
        return JobEvent(message.event, data if isinstance(data, dict) else {"value": data}, event_id)
