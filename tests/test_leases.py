"""The queue across machines (zimage_sse/db/leases.py PgQueue) on a real PostgreSQL server: claims by
concurrent workers, leases that run out, stale workers, reapers in two processes, cancels."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from zimage_sse.db.leases import (
    CANCELLED_QUEUED,
    CANCELLED_RUNNING,
    CancelOutcome,
    LeaseLost,
    PgQueue,
    Reaped,
)
from zimage_sse.db.postgres import PgStore

from .conftest import ROOT
from .contract.store import row

REASON = "Its worker stopped renewing the lease 2 times; it is not retried again."
# A lease that has run out by the time anything looks at it: what a frozen worker leaves.
TINY = 0.001
WAIT_S = 30.0  # the bound of every wait on the database below


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PgStore]:
    store = await PgStore.open(postgres_url)
    yield store
    await store.close()


@pytest.fixture
def queue(store: PgStore) -> PgQueue:
    return PgQueue(store)


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check` (an async call to the database) until it returns something true, bounded."""
    deadline = time.monotonic() + WAIT_S
    while not (result := await check()):
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        await asyncio.sleep(0.01)
    return result


async def reap_until(queue: PgQueue, job_id: str, max_attempts: int = 2) -> Reaped:
    """Reap until the database's clock has passed the job's lease and the reaper took it back."""

    async def reaped() -> Reaped | None:
        found = await queue.reap(max_attempts, REASON)
        return found if job_id in (*found.requeued, *found.failed, *found.cancelled) else None

    result: Reaped = await until(reaped, f"the lease of {job_id} to be reaped")
    return result


async def finish_done(queue: PgQueue, job_id: str, attempt: int) -> None:
    await queue.finish(
        job_id,
        attempt,
        status="done",
        finished_at=time.time(),
        images=[f"{job_id}-0.png"],
        step_s=[0.2, 0.1],
        phases={"denoising": 0.3, "decoding": 0.05},
        eta_points={0.0: 1.0},
        actual_total_s=0.4,
    )


async def test_four_claimers_take_every_job_once_each_in_created_order(postgres_url: str) -> None:
    stores = [await PgStore.open(postgres_url, max_size=1) for _ in range(4)]  # a connection each
    try:
        queues = {f"w{n}": PgQueue(s) for n, s in enumerate(stores)}
        created: dict[str, float] = {}
        claimed: dict[str, list[str]] = {worker: [] for worker in queues}

        async def drain(worker: str, queue: PgQueue) -> None:
            while (claim := await queue.claim(worker, "cuda:0", 60.0)) is not None:
                assert (claim.attempt, claim.job["status"]) == (1, "running")
                claimed[worker].append(claim.job_id)

        for batch in range(5):
            for n in range(20):
                # Ids in no particular order: the queue's order is created_at's.
                job_id = secrets.token_hex(4)
                created[job_id] = 1000.0 * batch + n
                await stores[0].insert_job(row(job_id, created[job_id]))
            await asyncio.gather(*(drain(worker, queue) for worker, queue in queues.items()))
        taken = [job_id for ids in claimed.values() for job_id in ids]
        assert sorted(taken) == sorted(created), "every job claimed exactly once"
        for worker, ids in claimed.items():
            assert ids == sorted(ids, key=created.__getitem__), f"{worker} claimed out of order"
        assert sum(1 for ids in claimed.values() if ids) >= 2, "the claimers did not run at once"
        running = await queues["w0"].running()
        assert sorted((r.job_id, r.worker, r.attempt) for r in running) == sorted(
            (job_id, worker, 1) for worker, ids in claimed.items() for job_id in ids
        )
        assert await queues["w0"].waiting() == []
    finally:
        for store in stores:
            await store.close()


async def test_a_lease_that_ran_out_goes_to_another_worker_and_the_stale_one_writes_nothing(
    store: PgStore, queue: PgQueue
) -> None:
    await store.insert_job(row("a", 100.0))
    first = await queue.claim("w1", "cuda:0", TINY, dtype="bfloat16", gpu_util=12.0)
    assert first is not None and first.attempt == 1
    assert (first.job["device"], first.job["dtype"], first.job["gpu_util_start"]) == (
        "cuda:0",
        "bfloat16",
        12.0,
    )
    assert "lease_until" not in first.job and "worker" not in first.job  # the rows stay the store's

    assert (await reap_until(queue, "a")).requeued == ["a"]
    queued = await store.get_job("a")
    assert queued is not None and (queued["status"], queued["started_at"], queued["attempts"]) == (
        "queued",
        None,
        1,
    )
    # The frozen worker comes back: its renew and its finish match no row, and nothing is written.
    assert (await queue.renew("a", 1, 60.0)).lost
    with pytest.raises(LeaseLost):
        await finish_done(queue, "a", 1)
    assert await store.get_job("a") == queued
    assert (await store.step_timings("a"), await store.phase_timings("a")) == ([], {})

    second = await queue.claim("w2", "cuda:1", 60.0)
    assert second is not None and (second.job_id, second.attempt, second.job["device"]) == ("a", 2, "cuda:1")
    running = await store.get_job("a")
    with pytest.raises(LeaseLost):
        await finish_done(queue, "a", 1)  # still stale while attempt 2 runs
    with pytest.raises(LeaseLost):
        await queue.requeue("a", 1)
    assert await store.get_job("a") == running
    assert await store.step_timings("a") == []

    renewal = await queue.renew("a", 2, 60.0)
    assert not renewal.lost and not renewal.cancel_requested
    assert renewal.lease_until is not None and renewal.lease_until >= second.lease_until
    await finish_done(queue, "a", 2)
    done = await store.get_job("a")
    assert done is not None and (done["status"], done["images"], done["attempts"]) == ("done", ["a-0.png"], 2)
    assert await store.step_timings("a") == [0.2, 0.1]
    assert await store.phase_timings("a") == {"decoding": 0.05, "denoising": 0.3}
    assert (await queue.renew("a", 2, 60.0)).lost  # an ended job has no lease left to renew


async def test_after_the_attempt_limit_a_job_whose_lease_ran_out_fails_with_the_reason(
    store: PgStore, queue: PgQueue
) -> None:
    await store.insert_job(row("b", 100.0))
    await store.insert_job(row("later", 200.0))
    for attempt in (1, 2):
        claim = await queue.claim("w1", "cuda:0", TINY)
        assert claim is not None and (claim.job_id, claim.attempt) == ("b", attempt)
        reaped = await reap_until(queue, "b")
    assert (reaped.requeued, reaped.failed, reaped.cancelled) == ([], ["b"], [])
    job = await store.get_job("b")
    assert job is not None and (job["status"], job["error"], job["attempts"]) == ("failed", REASON, 2)
    assert job["finished_at"] is not None and job["finished_at"] >= job["started_at"]
    assert await queue.waiting() == ["later"]
    with pytest.raises(LeaseLost):
        await finish_done(queue, "b", 2)
    assert await store.step_timings("b") == []


async def test_a_renewed_lease_is_kept_even_after_it_ran_out_if_nobody_reaped_it(
    store: PgStore, queue: PgQueue, postgres_url: str
) -> None:
    await store.insert_job(row("a", 100.0))
    claim = await queue.claim("w1", "cuda:0", TINY)
    assert claim is not None
    # Both times of a claim come from one clock, the database's.
    assert claim.lease_until - claim.job["started_at"] == pytest.approx(TINY, abs=1e-4)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:

        async def ran_out() -> bool:
            cursor = await conn.execute("SELECT lease_until < now() FROM jobs WHERE id = 'a'")
            found = await cursor.fetchone()
            return bool(found and found[0])

        await until(ran_out, "the lease to run out")
    renewal = await queue.renew("a", 1, 60.0)
    assert not renewal.lost
    assert await queue.reap(2, REASON) == Reaped([], [], [])
    (running,) = await queue.running()
    assert (running.job_id, running.worker, running.device, running.attempt) == ("a", "w1", "cuda:0", 1)
    assert running.lease_until == renewal.lease_until


# Run in two processes at once: each waits at a gate (an advisory lock the test holds), then reaps.
REAPER = """
import asyncio, json, sys
import psycopg
from zimage_sse.db.leases import PgQueue
from zimage_sse.db.postgres import PgStore

async def main(url: str) -> None:
    store = await PgStore.open(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as gate:
        await gate.execute("SELECT pg_advisory_lock_shared(%s)", (GATE,))
        reaped = await PgQueue(store).reap(2, "reaped")
    await store.close()
    print(json.dumps(reaped.requeued))

asyncio.run(main(sys.argv[1]))
"""
GATE = 0x6C65617365


def test_two_processes_reaping_at_once_take_each_job_back_once(postgres_url: str) -> None:
    jobs = [f"j{n:03d}" for n in range(100)]

    async def claim_all() -> None:
        store = await PgStore.open(postgres_url)
        try:
            for n, job_id in enumerate(jobs):
                await store.insert_job(row(job_id, 100.0 + n))
                assert await PgQueue(store).claim("frozen", "cuda:0", TINY) is not None
        finally:
            await store.close()

    asyncio.run(claim_all())
    with psycopg.connect(postgres_url, autocommit=True) as gate:
        deadline = time.monotonic() + WAIT_S
        live = "SELECT count(*) FROM jobs WHERE status = 'running' AND lease_until >= now()"
        while gate.execute(live).fetchone() != (0,):
            assert time.monotonic() < deadline, "the leases did not run out"
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        script = REAPER.replace("GATE", str(GATE))
        reapers = [
            subprocess.Popen(
                [sys.executable, "-c", script, postgres_url], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        try:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            deadline = time.monotonic() + 120
            while gate.execute(waiting).fetchone() != (2,):
                assert all(p.poll() is None for p in reapers), "a reaper exited before the gate opened"
                assert time.monotonic() < deadline, "the reapers did not reach the gate"
                time.sleep(0.05)  # polling the server for the reapers' arrival, not standing in for it
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
            outputs = [p.communicate(timeout=120)[0] for p in reapers]
        finally:
            for p in reapers:
                p.kill()
        assert [p.returncode for p in reapers] == [0, 0]
        first, second = (json.loads(out) for out in outputs)
        assert not set(first) & set(second), "a job was taken back by both reapers"
        assert sorted(first + second) == jobs
        rows = gate.execute("SELECT status, attempts, count(*) FROM jobs GROUP BY 1, 2").fetchall()
        assert rows == [("queued", 1, len(jobs))]  # the attempt was counted once, by its claim


async def test_cancel_ends_a_queued_job_at_once_and_flags_a_running_one(
    store: PgStore, queue: PgQueue
) -> None:
    await store.insert_job(row("q", 100.0))
    await store.insert_job(row("r", 101.0))
    claim = await queue.claim("w1", "cuda:0", 60.0, "r")  # the planner chose r
    assert claim is not None and claim.job_id == "r"

    assert await queue.request_cancel("q") == CancelOutcome.CANCELLED
    job = await store.get_job("q")
    assert job is not None and (job["status"], job["error"]) == ("cancelled", CANCELLED_QUEUED)
    assert job["finished_at"] is not None
    assert await queue.claim("w1", "cuda:1", 60.0, "q") is None
    assert await queue.claim("w1", "cuda:1", 60.0) is None

    assert await queue.request_cancel("r") == CancelOutcome.REQUESTED
    job = await store.get_job("r")
    assert job is not None and job["status"] == "running"  # until its worker stops it
    renewal = await queue.renew("r", 1, 60.0)
    assert renewal.cancel_requested and not renewal.lost
    assert [r.cancel_requested for r in await queue.running()] == [True]
    await queue.finish("r", 1, status="cancelled", finished_at=time.time(), error=CANCELLED_RUNNING)
    assert await queue.request_cancel("r") == CancelOutcome.ENDED
    assert await queue.request_cancel("missing") == CancelOutcome.NOT_FOUND


async def test_a_pending_cancel_is_kept_when_the_worker_dies_or_stops(store: PgStore, queue: PgQueue) -> None:
    await store.insert_job(row("dies", 100.0))
    await store.insert_job(row("stops", 101.0))
    assert await queue.claim("w1", "cuda:0", TINY, "dies") is not None
    assert await queue.claim("w2", "cuda:0", 60.0, "stops") is not None
    assert await queue.request_cancel("dies") == CancelOutcome.REQUESTED
    assert await queue.request_cancel("stops") == CancelOutcome.REQUESTED
    reaped = await reap_until(queue, "dies")
    assert (reaped.requeued, reaped.failed, reaped.cancelled) == ([], [], ["dies"])
    assert await queue.requeue("stops", 1) == "cancelled"
    for job_id in ("dies", "stops"):
        job = await store.get_job(job_id)
        assert job is not None and (job["status"], job["error"]) == ("cancelled", CANCELLED_RUNNING)
    assert await queue.waiting() == []


async def test_a_job_given_back_at_shutdown_runs_first_without_using_an_attempt(
    store: PgStore, queue: PgQueue
) -> None:
    for n, job_id in enumerate(("a", "b", "c")):
        await store.insert_job(row(job_id, 100.0 + n))
    assert await queue.claim("w1", "cuda:0", 60.0, "c") is not None
    assert await queue.claim("w1", "cuda:1", 60.0, "b") is not None
    assert await queue.claim("w1", "cuda:2", 60.0, "b") is None  # taken already
    assert await queue.requeue("c", 1) == "queued"
    assert await queue.waiting() == ["c", "a"]
    assert await queue.requeue("b", 1) == "queued"
    # As the embedded queue's put(front=True): the job given back last runs first.
    assert await queue.waiting() == ["b", "c", "a"]
    job = await store.get_job("c")
    assert job is not None and (job["status"], job["started_at"], job["attempts"]) == ("queued", None, 0)
    with pytest.raises(LeaseLost):
        await queue.requeue("c", 1)  # it is queued: nothing to give back
    claim = await queue.claim("w2", "cuda:0", 60.0)
    assert claim is not None and (claim.job_id, claim.attempt) == ("b", 1)
    assert await queue.waiting() == ["c", "a"]
    assert [(r.job_id, r.worker) for r in await queue.running()] == [("b", "w2")]


async def test_a_lease_must_last(queue: PgQueue) -> None:
    with pytest.raises(ValueError, match="more than 0 s"):
        await queue.claim("w1", "cuda:0", 0.0)
    with pytest.raises(ValueError, match="more than 0 s"):
        await queue.renew("a", 1, -1.0)
