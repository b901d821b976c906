"""The JobStore: every query of the job history written once, over a small per-backend seam.

SQLite (`sqlite.Store`) and PostgreSQL (`postgres.PgStore`) differ only in how they connect, migrate,
run a transaction, keep insertion order and search text; the SQL here is written with `?` placeholders
in the subset both dialects share, so both backends answer every query with the same rows.

Timings are written once per job, in one transaction with the job's final status (nothing is written
per step on the hot path).
"""

from __future__ import annotations

import asyncio
import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, ClassVar

from .reports import ReportQueries, phases_by_job, steps_by_job
from .sql import JOB_COLUMNS, Tx, migrations, shape_row

# The newest finished jobs that ran on a known device: what the ETA engine learns from.
_RECENT_DONE = (
    "SELECT id FROM jobs WHERE status = 'done' AND device IS NOT NULL ORDER BY finished_at DESC LIMIT ?"
)


class JobStore(ReportQueries):
    """Jobs, their timings, model loads and the report queries; a backend supplies the seam below."""

    # Breaks ties of created_at by insertion order (SQLite's rowid; PostgreSQL has none of its own).
    _ORDER: ClassVar[str]
    # Columns a backend keeps for itself and leaves out of the rows it returns.
    _HIDDEN: ClassVar[frozenset[str]] = frozenset()
    # Appended to the SELECT that recovery reads the running jobs with, to hold them until it commits.
    _LOCK_ROWS: ClassVar[str] = ""
    # Where the backend's migrations are.
    MIGRATIONS: ClassVar[Path]

    # -- the seam ----------------------------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def schema_version(self) -> int:
        """The number of the newest migration applied (0: none)."""

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows of one read, as the database gives them."""

    @abstractmethod
    def _transaction(self, exclusive: bool = False) -> AbstractAsyncContextManager[Tx]:
        """Commits when the block ends, rolls back when it raises. `exclusive`: no other store on the
        database runs an exclusive transaction at the same time (migrations)."""

    @abstractmethod
    def _search(self, text: str) -> tuple[str, str]:
        """The condition that matches a prompt containing `text` as SQLite's LIKE does, and its one
        parameter."""

    @abstractmethod
    async def _migration_version(self, tx: Tx) -> int:
        """Inside an exclusive transaction: the version applied, creating what tracks it if needed."""

    @abstractmethod
    async def _apply_migration(self, tx: Tx, number: int, name: str, script: str) -> None:
        """Run one migration's script and record its number, in the transaction given."""

    # -- migrations --------------------------------------------------------------------------------

    async def migrate(self, directory: Path | None = None) -> int:
        """Apply every migration newer than the database's version, each in its own exclusive
        transaction, so two processes starting at once apply each migration once."""
        found = migrations(directory or self.MIGRATIONS)
        current = await self.schema_version()
        for number, path in found:
            if number <= current:
                continue
            script = await asyncio.to_thread(path.read_text)
            async with self._transaction(exclusive=True) as tx:
                # Another process may have applied it while this one waited for the lock.
                current = await self._migration_version(tx)
                if number > current:
                    await self._apply_migration(tx, number, path.name, script)
                    current = number
        return current

    # -- reads -------------------------------------------------------------------------------------

    async def _select(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        return [shape_row(row, self._HIDDEN) for row in await self._fetch(sql, params)]

    def _job_filter(
        self, status: str | None, search: str | None, size: tuple[int, int] | None
    ) -> tuple[str, tuple[Any, ...]]:
        """The WHERE clause the history's filters make, and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if search:
            clause, pattern = self._search(search)
            clauses.append(clause)
            params.append(pattern)
        if size is not None:
            clauses.append("width = ? AND height = ?")
            params.extend(size)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._select("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    async def list_jobs(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        status: str | None = None,
        search: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs newest first; `search` matches prompt text literally (% and _ are not wildcards), the
        case of ASCII letters ignored."""
        where, params = self._job_filter(status, search, size)
        return await self._select(
            f"SELECT * FROM jobs{where} ORDER BY created_at DESC, {self._ORDER} DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )

    async def count_jobs(
        self, *, status: str | None = None, search: str | None = None, size: tuple[int, int] | None = None
    ) -> int:
        where, params = self._job_filter(status, search, size)
        rows = await self._select(f"SELECT COUNT(*) AS n FROM jobs{where}", params)
        return int(rows[0]["n"])

    async def job_sizes(self) -> list[tuple[int, int]]:
        """Every size in the history, most used first: the history page's size filter offers these."""
        rows = await self._select(
            "SELECT width, height FROM jobs GROUP BY width, height ORDER BY COUNT(*) DESC, width, height", ()
        )
        return [(int(r["width"]), int(r["height"])) for r in rows]

    async def ended_jobs(self) -> list[dict[str, Any]]:
        """What retention decides on: every ended job, newest first (running and queued ones never)."""
        return await self._select(
            "SELECT id, created_at, status, images, pruned_at FROM jobs"
            f" WHERE status IN ('done', 'failed', 'cancelled') ORDER BY created_at DESC, {self._ORDER} DESC",
            (),
        )

    async def queued_jobs(self) -> list[dict[str, Any]]:
        return await self._select(
            f"SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, {self._ORDER}", ()
        )

    async def step_timings(self, job_id: str) -> list[float]:
        rows = await self._select(
            "SELECT seconds FROM step_timings WHERE job_id = ? ORDER BY step", (job_id,)
        )
        return [float(r["seconds"]) for r in rows]

    async def phase_timings(self, job_id: str) -> dict[str, float]:
        rows = await self._select(
            "SELECT phase, seconds FROM phase_timings WHERE job_id = ? ORDER BY phase", (job_id,)
        )
        return {str(r["phase"]): float(r["seconds"]) for r in rows}

    async def timing_history(self, limit: int = 5000) -> list[dict[str, Any]]:
        """The newest `limit` finished jobs with their step and phase timings, oldest first."""
        jobs = await self._select(
            "SELECT id, model, device, dtype, width, height, num_images, warm_up, first_of_size,"
            " gpu_util_start"
            f" FROM jobs WHERE id IN ({_RECENT_DONE}) ORDER BY finished_at",
            (limit,),
        )
        query = (
            f"SELECT job_id, seconds FROM step_timings WHERE job_id IN ({_RECENT_DONE}) ORDER BY job_id, step"
        )
        steps = steps_by_job(await self._select(query, (limit,)))
        query = (
            f"SELECT job_id, phase, seconds FROM phase_timings WHERE job_id IN ({_RECENT_DONE})"
            " ORDER BY job_id, phase"
        )
        phases = phases_by_job(await self._select(query, (limit,)))
        for job in jobs:
            job["step_s"] = steps.get(job["id"], [])
            job["phases"] = phases.get(job["id"], {})
        return jobs

    async def model_load_totals(self, limit: int = 200) -> list[dict[str, Any]]:
        """Whole-model load times (the sum of its components), newest `limit` loads, oldest first."""
        rows = await self._select(
            "SELECT model, device, dtype, SUM(seconds) AS seconds, MAX(loaded_at) AS loaded_at"
            " FROM model_loads GROUP BY load_id, model, device, dtype ORDER BY loaded_at DESC LIMIT ?",
            (limit,),
        )
        rows.reverse()
        return rows

    async def eta_accuracy_rows(self) -> list[dict[str, Any]]:
        """Every recorded prediction with its job's actual run time and size, oldest job first."""
        return await self._select(
            "SELECT e.job_id, e.point, e.predicted_total_s, e.actual_total_s, j.width, j.height,"
            " j.num_images, j.finished_at FROM eta_predictions e JOIN jobs j ON j.id = e.job_id"
            " ORDER BY j.finished_at, e.point",
            (),
        )

    # -- writes ------------------------------------------------------------------------------------

    async def insert_job(self, row: Mapping[str, Any]) -> None:
        values = [row.get(c) for c in JOB_COLUMNS]
        values[JOB_COLUMNS.index("images")] = json.dumps(list(row.get("images") or []))
        marks = ", ".join("?" for _ in JOB_COLUMNS)
        async with self._transaction() as tx:
            await tx.execute(f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({marks})", values)

    async def mark_started(
        self, job_id: str, started_at: float, device: str, dtype: str, gpu_util: float | None = None
    ) -> None:
        async with self._transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, device = ?, dtype = ?,"
                " gpu_util_start = ?, attempts = attempts + 1 WHERE id = ?",
                (started_at, device, dtype, gpu_util, job_id),
            )

    async def finish_job(
        self,
        job_id: str,
        *,
        status: str,
        finished_at: float,
        error: str | None = None,
        images: Sequence[str] = (),
        step_s: Sequence[float] = (),
        phases: Mapping[str, float] | None = None,
        warm_up: bool | None = None,
        first_of_size: bool | None = None,
        gpu_util_mean: float | None = None,
        gpu_mem_peak_mb: float | None = None,
        eta_points: Mapping[float, float | None] | None = None,
        actual_total_s: float | None = None,
        attempt: int | None = None,
    ) -> bool:
        """The job's end state and all of its timings, in one transaction. With `attempt`, only if the job
        still runs that attempt: a worker that lost its lease (db/leases.py) writes nothing. Returns
        whether it wrote."""
        guard = "" if attempt is None else " AND status = 'running' AND attempts = ?"
        async with self._transaction() as tx:
            changed = await tx.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, images = ?, warm_up = ?,"
                f" first_of_size = ?, gpu_util_mean = ?, gpu_mem_peak_mb = ? WHERE id = ?{guard}",
                (
                    status,
                    finished_at,
                    error,
                    json.dumps(list(images)),
                    None if warm_up is None else int(warm_up),
                    None if first_of_size is None else int(first_of_size),
                    gpu_util_mean,
                    gpu_mem_peak_mb,
                    job_id,
                    *(() if attempt is None else (attempt,)),
                ),
            )
            if attempt is not None and not changed:
                return False
            await tx.executemany(
                "INSERT INTO step_timings (job_id, step, seconds) VALUES (?, ?, ?)",
                [(job_id, index, seconds) for index, seconds in enumerate(step_s, start=1)],
            )
            await tx.executemany(
                "INSERT INTO phase_timings (job_id, phase, seconds) VALUES (?, ?, ?)",
                [(job_id, phase, seconds) for phase, seconds in (phases or {}).items()],
            )
            if eta_points and actual_total_s is not None:
                await tx.executemany(
                    "INSERT INTO eta_predictions (job_id, point, predicted_total_s, actual_total_s)"
                    " VALUES (?, ?, ?, ?)",
                    [(job_id, point, total, actual_total_s) for point, total in eta_points.items()],
                )
        return True

    async def recover_interrupted(
        self, finished_at: float, max_attempts: int, reason: str
    ) -> tuple[list[str], list[str]]:
        """At start, the jobs the last process left running (it was killed or crashed): each is queued
        again, keeping its place by created_at, unless it has been started `max_attempts` times, in which
        case it fails with `reason` instead of looping. Returns (requeued ids, failed ids)."""
        async with self._transaction() as tx:
            running = await tx.select(
                "SELECT id, attempts FROM jobs WHERE status = 'running'"
                f" ORDER BY created_at, {self._ORDER}{self._LOCK_ROWS}",
            )
            failed = [str(r["id"]) for r in running if r["attempts"] >= max_attempts]
            requeued = [str(r["id"]) for r in running if r["attempts"] < max_attempts]
            await tx.executemany(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                [(finished_at, reason, job_id) for job_id in failed],
            )
            await tx.executemany(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE id = ?",
                [(job_id,) for job_id in requeued],
            )
        return requeued, failed

    async def requeue(self, job_id: str) -> None:
        """A job that shutdown stopped goes back to the queue; being stopped does not count as an attempt."""
        async with self._transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL,"
                " attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                " WHERE id = ? AND status = 'running'",
                (job_id,),
            )

    async def mark_pruned(self, job_ids: Sequence[str], pruned_at: float) -> None:
        """Retention removed these jobs' images; their rows and timings stay."""
        async with self._transaction() as tx:
            await tx.executemany(
                "UPDATE jobs SET pruned_at = ?, images = '[]' WHERE id = ?",
                [(pruned_at, job_id) for job_id in job_ids],
            )

    async def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """Delete ended jobs with their timings (ON DELETE CASCADE); a live job is never deleted here."""
        async with self._transaction() as tx:
            return await tx.executemany(
                "DELETE FROM jobs WHERE id = ? AND status IN ('done', 'failed', 'cancelled')",
                [(job_id,) for job_id in job_ids],
            )

    async def record_model_load(
        self,
        load_id: str,
        loaded_at: float,
        model: str,
        device: str,
        dtype: str,
        timings: Mapping[str, float],
    ) -> None:
        async with self._transaction() as tx:
            await tx.executemany(
                "INSERT INTO model_loads (load_id, loaded_at, model, device, dtype, component, seconds)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (load_id, loaded_at, model, device, dtype, name, seconds)
                    for name, seconds in timings.items()
                ],
            )
