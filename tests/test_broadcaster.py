"""The in-process pub/sub (zimage_sse/broadcaster.py): fan-out, topics, coalescing, overflow, clean-up.

Every wait is on a subscription itself (bounded by asyncio.wait_for), never a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from zimage_sse.broadcaster import ALL, COALESCE_AFTER, Broadcaster, Subscription
from zimage_sse.events import Event

TIMEOUT = 5.0
A = "aaaaaaaaaaaaaaaa"
B = "bbbbbbbbbbbbbbbb"


def phase(job: str, name: str) -> Event:
    return Event("phase", {"phase": name}, job_id=job)


def step(job: str, number: int, total: int = 8) -> Event:
    return Event("step", {"step": number, "total": total}, job_id=job)


def done(job: str) -> Event:
    return Event("done", {"status": "done"}, job_id=job)


def a_whole_job(job: str, steps: int = 8) -> list[Event]:
    return [
        Event("queued", {"position": 1}, job_id=job),
        phase(job, "loading"),
        phase(job, "encoding"),
        phase(job, "denoising"),
        *(step(job, n, steps) for n in range(1, steps + 1)),
        phase(job, "decoding"),
        phase(job, "saving"),
        done(job),
    ]


async def next_event(reader: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(reader), TIMEOUT)


async def until_terminal(subscription: Subscription) -> list[Event]:
    """What a job stream sends: every event up to and including the terminal one."""

    async def collect() -> list[Event]:
        seen = []
        async for event in subscription:
            seen.append(event)
            if event.terminal:
                break
        return seen

    return await asyncio.wait_for(collect(), TIMEOUT)


async def to_the_end(subscription: Subscription) -> list[Event]:
    """Every event until the iterator ends (a closed subscription ends after what it still holds)."""

    async def collect() -> list[Event]:
        return [event async for event in subscription]

    return await asyncio.wait_for(collect(), TIMEOUT)


def steps_of(events: list[Event]) -> list[tuple[str | None, int]]:
    return [(e.job_id, e.data["step"]) for e in events if e.kind == "step"]


async def test_two_subscribers_both_get_every_event_in_order() -> None:
    broadcaster = Broadcaster()
    events = a_whole_job(A)
    async with broadcaster.subscribe(A) as first, broadcaster.subscribe(A) as second:
        assert broadcaster.subscriber_count == 2
        readers = (aiter(first), aiter(second))
        received: tuple[list[Event], list[Event]] = ([], [])
        for event in events:
            broadcaster.publish(event)
            for reader, seen in zip(readers, received, strict=True):
                seen.append(await next_event(reader))

    assert received[0] == events
    assert received[1] == events


async def test_events_published_together_arrive_in_order() -> None:
    broadcaster = Broadcaster()
    events = [
        Event("queued", {"position": 1}, job_id=A),
        phase(A, "loading"),
        phase(A, "encoding"),
        phase(A, "denoising"),
        step(A, 1),
        phase(A, "decoding"),
        done(A),
    ]
    async with broadcaster.subscribe(A) as first, broadcaster.subscribe(A) as second:
        for event in events:
            broadcaster.publish(event)

        assert await until_terminal(first) == events
        assert await until_terminal(second) == events


async def test_a_job_topic_gets_only_its_job_while_all_gets_everything() -> None:
    broadcaster = Broadcaster()
    queue_event = Event("queue", {"running": A, "queued": [B]})
    published = [phase(A, "encoding"), Event("queued", {"position": 1}, job_id=B), queue_event]
    published += [step(A, 1), phase(B, "loading"), done(A), done(B)]
    async with (
        broadcaster.subscribe(A) as only_a,
        broadcaster.subscribe(B) as only_b,
        broadcaster.subscribe(ALL) as everything,
    ):
        for event in published:
            broadcaster.publish(event)
        broadcaster.close_all()

        assert await to_the_end(only_a) == [e for e in published if e.job_id == A]
        assert await to_the_end(only_b) == [e for e in published if e.job_id == B]
        assert await to_the_end(everything) == published


async def test_a_slow_subscriber_sees_the_newest_step_not_a_backlog() -> None:
    broadcaster = Broadcaster(coalesce_after=0)  # behind from the first waiting event
    async with broadcaster.subscribe(A) as slow:
        for event in a_whole_job(A, steps=8):
            broadcaster.publish(event)

        received = await until_terminal(slow)

    assert [(e.kind, e.data.get("phase")) for e in received] == [
        ("queued", None),
        ("phase", "loading"),
        ("phase", "encoding"),
        ("phase", "denoising"),
        ("step", None),
        ("phase", "decoding"),
        ("phase", "saving"),
        ("done", None),
    ]
    assert steps_of(received) == [(A, 8)]


async def test_a_burst_of_queue_moves_leaves_one_queued_event_per_job() -> None:
    """Each submit to a queue of N jobs tells all N where they stand: a reader that is a little behind
    holds the newest position of each job, not N² events that would overflow it."""
    broadcaster = Broadcaster(maxsize=8, coalesce_after=0)
    loading = Event("queued", {"position": 1, "model_loading": {"state": "loading"}}, job_id=A)
    async with broadcaster.subscribe(ALL) as slow:
        for length in range(1, 21):
            for job in (A, B):
                broadcaster.publish(Event("queued", {"position": 1, "queue_length": length}, job_id=job))
        broadcaster.publish(loading)  # a partial update does not hide the full one
        broadcaster.publish(done(B))
        broadcaster.close_all()
        received = await to_the_end(slow)

    assert not slow.overflowed
    assert [(e.job_id, e.kind, e.data.get("queue_length")) for e in received] == [
        (A, "queued", 20),
        (B, "queued", 20),
        (A, "queued", None),
        (B, "done", None),
    ]


async def test_steps_are_not_coalesced_across_a_phase() -> None:
    broadcaster = Broadcaster(coalesce_after=0)  # behind from the first waiting event
    published = [step(A, 1), step(A, 2), phase(A, "decoding"), step(A, 3), step(A, 4), done(A)]
    async with broadcaster.subscribe(A) as slow:
        for event in published:
            broadcaster.publish(event)

        received = await until_terminal(slow)

    assert [e.kind for e in received] == ["step", "phase", "step", "done"]
    assert steps_of(received) == [(A, 2), (A, 4)]


async def test_a_reader_that_keeps_up_sees_every_step() -> None:
    broadcaster = Broadcaster()
    async with broadcaster.subscribe(A) as subscription:
        reader = aiter(subscription)
        seen = []
        for number in range(1, 9):
            broadcaster.publish(step(A, number))
            seen.append(await next_event(reader))

    assert steps_of(seen) == [(A, n) for n in range(1, 9)]


async def test_a_reader_a_few_events_behind_still_sees_every_step() -> None:
    """Events reach the loop in bursts before a stream's task runs; below COALESCE_AFTER waiting events
    that is not a slow reader, and it gets every step (the CLI prints each one)."""
    broadcaster = Broadcaster()
    async with broadcaster.subscribe(A) as subscription:
        for number in range(1, COALESCE_AFTER):
            broadcaster.publish(step(A, number))
        broadcaster.publish(done(A))
        received = await until_terminal(subscription)
    assert steps_of(received) == [(A, n) for n in range(1, COALESCE_AFTER)]

    async with broadcaster.subscribe(A) as behind:
        for number in range(1, 3 * COALESCE_AFTER):
            broadcaster.publish(step(A, number))
        broadcaster.publish(done(A))
        received = await until_terminal(behind)
    # Past the threshold the newest step replaces the waiting one: a bounded backlog ending at the last.
    assert len(steps_of(received)) == COALESCE_AFTER
    assert steps_of(received)[-1] == (A, 3 * COALESCE_AFTER - 1)


async def test_steps_of_different_jobs_are_not_merged() -> None:
    broadcaster = Broadcaster(coalesce_after=0)  # behind from the first waiting event
    async with broadcaster.subscribe(ALL) as slow:
        for event in (step(A, 1), step(B, 1), step(A, 2), step(B, 2), step(A, 3), done(A), done(B)):
            broadcaster.publish(event)
        broadcaster.close_all()

        received = await to_the_end(slow)

    assert sorted(steps_of(received)) == [(A, 3), (B, 2)]
    for job in (A, B):
        of_job = [e.kind for e in received if e.job_id == job]
        assert of_job == ["step", "done"]


async def test_a_coalesced_step_keeps_the_all_feed_in_id_order() -> None:
    # /api/events sends gseq as the SSE id and a reconnecting client gets the events after the last id it
    # saw, so ids must only ever increase: a newer step delivered ahead of an older event of another job
    # means a client that drops between the two never receives the older one.
    broadcaster = Broadcaster(coalesce_after=0)  # behind from the first waiting event
    order = [(A, 1), (B, 1), (A, 2), (B, 2), (A, 3)]
    published = [
        Event("step", {"step": number}, job_id=job, gseq=gseq) for gseq, (job, number) in enumerate(order, 1)
    ]
    async with broadcaster.subscribe(ALL) as slow:
        for event in published:
            broadcaster.publish(event)
        broadcaster.close_all()

        received = await to_the_end(slow)

    assert sorted(steps_of(received)) == [(A, 3), (B, 2)]
    ids = [event.gseq for event in received]
    assert ids == sorted(ids)


async def test_an_overflowing_subscriber_is_closed_and_others_are_unaffected() -> None:
    broadcaster = Broadcaster(maxsize=4)
    # Phases are never coalesced, so a subscriber that does not read fills its queue.
    published = [phase(A, name) for name in ("loading", "encoding", "denoising", "decoding", "saving")]
    published.append(step(A, 1))
    async with broadcaster.subscribe(A) as slow, broadcaster.subscribe(A) as fast:
        reader = aiter(fast)
        received = []
        for event in published:
            broadcaster.publish(event)
            received.append(await next_event(reader))

        assert received == published
        assert slow.closed
        # The iterator ends instead of handing out a partial backlog: the client reconnects and resumes.
        assert await to_the_end(slow) == []
        # Publishing to the closed subscriber is harmless; the other one still gets what follows.
        finished = done(A)
        broadcaster.publish(finished)
        assert await next_event(reader) is finished
        assert await to_the_end(slow) == []


async def test_leaving_subscribe_removes_the_subscriber() -> None:
    broadcaster = Broadcaster()
    async with broadcaster.subscribe(A) as subscription:
        assert broadcaster.subscriber_count == 1
    assert broadcaster.subscriber_count == 0
    assert subscription.closed

    broadcaster.publish(step(A, 1))  # nobody is listening: nothing is queued anywhere
    assert subscription.pending() == 0


async def test_leaving_subscribe_by_an_exception_removes_the_subscriber() -> None:
    broadcaster = Broadcaster()
    with pytest.raises(ConnectionResetError):
        async with broadcaster.subscribe(A), broadcaster.subscribe(ALL):
            assert broadcaster.subscriber_count == 2
            raise ConnectionResetError("the client went away")
    assert broadcaster.subscriber_count == 0


async def test_close_all_ends_blocked_iterators() -> None:
    broadcaster = Broadcaster()

    async def listen(subscription: Subscription, reading: asyncio.Event) -> list[Event]:
        seen = []
        async for event in subscription:
            seen.append(event)
            reading.set()
        return seen

    async with broadcaster.subscribe(A) as job_stream, broadcaster.subscribe(ALL) as all_stream:
        started = (asyncio.Event(), asyncio.Event())
        readers = [
            asyncio.create_task(listen(job_stream, started[0])),
            asyncio.create_task(listen(all_stream, started[1])),
        ]
        event = phase(A, "encoding")
        broadcaster.publish(event)
        # Once a reader has taken an event it is back waiting on its empty subscription.
        for reading in started:
            await asyncio.wait_for(reading.wait(), TIMEOUT)
        assert not any(reader.done() for reader in readers)

        broadcaster.close_all()

        for reader in readers:
            assert await asyncio.wait_for(reader, TIMEOUT) == [event]
