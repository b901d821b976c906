"""The queue across machines (issue 16): the queued rows of PostgreSQL are the queue, and a worker runs
a job under a lease.

A worker claims a queued job (SKIP LOCKED: two claimers never get the same one), which starts its next
attempt and gives the worker a lease until now + lease_s. While the job makes progress the worker
renews it; a worker that freezes or dies stops renewing, and any process's `reap` takes the job back
once the lease has run out: queued again, or failed after the attempt limit, as recover_interrupted
does for SQLite at start. Every time here is the DATABASE's clock (now()), never a caller's: machines
whose clocks disagree still agree on when a lease ends.

The attempt number tells a current run from a stale one: a worker that was reaped (frozen, then back)
finds that its renew, finish and requeue match no row, so it writes nothing and stops.

Every write holds at most one row lock while it waits (reap skips the locked ones), so no two of these
calls can deadlock.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .postgres import PgStore
from .sql import Tx, shape_row

# What the wiring starts with: a lease outlasts five missed renewals, so a busy database or a long pause
# between two steps is not taken for a dead worker, and a dead worker's job runs again within
# LEASE_S + REAP_EVERY_S.
LEASE_S = 30.0
RENEW_EVERY_S = 5.0
REAP_EVERY_S = 5.0
# The reasons a job ends with when the queue cancels it (the embedded path's words, service/jobs.py).
CANCELLED_QUEUED = "Cancelled before it started."
CANCELLED_RUNNING = "Cancelled while running."

_NOW = "EXTRACT(EPOCH FROM now())::float8"
# The order jobs are claimed in: a job a stopping worker gave back first (the newest such first), then
# by created_at, ties by insertion. migration 002's jobs_queue index holds exactly this order.
_ORDER = "front DESC NULLS LAST, created_at, seq"
_LEASE = "now() + make_interval(secs => ?)"
_CURRENT = "id = ? AND status = 'running' AND attempts = ?"
_CLAIM = (
    "WITH next AS (SELECT id FROM jobs WHERE status = 'queued'{only}"
    f" ORDER BY {_ORDER} LIMIT 1 FOR UPDATE SKIP LOCKED)"
    f" UPDATE jobs SET status = 'running', started_at = {_NOW}, device = ?, dtype = ?, gpu_util_start = ?,"
    f" attempts = attempts + 1, worker = ?, lease_until = {_LEASE}, cancel_requested = false, front = NULL"
    " FROM next WHERE jobs.id = next.id"
    " RETURNING jobs.*, EXTRACT(EPOCH FROM jobs.lease_until)::float8 AS lease_epoch"
)
# One statement decides and writes every expired lease: a job locked by another reaper (or by its
# worker finishing it) is skipped, so concurrent reapers never take the same job back twice.
_REAP = (
    "WITH expired AS (SELECT id, CASE WHEN cancel_requested THEN 'cancelled'"
    " WHEN attempts >= ? THEN 'failed' ELSE 'queued' END AS outcome"
    " FROM jobs WHERE status = 'running' AND lease_until < now() FOR UPDATE SKIP LOCKED),"
    " reaped AS (UPDATE jobs SET status = e.outcome,"
    " started_at = CASE WHEN e.outcome = 'queued' THEN NULL ELSE jobs.started_at END,"
    f" finished_at = CASE WHEN e.outcome = 'queued' THEN NULL ELSE {_NOW} END,"
    " error = CASE e.outcome WHEN 'cancelled' THEN ? WHEN 'failed' THEN ? END"
    " FROM expired e WHERE jobs.id = e.id RETURNING jobs.id, jobs.status, jobs.created_at, jobs.seq)"
    " SELECT id, status FROM reaped ORDER BY created_at, seq"
)
_CANCEL = f"UPDATE jobs SET status = 'cancelled', finished_at = {_NOW}, error = ? WHERE id = ?"


class LeaseLost(RuntimeError):
    """The job no longer runs this attempt: its lease ran out and another process took it back (and
    perhaps gave it to another worker). The worker stops; nothing it had was written."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"job {job_id}: attempt {attempt} lost its lease")
        self.job_id = job_id
        self.attempt = attempt


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it was queued: it ended at once
    REQUESTED = "requested"  # it runs: its worker sees the flag at its next renewal at the latest
    ENDED = "ended"  # it had ended already
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Claim:
    """A job a worker now runs: its row as the store returns it, the attempt the worker holds it by,
    and when the lease ends (epoch seconds, by the database's clock)."""

    job: dict[str, Any]
    attempt: int
    lease_until: float

    @property
    def job_id(self) -> str:
        return str(self.job["id"])


@dataclass(frozen=True)
class Renewal:
    """`lost`: the attempt no longer runs (the worker stops); `cancel_requested`: someone cancelled the
    job (the worker stops it as cancelled); `lease_until`: the renewed lease's end, None when lost."""

    lost: bool
    cancel_requested: bool
    lease_until: float | None


@dataclass(frozen=True)
class Running:
    job_id: str
    worker: str
    device: str
    attempt: int
    lease_until: float
    cancel_requested: bool


@dataclass(frozen=True)
class Reaped:
    """The jobs whose lease ran out, each in created order: queued again, failed after the attempt
    limit, or cancelled (a cancel was pending for it: it is not run again)."""

    requeued: list[str]
    failed: list[str]
    cancelled: list[str]


def _valid_lease(lease_s: float) -> float:
    if not lease_s > 0:
        raise ValueError(f"a lease must last more than 0 s, not {lease_s}")
    return float(lease_s)


class PgQueue:
    """The JobQueue on PostgreSQL, for every web process and worker at once. Async, unlike the
    embedded MemoryQueue, since every call is a round trip; it runs on its store's connection pool."""

    def __init__(self, store: PgStore) -> None:
        self._store = store

    def _transaction(self) -> AbstractAsyncContextManager[Tx]:
        # The queue is part of the store's package: it runs its SQL through the store's own seam (the
        # `?` placeholders and NaN handling of every other query).
        return self._store._transaction()

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._transaction() as tx:
            return await tx.select(sql, params)

    # -- the worker's side ---------------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        device: str,
        lease_s: float,
        job_id: str | None = None,
        *,
        dtype: str | None = None,
        gpu_util: float | None = None,
    ) -> Claim | None:
        """Start the next attempt of the first queued job (or of `job_id`, as the planner chose) on this
        worker's device; None when none is queued (or that one is not, or another claimer holds it)."""
        only: tuple[Any, ...] = () if job_id is None else (job_id,)
        sql = _CLAIM.format(only="" if job_id is None else " AND id = ?")
        rows = await self._run(sql, (*only, device, dtype, gpu_util, worker, _valid_lease(lease_s)))
        if not rows:
            return None
        row = rows[0]
        lease_until = float(row.pop("lease_epoch"))
        attempt = int(row["attempts"])
        return Claim(shape_row(row, PgStore._HIDDEN), attempt, lease_until)

    async def renew(self, job_id: str, attempt: int, lease_s: float) -> Renewal:
        """Extend the lease from now, if the job still runs this attempt. A lease that ran out but was
        not reaped yet is extended too: the job was not taken from this worker."""
        rows = await self._run(
            f"UPDATE jobs SET lease_until = {_LEASE} WHERE {_CURRENT}"
            " RETURNING cancel_requested, EXTRACT(EPOCH FROM lease_until)::float8 AS lease_epoch",
            (_valid_lease(lease_s), job_id, attempt),
        )
        if not rows:
            return Renewal(lost=True, cancel_requested=False, lease_until=None)
        return Renewal(False, bool(rows[0]["cancel_requested"]), float(rows[0]["lease_epoch"]))

    async def finish(self, job_id: str, attempt: int, /, **end: Any) -> None:
        """The store's finish_job (its keywords: status, finished_at, timings…), written only if the job
        still runs this attempt; else LeaseLost, and nothing at all is written."""
        if not await self._store.finish_job(job_id, attempt=attempt, **end):
            raise LeaseLost(job_id, attempt)

    async def requeue(self, job_id: str, attempt: int) -> str:
        """A worker stopping for shutdown gives its job back: first in the queue, and the attempt does
        not count (as the embedded store's requeue). A job whose cancel is pending is cancelled instead.
        Returns the job's new status; LeaseLost if the job no longer runs this attempt."""
        async with self._transaction() as tx:
            rows = await tx.select(
                f"SELECT cancel_requested FROM jobs WHERE {_CURRENT} FOR UPDATE", (job_id, attempt)
            )
            if not rows:
                raise LeaseLost(job_id, attempt)
            if rows[0]["cancel_requested"]:
                await tx.execute(_CANCEL, (CANCELLED_RUNNING, job_id))
                return "cancelled"
            await tx.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, attempts = attempts - 1,"
                " front = nextval('jobs_front') WHERE id = ?",
                (job_id,),
            )
            return "queued"

    # -- every process's side ------------------------------------------------------------------------

    async def reap(self, max_attempts: int, reason: str) -> Reaped:
        """Take back every job whose lease ran out by the database's clock: queued again, keeping its
        place by created_at, or failed with `reason` once it has been started `max_attempts` times, or
        cancelled if a cancel was pending. Safe to call from every process at once."""
        rows = await self._run(_REAP, (max_attempts, CANCELLED_RUNNING, reason))
        by_status: dict[str, list[str]] = {"queued": [], "failed": [], "cancelled": []}
        for row in rows:
            by_status[str(row["status"])].append(str(row["id"]))
        return Reaped(by_status["queued"], by_status["failed"], by_status["cancelled"])

    async def request_cancel(self, job_id: str) -> CancelOutcome:
        """Cancel a job wherever it is: a queued one ends now; a running one is flagged for its worker
        (the control message may be lost; the flag comes back with the next renewal either way)."""
        async with self._transaction() as tx:
            rows = await tx.select("SELECT status FROM jobs WHERE id = ? FOR UPDATE", (job_id,))
            if not rows:
                return CancelOutcome.NOT_FOUND
            status = rows[0]["status"]
            if status == "queued":
                await tx.execute(_CANCEL, (CANCELLED_QUEUED, job_id))
                return CancelOutcome.CANCELLED
            if status == "running":
                await tx.execute("UPDATE jobs SET cancel_requested = true WHERE id = ?", (job_id,))
                return CancelOutcome.REQUESTED
            return CancelOutcome.ENDED

    # -- what the planner reads ----------------------------------------------------------------------

    async def waiting(self) -> list[str]:
        """The queued jobs in the order they are claimed."""
        rows = await self._run(f"SELECT id FROM jobs WHERE status = 'queued' ORDER BY {_ORDER}", ())
        return [str(r["id"]) for r in rows]

    async def running(self) -> list[Running]:
        """The running jobs by worker and device. A list, not a mapping: a worker restarted under the same
        name may hold a new job on a device while its old one waits for its lease to run out."""
        rows = await self._run(
            "SELECT id, worker, device, attempts, cancel_requested,"
            " EXTRACT(EPOCH FROM lease_until)::float8 AS lease_epoch FROM jobs WHERE status = 'running'"
            " ORDER BY worker, device, started_at, seq",
            (),
        )
        return [
            Running(
                job_id=str(r["id"]),
                worker=str(r["worker"]),
                device=str(r["device"]),
                attempt=int(r["attempts"]),
                lease_until=float(r["lease_epoch"]),
                cancel_requested=bool(r["cancel_requested"]),
            )
            for r in rows
        ]
