"""All SQL lives here and in migrations/: one aiosqlite connection per process, WAL mode.

Timings are written once per job, in one transaction with the job's final status (nothing is
written per step on the hot path). The reports read through the `report_*` methods, which take a
`ReportFilter` and return plain rows (zimage_sse/reports.py makes the tables).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from .reports import ReportFilter, ReportQueries, phases_by_job, steps_by_job

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
# The newest finished jobs that ran on a known device: what the ETA engine learns from.
_RECENT_DONE = (
    "SELECT id FROM jobs WHERE status = 'done' AND device IS NOT NULL ORDER BY finished_at DESC LIMIT ?"
)
_MIGRATION_NAME = re.compile(r"^(\d{3})_[\w-]+\.sql$")

JOB_COLUMNS = (
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "status",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance",
    "seed",
    "num_images",
    "model",
    "device",
    "dtype",
    "warm_up",
    "error",
    "images",
)


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations in {directory} must be numbered 001, 002, … without gaps: {numbers}")
    return found


def _job_filter(
    status: str | None, search: str | None, size: tuple[int, int] | None
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause the history's filters make, and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if search:
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("prompt LIKE ? ESCAPE '\\'")
        params.append(f"%{escaped}%")
    if size is not None:
        clauses.append("width = ? AND height = ?")
        params.extend(size)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


class Store(ReportQueries):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: Path, migrations_dir: Path = MIGRATIONS_DIR) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")
        store = cls(conn)
        try:
            await store.migrate(migrations_dir)
        except BaseException:
            await conn.close()
            raise
        return store

    @classmethod
    async def open_readonly(cls, path: Path) -> Store:
        """An existing database, read only and unmigrated: `zimage-sse report` must never change it."""
        conn = await aiosqlite.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        return cls(conn)

    async def close(self) -> None:
        await self._conn.close()

    async def schema_version(self) -> int:
        async with self._conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self, directory: Path = MIGRATIONS_DIR) -> int:
        """Apply every migration newer than PRAGMA user_version, each in its own transaction."""
        current = await self.schema_version()
        for number, path in migrations(directory):
            if number <= current:
                continue
            script = path.read_text()
            # executescript commits first; BEGIN … COMMIT makes the migration and its version one unit,
            # and a failing statement rolls back what the script did before it.
            try:
                await self._conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except BaseException:
                await self._conn.rollback()
                raise
            current = number
        return current

    async def insert_job(self, row: Mapping[str, Any]) -> None:
        values = {c: row.get(c) for c in JOB_COLUMNS}
        values["images"] = json.dumps(list(row.get("images") or []))
        names = ", ".join(JOB_COLUMNS)
        marks = ", ".join(f":{c}" for c in JOB_COLUMNS)
        await self._conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", values)
        await self._conn.commit()

    async def mark_started(
        self, job_id: str, started_at: float, device: str, dtype: str, gpu_util: float | None = None
    ) -> None:
        await self._conn.execute(
            "UPDATE jobs SET status = 'running', started_at = ?, device = ?, dtype = ?, gpu_util_start = ?,"
            " attempts = attempts + 1 WHERE id = ?",
            (started_at, device, dtype, gpu_util, job_id),
        )
        await self._conn.commit()

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
    ) -> None:
        """The job's end state and all of its timings, in one transaction."""
        try:
            await self._conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, images = ?, warm_up = ?,"
                " first_of_size = ?, gpu_util_mean = ?, gpu_mem_peak_mb = ? WHERE id = ?",
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
                ),
            )
            await self._conn.executemany(
                "INSERT INTO step_timings (job_id, step, seconds) VALUES (?, ?, ?)",
                [(job_id, index, seconds) for index, seconds in enumerate(step_s, start=1)],
            )
            await self._conn.executemany(
                "INSERT INTO phase_timings (job_id, phase, seconds) VALUES (?, ?, ?)",
                [(job_id, phase, seconds) for phase, seconds in (phases or {}).items()],
            )
            if eta_points and actual_total_s is not None:
                await self._conn.executemany(
                    "INSERT INTO eta_predictions (job_id, point, predicted_total_s, actual_total_s)"
                    " VALUES (?, ?, ?, ?)",
                    [(job_id, point, total, actual_total_s) for point, total in eta_points.items()],
                )
            await self._conn.commit()
        except BaseException:
            await self._conn.rollback()
            raise

    async def recover_interrupted(
        self, finished_at: float, max_attempts: int, reason: str
    ) -> tuple[list[str], list[str]]:
        """At start, the jobs the last process left running (it was killed or crashed): each is queued
        again, keeping its place by created_at, unless it has been started `max_attempts` times, in which
        case it fails with `reason` instead of looping. Returns (requeued ids, failed ids)."""
        try:
            failed = await self._select(
                "SELECT id FROM jobs WHERE status = 'running' AND attempts >= ?", (max_attempts,)
            )
            await self._conn.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?"
                " WHERE status = 'running' AND attempts >= ?",
                (finished_at, reason, max_attempts),
            )
            requeued = await self._select("SELECT id FROM jobs WHERE status = 'running'", ())
            await self._conn.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running'"
            )
            await self._conn.commit()
        except BaseException:
            await self._conn.rollback()
            raise
        return [r["id"] for r in requeued], [r["id"] for r in failed]

    async def requeue(self, job_id: str) -> None:
        """A job that shutdown stopped goes back to the queue; being stopped does not count as an attempt."""
        await self._conn.execute(
            "UPDATE jobs SET status = 'queued', started_at = NULL, attempts = MAX(0, attempts - 1)"
            " WHERE id = ? AND status = 'running'",
            (job_id,),
        )
        await self._conn.commit()

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
        """Jobs newest first; `search` matches prompt text literally (% and _ are not wildcards)."""
        where, params = _job_filter(status, search, size)
        return await self._select(
            f"SELECT * FROM jobs{where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )

    async def count_jobs(
        self, *, status: str | None = None, search: str | None = None, size: tuple[int, int] | None = None
    ) -> int:
        where, params = _job_filter(status, search, size)
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
            " WHERE status IN ('done', 'failed', 'cancelled') ORDER BY created_at DESC, rowid DESC",
            (),
        )

    async def mark_pruned(self, job_ids: Sequence[str], pruned_at: float) -> None:
        """Retention removed these jobs' images; their rows and timings stay."""
        await self._conn.executemany(
            "UPDATE jobs SET pruned_at = ?, images = '[]' WHERE id = ?",
            [(pruned_at, job_id) for job_id in job_ids],
        )
        await self._conn.commit()

    async def delete_jobs(self, job_ids: Sequence[str]) -> int:
        """Delete ended jobs with their timings (ON DELETE CASCADE); a live job is never deleted here."""
        cursor = await self._conn.executemany(
            "DELETE FROM jobs WHERE id = ? AND status IN ('done', 'failed', 'cancelled')",
            [(job_id,) for job_id in job_ids],
        )
        await self._conn.commit()
        return cursor.rowcount

    async def queued_jobs(self) -> list[dict[str, Any]]:
        return await self._select("SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid", ())

    async def step_timings(self, job_id: str) -> list[float]:
        rows = await self._select(
            "SELECT seconds FROM step_timings WHERE job_id = ? ORDER BY step", (job_id,)
        )
        return [float(r["seconds"]) for r in rows]

    async def phase_timings(self, job_id: str) -> dict[str, float]:
        rows = await self._select("SELECT phase, seconds FROM phase_timings WHERE job_id = ?", (job_id,))
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
        query = f"SELECT job_id, phase, seconds FROM phase_timings WHERE job_id IN ({_RECENT_DONE})"
        phases = phases_by_job(await self._select(query, (limit,)))
        for job in jobs:
            job["step_s"] = steps.get(job["id"], [])
            job["phases"] = phases.get(job["id"], {})
        return jobs

    async def record_model_load(
        self,
        load_id: str,
        loaded_at: float,
        model: str,
        device: str,
        dtype: str,
        timings: Mapping[str, float],
    ) -> None:
        await self._conn.executemany(
            "INSERT INTO model_loads (load_id, loaded_at, model, device, dtype, component, seconds)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(load_id, loaded_at, model, device, dtype, name, seconds) for name, seconds in timings.items()],
        )
        await self._conn.commit()

    async def model_load_totals(self, limit: int = 200) -> list[dict[str, Any]]:
        """Whole-model load times (the sum of its components), newest `limit` loads, oldest first."""
        rows = await self._select(
            "SELECT model, device, dtype, SUM(seconds) AS seconds, MAX(loaded_at) AS loaded_at"
            " FROM model_loads GROUP BY load_id ORDER BY loaded_at DESC LIMIT ?",
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


__all__ = ["JOB_COLUMNS", "MIGRATIONS_DIR", "ReportFilter", "Store", "migrations"]
