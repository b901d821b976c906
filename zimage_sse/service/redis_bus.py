"""Events from Redis Streams into this process: one reader, the local Broadcaster, and the bus on top.

Each web process runs one `StreamReader`: an XREAD BLOCK loop over the global stream that hands every
event to the process's own `Broadcaster`, so per-subscriber queues, coalescing and slow-client handling
stay per process and the same for every backend (STYLE.md, "encode/broadcaster"). One read serves every
stream the process has open, however many clients follow however many jobs.

The reader survives Redis going away: it retries with a growing pause, then goes on after the last id
it delivered. If events may have been lost meanwhile (Redis restarted without its data, or the reader
fell further behind than the stream keeps) it publishes a `gap` event on the global topic and on every
job topic it has recently delivered for, so the streams send a fresh snapshot.

`RedisBus` is the EventBus of zimage_sse/service/bus.py on Redis, with every method that talks to Redis
async (the protocol's are synchronous today: see the issue-16 report).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from ..broadcaster import ALL, Broadcaster, Subscription
from ..events import Event
from .bus import Replay
from .redis_streams import GLOBAL, Entry, RedisStreams, decode, entries, entry_id, stream_entries

logger = logging.getLogger(__name__)

GAP = "gap"  # the kind of the event that tells subscribers "events may be missing: take a snapshot"
# Jobs remembered for gap events: far more than run at once on any site, so every live one is there.
RECENT_JOBS = 4096


class StreamReader:
    """The one XREAD loop of a process, from the newest event at `start` on."""

    def __init__(
        self,
        streams: RedisStreams,
        broadcaster: Broadcaster,
        *,
        block_ms: int = 1000,
        batch: int = 512,
        on_gap: Callable[[int], None] | None = None,
    ) -> None:
        self._redis = streams.redis
        self._broadcaster = broadcaster
        self._block_ms = block_ms
        self._batch = batch
        self._on_gap = on_gap
        self.position = 0  # the global id of the last event handed to the broadcaster
        self.gaps = 0  # how many times events may have been lost (each sent a `gap` event)
        self.connected = False
        self._jobs: OrderedDict[str, None] = OrderedDict()
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        newest = entries(await self._redis.xrevrange(GLOBAL, count=1))
        self.position = entry_id(newest[0][0]) if newest else 0
        self.connected = True
        self._task = asyncio.create_task(self._run(), name="redis-stream-reader")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        # One cancel is not always enough on Python 3.11: redis-py sends each command through
        # asyncio.wait_for, which loses a cancel that arrives as the send completes (CPython
        # gh-86296, fixed in 3.12), and the loop would go on. So cancel until it ends; the flag also
        # ends it after its current XREAD (at most block_ms).
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with suppress(asyncio.CancelledError):
            await task

    async def reached(self, gseq: int, timeout_s: float) -> bool:
        """Wait until the reader has delivered the event `gseq` (False after `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.position < gseq:
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        pause = 0.05
        while not self._stopping:
            try:
                if not self.connected:
                    await self._resume()
                reply = await self._redis.xread(
                    {GLOBAL: f"{self.position}-0"}, count=self._batch, block=self._block_ms
                )
                pause = 0.05
                found = stream_entries(reply, GLOBAL)
                if found:
                    await self._deliver(found)
            except (RedisError, OSError) as error:
                if self.connected:
                    logger.warning("lost Redis (%s); the event reader retries", error)
                self.connected = False
                # A pause before retrying, growing to 2 s: a Redis that is down is not hammered.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
            except Exception:
                # The loop must survive anything (a malformed entry, say), or every stream stalls.
                logger.exception("the Redis event reader failed; it goes on")
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _resume(self) -> None:
        """Back after an error: if the stream no longer holds our last event and has nothing newer,
        Redis lost its data (a restart without persistence): a gap now, and go on from its newest."""
        newest = entries(await self._redis.xrevrange(GLOBAL, count=1))
        top = entry_id(newest[0][0]) if newest else 0
        self.connected = True
        logger.info("Redis is back; the event reader goes on after %d", self.position)
        if top < self.position:
            self._gap()
            self.position = top

    async def _deliver(self, found: list[Entry]) -> None:
        first = found[0][1]
        if int(first["p"]) != self.position:
            # Not the event right after ours: a superseded preview was removed (fine) unless the
            # stream no longer reaches back to our last event (trimmed past us, or lost).
            oldest = entries(await self._redis.xrange(GLOBAL, count=1))
            if not oldest or entry_id(oldest[0][0]) > self.position:
                self._gap()
        for entry in found:
            event = decode(entry)
            self.position = event.gseq
            if event.job_id is not None:
                self._remember(event)
            self._broadcaster.publish(event)
        self._moved.set()

    def _remember(self, event: Event) -> None:
        assert event.job_id is not None
        if event.terminal:
            self._jobs.pop(event.job_id, None)
            return
        self._jobs[event.job_id] = None
        self._jobs.move_to_end(event.job_id)
        if len(self._jobs) > RECENT_JOBS:
            self._jobs.popitem(last=False)

    def _gap(self) -> None:
        self.gaps += 1
        logger.warning("events after %d may be lost; streams get a snapshot", self.position)
        data = {"after": self.position}
        self._broadcaster.publish(Event(GAP, data))
        for job_id in self._jobs:
            # The broadcaster hands these to the global topic's subscribers too: its first gap (the
            # one without a job) is the one that matters there, the rest say the same.
            self._broadcaster.publish(Event(GAP, data, job_id=job_id))
        if self._on_gap is not None:
            self._on_gap(self.position)


class RedisBus:
    """The EventBus on Redis Streams, with async methods: `streams` publishes and replays, `reader`
    delivers to `broadcaster`. Workers publish only (no reader); web processes `start` the reader."""

    def __init__(self, streams: RedisStreams, broadcaster: Broadcaster, *, catch_up_s: float = 2.0) -> None:
        self.streams = streams
        self.broadcaster = broadcaster
        self.reader = StreamReader(streams, broadcaster)
        # How long a follow waits for this process's reader to catch up with a client that comes
        # from a faster web process (its Last-Event-ID is newer than what the reader delivered).
        self._catch_up_s = catch_up_s

    async def start(self) -> None:
        await self.reader.start()

    async def close(self) -> None:
        await self.reader.stop()

    def open(self, job_id: str, first_id: int = 0) -> None:
        self.streams.open(job_id, first_id)

    async def publish(self, job_id: str | None, kind: str, data: dict[str, Any], attempt: int = 1) -> Event:
        return await self.streams.publish(job_id, kind, data, attempt)

    async def last_id(self, job_id: str | None) -> int:
        return await self.streams.last_id(job_id)

    async def replay(self, job_id: str | None, after: int | None) -> Replay:
        return await self.streams.replay(job_id, after)

    async def knows(self, job_id: str) -> bool:
        return await self.streams.knows(job_id)

    async def forget(self, job_id: str) -> None:
        await self.streams.forget(job_id)

    @asynccontextmanager
    async def follow(
        self, job_id: str | None, after: int | None
    ) -> AsyncIterator[tuple[Replay, Subscription]]:
        """The events after `after` and a live subscription, with nothing missing or twice between
        them: the subscription is opened in the same loop turn as the reader's position is read, and
        the replay stops at that position (everything later comes live)."""
        if after is not None:
            # A client ahead of this process's reader (it came from another web process) would get
            # events it has again from the subscription: wait for the reader to reach its id first.
            target = after if job_id is None else await self.streams.global_id(job_id, after)
            if target is not None and not await self.reader.reached(target, self._catch_up_s):
                logger.warning("the event reader is behind %d; the stream may repeat events", target)
        topic = ALL if job_id is None else job_id
        subscription = self.broadcaster.open(topic)
        upto = self.reader.position
        try:
            replay = await self.streams.replay(job_id, after, upto=upto)
            yield replay, subscription
        finally:
            self.broadcaster.release(topic, subscription)
