"""Events on Redis Streams (zimage_sse/service/redis_streams.py, redis_bus.py, redis_control.py) on a
real redis-server (tests/redis_server.py): ids, replay, trimming, the reader into a Broadcaster, a Redis
restart, expiry, control messages, and that the embedded default never loads a Redis client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from zimage_sse.broadcaster import Broadcaster, Subscription
from zimage_sse.events import Event
from zimage_sse.service.redis_bus import GAP, RedisBus
from zimage_sse.service.redis_control import Control, ControlReader, send_control
from zimage_sse.service.redis_streams import (
    GLOBAL,
    BusUnavailable,
    RedisStreams,
    StaleAttempt,
    StreamSettings,
    connect,
    job_key,
)

from .conftest import ROOT, free_port
from .redis_server import RedisServer

Opener = Callable[..., Awaitable[RedisStreams]]


@pytest.fixture
async def open_streams(redis_url: str) -> AsyncIterator[Opener]:
    """Publishers on their own connections, as separate workers have them."""
    clients: list[Redis] = []

    async def open_one(**settings: Any) -> RedisStreams:
        client = await connect(redis_url, blocking_ms=1000)
        clients.append(client)
        return RedisStreams(client, StreamSettings(**settings))

    yield open_one
    for client in clients:
        await client.aclose()


@pytest.fixture
async def bus(open_streams: Opener) -> AsyncIterator[RedisBus]:
    """A web process's bus: its own connection, its reader feeding its own Broadcaster."""
    bus = RedisBus(await open_streams(), Broadcaster(256))
    await bus.start()
    yield bus
    await bus.close()


async def take(subscription: Subscription, count: int) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(30):
        async for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_ids_rise_per_job_and_globally_across_two_workers(open_streams: Opener) -> None:
    first, second = await open_streams(), await open_streams()
    published = [
        await first.publish("a", "phase", {"phase": "encoding"}),
        await second.publish("b", "phase", {"phase": "encoding"}),
        await first.publish("a", "step", {"step": 1}),
        await first.publish(None, "queue", {"queued": []}),
        # The job moves to the other worker (its first attempt's worker died): its ids go on.
        await second.publish("a", "step", {"step": 2}, attempt=2),
        await second.publish("a", "done", {"status": "done"}, attempt=2),
    ]
    assert [e.seq for e in published if e.job_id == "a"] == [1, 2, 3, 4]
    assert [e.seq for e in published if e.job_id == "b"] == [1]
    gseqs = [e.gseq for e in published]
    assert gseqs == sorted(set(gseqs))
    last = (await first.last_id("a"), await second.last_id("b"), await first.last_id(None))
    assert last == (4, 1, gseqs[-1])
    # What a client of /api/events replays is what was published, in order, with the same ids.
    replayed = await first.replay(None, 0)
    assert [(e.job_id, e.kind, e.seq, e.gseq) for e in replayed or []] == [
        (e.job_id, e.kind, e.seq, e.gseq) for e in published
    ]
    assert replayed is not None and replayed[2].data["step"] == 1 and "at" in replayed[2].data


async def test_a_job_opened_with_a_first_id_counts_on_from_it(open_streams: Opener) -> None:
    first, second = await open_streams(), await open_streams()
    first.open("old", first_id=1000)
    assert (await first.publish("old", "queued", {})).seq == 1001
    second.open("old", first_id=5)  # a lower first id than the stream's newest: the stream's wins
    assert (await second.publish("old", "queued", {})).seq == 1002


async def test_replay_after_an_id_gives_exactly_the_missed_events(open_streams: Opener) -> None:
    streams = await open_streams()
    events = [await streams.publish("a", "step", {"step": n}) for n in range(1, 11)]
    assert [e.data["step"] for e in await streams.replay("a", 6) or []] == [7, 8, 9, 10]
    assert await streams.replay("a", 10) == []
    assert await streams.replay("a", 99) is None  # an id from the future: a snapshot instead
    assert await streams.replay("a", None) is None
    assert await streams.replay("never", 0) is None
    missed = await streams.replay(None, events[5].gseq)
    assert [(e.job_id, e.seq) for e in missed or []] == [("a", n) for n in range(7, 11)]


async def test_an_id_older_than_the_trimmed_stream_gets_a_snapshot(open_streams: Opener) -> None:
    # MAXLEN ~ trims whole nodes (100 entries or 4 kB), so enough events to drop a few.
    streams = await open_streams(job_maxlen=10, global_maxlen=10)
    events = [await streams.publish("a", "step", {"step": n}) for n in range(1, 301)]
    kept = await streams.redis.xlen(job_key("a"))
    assert 10 <= kept < 300
    assert await streams.replay("a", 1) is None
    assert await streams.replay(None, events[0].gseq) is None
    recent = await streams.replay("a", 297)
    assert [e.data["step"] for e in recent or []] == [298, 299, 300]
    recent = await streams.replay(None, events[-3].gseq)
    assert [e.data["step"] for e in recent or []] == [299, 300]


async def test_a_superseded_preview_leaves_the_stream_without_breaking_replay(open_streams: Opener) -> None:
    streams = await open_streams()
    await streams.publish("a", "step", {"step": 1})
    for n in range(2, 5):
        await streams.publish("a", "preview", {"n": n})
    await streams.publish("a", "step", {"step": 5})
    replay = await streams.replay("a", 1)
    # Only the newest preview is kept, and the replay is whole (not "snapshot") despite the holes.
    assert [(e.kind, e.seq) for e in replay or []] == [("preview", 4), ("step", 5)]
    assert [e.kind for e in await streams.replay(None, 0) or []] == ["step", "preview", "step"]


async def test_a_stale_attempt_cannot_publish_on_its_job(open_streams: Opener) -> None:
    """A worker frozen past its lease comes back while attempt 2 runs: its events are refused whole."""
    stale, current = await open_streams(), await open_streams()
    await stale.publish("a", "step", {"step": 1}, attempt=1)
    await current.publish("a", "step", {"step": 1}, attempt=2)
    with pytest.raises(StaleAttempt, match="attempt 1 of job a"):
        await stale.publish("a", "step", {"step": 2}, attempt=1)
    assert await stale.redis.xlen(GLOBAL) == 2  # nothing of it reached the global stream either
    assert [e.seq for e in await current.replay("a", 0) or []] == [1, 2]


async def test_a_reader_delivers_every_event_once_to_two_subscribers(
    bus: RedisBus, open_streams: Opener
) -> None:
    worker = await open_streams()
    async with bus.follow("a", None) as (_, one), bus.follow("a", None) as (_, two):
        # Not steps: a reader handed a burst of them at once would coalesce them, as it should for a
        # slow client (broadcaster.py); every other kind is delivered one by one.
        for n in range(1, 40):
            await worker.publish("a", "phase", {"n": n})
        await worker.publish("a", "done", {"status": "done"})
        await worker.publish("b", "phase", {"n": 0})  # another job's: on neither subscription
        got_one, got_two = await take(one, 40), await take(two, 40)
    assert [e.seq for e in got_one] == list(range(1, 41)) == [e.seq for e in got_two]
    assert got_one[-1].kind == "done" and one.pending() == 0 and two.pending() == 0


async def test_follow_gives_the_replay_then_live_events_nothing_twice(
    bus: RedisBus, open_streams: Opener
) -> None:
    worker = await open_streams()
    published = [await worker.publish("a", "phase", {"n": n}) for n in range(1, 6)]
    assert await bus.reader.reached(published[-1].gseq, 30)
    async with bus.follow("a", 2) as (replay, subscription):
        await worker.publish("a", "phase", {"n": 6})
        await worker.publish("a", "done", {"status": "done"})
        live = await take(subscription, 2)
    assert [e.seq for e in replay or []] + [e.seq for e in live] == [3, 4, 5, 6, 7]


async def test_the_reader_survives_a_redis_restart_and_reports_the_gap(
    bus: RedisBus, open_streams: Opener, redis_server: RedisServer
) -> None:
    worker = await open_streams()
    async with bus.follow("a", None) as (_, subscription):
        before = [await worker.publish("a", "phase", {"n": n}) for n in range(1, 4)]
        assert [e.seq for e in await take(subscription, 3)] == [1, 2, 3]
        redis_server.restart()  # killed, started again empty: Redis without persistence
        after = await worker.publish("a", "phase", {"n": 4})
        got = await take(subscription, 2)
    assert [e.kind for e in got] == [GAP, "phase"]
    # The job numbers on from what its worker gave last, and global ids still rise.
    assert (got[1].seq, after.seq) == (4, 4) and after.gseq > before[-1].gseq
    assert bus.reader.gaps == 1 and bus.reader.connected


async def test_a_job_stream_expires_after_its_terminal_event(open_streams: Opener) -> None:
    streams = await open_streams(job_ttl_s=0.2)
    redis = streams.redis
    await redis.config_set("notify-keyspace-events", "Ex")
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe("__keyevent@0__:expired")
        await streams.publish("a", "step", {"step": 1})
        assert await redis.pttl(job_key("a")) == -1  # a running job's stream never expires
        await streams.publish("a", "done", {"status": "done"})
        assert 0 < await redis.pttl(job_key("a")) <= 200
        async with asyncio.timeout(30):
            async for message in pubsub.listen():
                if message["type"] == "message" and message["data"] == job_key("a"):
                    break
    assert not await streams.knows("a")
    assert await streams.replay("a", 1) is None  # an expired job's client gets a snapshot


async def test_control_messages_reach_only_their_worker(open_streams: Opener) -> None:
    web, first, second = await open_streams(), await open_streams(), await open_streams()
    await send_control(web, "w1", Control("old", 1))  # before w1 started: not for this life of it
    readers = {name: ControlReader(streams, name) for name, streams in (("w1", first), ("w2", second))}
    for reader in readers.values():
        await reader.start()
    await send_control(web, "w1", Control("x", 2))
    await send_control(web, "w2", Control("y", 1))
    assert await readers["w1"].read() == [Control("x", 2, "cancel")]
    assert await readers["w2"].read() == [Control("y", 1, "cancel")]
    assert await readers["w1"].read(block_ms=50) == []


async def test_memory_per_job_is_measured_and_freed(open_streams: Opener) -> None:
    streams = await open_streams()
    for n in range(1, 21):
        await streams.publish("a", "step", {"step": n, "total": 20, "eta_s": 1.5})
    used = await streams.memory("a")
    assert 1_000 < used < 1_000_000
    total, events = await streams.global_memory()
    assert total > 0 and events == 20
    await streams.forget("a")
    assert await streams.memory("a") == 0 and not await streams.knows("a")


async def test_an_unreachable_redis_is_named_without_its_password() -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    with pytest.raises(
        BusUnavailable, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1:"
    ) as caught:
        await connect(url, timeout_s=2)
    assert "secret" not in str(caught.value)
    with pytest.raises(BusUnavailable, match="cannot use the Redis URL"):
        await connect("http://127.0.0.1:1/0")


def test_the_embedded_default_never_imports_redis(tmp_path: Path) -> None:
    """`make run` loads no Redis client, and the Redis modules themselves load it only when used."""
    script = (
        "import sys\n"
        "from zimage_sse import app, cli\n"
        "from zimage_sse.service import bus, redis_bus, redis_control, redis_streams\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
