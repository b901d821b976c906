"""The EventBus contract (zimage_sse/service/bus.py): what every backend's test class inherits."""

from __future__ import annotations

import asyncio

from zimage_sse.service.bus import EventBus


class BusContract:
    """Subclass with a `bus` fixture giving an empty bus of the backend under test, keeping at most
    `REPLAY` events per topic."""

    REPLAY = 8

    async def test_ids_rise_per_job_and_globally(self, bus: EventBus) -> None:
        bus.open("a")
        bus.open("b")
        first = bus.publish("a", "phase", {"phase": "encoding"})
        second = bus.publish("b", "phase", {"phase": "encoding"})
        third = bus.publish("a", "step", {"step": 1})
        queue = bus.publish(None, "queue", {"queued": []})
        assert (first.seq, third.seq, second.seq) == (1, 2, 1)
        assert first.gseq < second.gseq < third.gseq < queue.gseq
        assert (bus.last_id("a"), bus.last_id("b"), bus.last_id(None)) == (2, 1, queue.gseq)
        assert queue.job_id is None and third.job_id == "a"
        assert third.data["step"] == 1 and "at" in third.data

    async def test_a_job_opened_with_a_first_id_counts_on_from_it(self, bus: EventBus) -> None:
        bus.open("old", first_id=1000)
        assert bus.publish("old", "queued", {}).seq == 1001

    async def test_replay_gives_what_came_after_an_id_or_nothing_when_up_to_date(self, bus: EventBus) -> None:
        bus.open("a")
        events = [bus.publish("a", "step", {"step": n}) for n in range(1, 5)]
        assert [e.data["step"] for e in bus.replay("a", 2) or []] == [3, 4]
        assert bus.replay("a", 4) == []
        assert bus.replay("a", 99) is None  # an id from the future: a snapshot instead
        assert bus.replay("a", None) is None
        after = events[1].gseq
        assert [e.data["step"] for e in bus.replay(None, after) or []] == [3, 4]

    async def test_an_id_older_than_what_is_kept_gets_a_snapshot(self, bus: EventBus) -> None:
        bus.open("a")
        for n in range(1, self.REPLAY + 5):
            bus.publish("a", "step", {"step": n})
        assert bus.replay("a", 1) is None
        kept = bus.replay("a", bus.last_id("a") - 3)
        assert kept is not None and len(kept) == 3

    async def test_follow_gives_the_replay_then_live_events_with_no_gap(self, bus: EventBus) -> None:
        bus.open("a")
        bus.publish("a", "step", {"step": 1})
        bus.publish("a", "step", {"step": 2})
        async with bus.follow("a", 1) as (replay, subscription):
            bus.publish("a", "step", {"step": 3})
            bus.publish("a", "done", {"status": "done"})
            seen = [e.data.get("step") for e in replay or []]
            async with asyncio.timeout(5):
                async for event in subscription:
                    seen.append(event.data.get("step"))
                    if event.terminal:
                        break
        assert seen == [2, 3, None]

    async def test_the_global_topic_follows_every_job(self, bus: EventBus) -> None:
        bus.open("a")
        bus.open("b")
        async with bus.follow(None, bus.last_id(None)) as (replay, subscription):
            assert replay == []
            bus.publish("a", "step", {"step": 1})
            bus.publish("b", "done", {"status": "done"})
            kinds = []
            async with asyncio.timeout(5):
                async for event in subscription:
                    kinds.append((event.job_id, event.kind))
                    if event.kind == "done":
                        break
        assert kinds == [("a", "step"), ("b", "done")]

    async def test_forget_drops_a_job_and_knows_says_which_are_numbered(self, bus: EventBus) -> None:
        bus.open("a")
        bus.publish("a", "step", {"step": 1})
        assert bus.knows("a") and not bus.knows("never")
        bus.forget("a")
        assert not bus.knows("a")
        assert bus.replay("a", 0) is None
