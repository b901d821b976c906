"""The EventBus: publish an event and get its id; follow a topic from an id, replay then live.

Two kinds of topic: one per job (ids count that job's events) and the global one (`ALL`, ids count
every event). The embedded backend keeps ring buffers in memory and hands each event to the local
`Broadcaster`, which does the per-subscriber queues, coalescing and slow-client handling for every
backend (STYLE.md, "encode/broadcaster"). A backend across machines (Redis Streams) implements the
same methods: its stream ids are the events' ids.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from ..broadcaster import ALL, Broadcaster, Subscription
from ..events import Event

Replay = list[Event] | None  # None: the id is older than what is kept: send a snapshot instead


class EventBus(Protocol):
    broadcaster: Broadcaster

    def open(self, job_id: str, first_id: int = 0) -> None:
        """Start a job's topic; its events get ids from `first_id` + 1 on."""

    def publish(self, job_id: str | None, kind: str, data: dict[str, Any]) -> Event:
        """Send an event on a job's topic (and the global one), or the global one only (None)."""

    def last_id(self, job_id: str | None) -> int:
        """The id of the newest event on the topic (0 when it has none)."""

    def replay(self, job_id: str | None, after: int | None) -> Replay:
        """The events after `after` on the topic, or None when it no longer reaches back that far."""

    def knows(self, job_id: str) -> bool:
        """Whether this bus numbered the job's events (jobs from before a restart are not numbered)."""

    def follow(
        self, job_id: str | None, after: int | None
    ) -> AbstractAsyncContextManager[tuple[Replay, Subscription]]:
        """The events after `after` and a live subscription, taken with nothing between them."""

    def forget(self, job_id: str) -> None:
        """Drop a job's topic (it ended long ago, or was deleted)."""


class MemoryBus:
    """Ring buffers in this process: the embedded EventBus."""

    def __init__(self, broadcaster: Broadcaster, replay_events: int = 512) -> None:
        self.broadcaster = broadcaster
        self._replay_events = replay_events
        self._history: dict[str, deque[Event]] = {}
        self._seq: dict[str, int] = {}
        self._global: deque[Event] = deque(maxlen=replay_events)
        # Global ids continue across restarts instead of starting again at 1, so an id a client kept
        # from the last process can never name a different event in this one: ids from before the
        # restart are below this base (microseconds since the epoch), hence older than the buffer, and
        # get a fresh snapshot.
        self.epoch = time.time_ns() // 1000
        self._gseq = self.epoch

    def open(self, job_id: str, first_id: int = 0) -> None:
        self._history[job_id] = deque(maxlen=self._replay_events)
        self._seq[job_id] = max(first_id, self._seq.get(job_id, 0))

    def knows(self, job_id: str) -> bool:
        return job_id in self._history

    def last_id(self, job_id: str | None) -> int:
        return self._gseq if job_id is None else self._seq.get(job_id, 0)

    def forget(self, job_id: str) -> None:
        self._history.pop(job_id, None)
        self._seq.pop(job_id, None)

    def publish(self, job_id: str | None, kind: str, data: dict[str, Any]) -> Event:
        # "at": when the event was made (unix seconds), so a client can measure its delivery delay.
        data = {**data, "at": round(time.time(), 6)}
        self._gseq += 1
        seq = 0
        if job_id is not None:
            seq = self._seq[job_id] = self._seq.get(job_id, 0) + 1
        event = Event(kind, data, job_id=job_id, seq=seq, gseq=self._gseq)
        history = self._history.get(job_id) if job_id is not None else None
        if history is not None:
            if kind == "preview":
                # A resuming client is sent only the newest preview, so the buffers keep only that one:
                # a job's previews (a few kB each) never crowd out its steps or pile up after it ends.
                previous = next((e for e in reversed(history) if e.kind == "preview"), None)
                if previous is not None:
                    _drop(history, previous)
                    _drop(self._global, previous)
            history.append(event)
        self._global.append(event)
        self.broadcaster.publish(event)
        return event

    def replay(self, job_id: str | None, after: int | None) -> Replay:
        if after is None:
            return None
        if job_id is None:
            buffer, last, key = self._global, self._gseq, _gseq
        else:
            history = self._history.get(job_id)
            if history is None:
                return None
            buffer, last, key = history, self._seq[job_id], _seq
        if after >= last:
            return [] if after == last else None
        if not buffer or key(buffer[0]) > after + 1:
            return None  # the buffer no longer reaches back: a fresh snapshot instead
        return [event for event in buffer if key(event) > after]

    @asynccontextmanager
    async def follow(
        self, job_id: str | None, after: int | None
    ) -> AsyncIterator[tuple[Replay, Subscription]]:
        # The replay and the subscription are taken in one loop turn, so nothing falls between them.
        replay = self.replay(job_id, after)
        async with self.broadcaster.subscribe(ALL if job_id is None else job_id) as subscription:
            yield replay, subscription


def _seq(event: Event) -> int:
    return event.seq


def _gseq(event: Event) -> int:
    return event.gseq


def _drop(events: deque[Event], old: Event) -> None:
    """Remove `old` (this very event, found by identity, searching from the newest end, where a recent
    one is) if the buffer still holds it."""
    for index in range(len(events) - 1, -1, -1):
        if events[index] is old:
            del events[index]
            return
