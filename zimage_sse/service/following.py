"""Following a job or the whole service: the replay a client missed, or a snapshot, then live events.

A part of JobService (jobs.py), apart so that each file reads in one sitting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..broadcaster import Subscription
from ..events import Event
from .bus import EventBus
from .state import JobState, parse_id


class Following:
    bus: EventBus

    async def get(self, job_id: str) -> JobState:
        raise NotImplementedError

    def queue_snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    @asynccontextmanager
    async def follow(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[tuple[list[Event], Subscription | None]]:
        """What a job's stream sends: the events a client missed (or a snapshot), then live events.

        The replay and the subscription are taken with nothing between them. The subscription is
        None when the job has already ended.
        """
        state = await self.get(job_id)
        after = parse_id(last_event_id)
        if state.terminal:
            first = self.bus.replay(job_id, after) if self.bus.knows(job_id) else None
            yield first if first is not None else [self._snapshot(state)], None
            return
        async with self.bus.follow(job_id, after) as (replay, subscription):
            first = replay if replay is not None else [self._snapshot(state)]
            if any(event.terminal for event in first):
                yield first, None
                return
            yield first, subscription

    async def until_end(self, job_id: str) -> AsyncIterator[Event]:
        """A job's events from now to its end, for callers inside the server that wait on a job (the
        compatibility APIs): a snapshot or what is known first, then every event, the terminal one
        last. A subscription that overflows (the caller was slow) is resumed after its last event,
        so the end is never missed. Stops early only when the server shuts down: the caller then
        reads the job's state (`get`) to tell why."""
        last: str | None = None
        while True:
            async with self.follow(job_id, last) as (first, subscription):
                for event in first:
                    yield event
                    if event.terminal:
                        return
                    last = str(event.seq) if event.seq else last
                if subscription is None:
                    return
                async for event in subscription:
                    yield event
                    if event.terminal:
                        return
                    last = str(event.seq) if event.seq else last
                if not subscription.overflowed:
                    return

    def _snapshot(self, state: JobState) -> Event:
        seq = self.bus.last_id(state.id) if self.bus.knows(state.id) else 0
        return Event("snapshot", state.snapshot(), job_id=state.id, seq=seq)

    @asynccontextmanager
    async def follow_all(
        self, last_event_id: str | None = None
    ) -> AsyncIterator[tuple[list[Event], Subscription]]:
        async with self.bus.follow(None, parse_id(last_event_id)) as (replay, subscription):
            first = (
                replay
                if replay is not None
                else [Event("snapshot", self.queue_snapshot(), gseq=self.bus.last_id(None))]
            )
            yield first, subscription

    def seen_the_end(self, state: JobState, last_event_id: str | None) -> bool:
        """Whether a client resuming from `last_event_id` already has this ended job's final state.

        A job from before a restart is not numbered in this process: its stream is a snapshot with
        id 0, so a client that resumes from 0 has it, and one that resumes from an older id (it may
        have missed the end) gets the snapshot first.
        """
        last = parse_id(last_event_id)
        if not state.terminal or last is None:
            return False
        if self.bus.knows(state.id):
            return last >= self.bus.last_id(state.id)
        return last == 0
