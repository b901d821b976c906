"""In-process pub/sub from the job manager to every open stream.

Each subscriber has its own bounded queue, so a slow client never slows the worker or other
clients. Once a reader is behind (COALESCE_AFTER events waiting), a step or queued event replaces an
undelivered one of the same job (a slow reader sees the newest progress, not a backlog); a reader that is
only a loop turn behind still gets every step. When the queue is full anyway the subscriber is closed
and its client resumes with Last-Event-ID, so terminal events are never silently dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .events import Event

ALL = "*"  # topic that receives every event, including queue-wide ones
# Events that only say where a job is now, so a newer one makes an undelivered one useless: a step, and
# a queued job's position and predictions. Without the latter, every submit to a queue of N jobs would
# put N events in each subscriber's queue at once, and a burst of submits would overflow readers.
SUPERSEDING = frozenset({"step", "queued"})
# How many undelivered events make a reader "behind". Fewer are normal: the worker's events reach the loop
# in bursts (a step and a preview, several emits while the loop was busy) before a stream's task runs.
COALESCE_AFTER = 8


class Subscription:
    def __init__(self, maxsize: int, coalesce_after: int = COALESCE_AFTER) -> None:
        self._items: deque[Event] = deque()
        self._maxsize = maxsize
        self._coalesce_after = min(coalesce_after, maxsize // 2)
        self._wake = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def offer(self, event: Event) -> None:
        if self.closed:
            return
        if event.kind in SUPERSEDING and len(self._items) >= self._coalesce_after:
            # Drop the job's undelivered event of the same kind if it is that job's latest event; the
            # new one goes to the end, so events stay in publishing order (ids only ever rise on a
            # feed). Previews in between do not matter (the newest one is kept anyway). A `queued`
            # update replaces only one it fully covers (not the full one by a model-loading note).
            for index in range(len(self._items) - 1, -1, -1):
                queued = self._items[index]
                if queued.job_id == event.job_id and queued.kind != "preview":
                    if queued.kind == event.kind and queued.data.keys() <= event.data.keys():
                        del self._items[index]
                    break
        elif event.kind == "preview":
            # A preview only matters until the next one: drop any the reader has not taken yet.
            for index in range(len(self._items) - 1, -1, -1):
                queued = self._items[index]
                if queued.job_id == event.job_id and queued.kind == "preview":
                    del self._items[index]
        if len(self._items) >= self._maxsize:
            self.overflowed = True
            self.close()
            return
        self._items.append(event)
        self._wake.set()

    def close(self, farewell: Event | None = None) -> None:
        """End the subscription after what it holds; `farewell` (if any) is the last event it yields,
        past the size limit, so a shutting-down server still tells every stream why it ends."""
        if farewell is not None and not self.closed:
            self._items.append(farewell)
        self.closed = True
        self._wake.set()

    def pending(self) -> int:
        return len(self._items)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            while self._items:
                if self.overflowed:
                    return  # the client resumes from its Last-Event-ID instead of a partial backlog
                yield self._items.popleft()
            if self.closed:
                return
            self._wake.clear()
            await self._wake.wait()


class Broadcaster:
    def __init__(self, maxsize: int = 256, coalesce_after: int = COALESCE_AFTER) -> None:
        self._maxsize = maxsize
        self._coalesce_after = coalesce_after
        self._topics: dict[str, set[Subscription]] = {}
        self._farewell: Event | None = None  # set by close_all: later subscribers get it at once

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        subscription = self.open(topic)
        try:
            yield subscription
        finally:
            self.release(topic, subscription)

    def open(self, topic: str) -> Subscription:
        """Subscribe synchronously, so a caller can take a snapshot in the same loop turn (no gap)."""
        subscription = Subscription(self._maxsize, self._coalesce_after)
        if self._farewell is not None:
            subscription.close(self._farewell)  # a stream opened during shutdown ends at once
        self._topics.setdefault(topic, set()).add(subscription)
        return subscription

    def release(self, topic: str, subscription: Subscription) -> None:
        subscription.close()
        subscribers = self._topics.get(topic)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._topics[topic]

    def publish(self, event: Event) -> None:
        for topic in (event.job_id, ALL):
            if topic is None:
                continue
            for subscription in tuple(self._topics.get(topic, ())):
                subscription.offer(event)

    def close_all(self, farewell: Event | None = None) -> None:
        """End every subscription, each with `farewell` as its last event, and any opened later too."""
        self._farewell = farewell
        for subscribers in self._topics.values():
            for subscription in subscribers:
                subscription.close(farewell)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._topics.values())
