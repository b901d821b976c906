"""The report queries of the store (zimage_sse/reports.py makes the tables from their rows), written
once for every backend (the SQL dialect SQLite and PostgreSQL share, `?` placeholders)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReportFilter:
    """What the reports read: one model, one device, and a window of Unix times (`since` included,
    `before` not) on each table's own clock: when a job ended, when a model loaded. None is any."""

    model: str | None = None
    device: str | None = None
    since: float | None = None
    before: float | None = None


def report_where(scope: ReportFilter, time_column: str, alias: str = "") -> tuple[str, list[Any]]:
    """SQL conditions (joined with AND, "1 = 1" when none: PostgreSQL wants a boolean) and their
    parameters."""
    conditions, params = ["1 = 1"], list[Any]()
    for column, value in (("model", scope.model), ("device", scope.device)):
        if value is not None:
            conditions.append(f"{alias}{column} = ?")
            params.append(value)
    if scope.since is not None:
        conditions.append(f"{alias}{time_column} >= ?")
        params.append(scope.since)
    if scope.before is not None:
        conditions.append(f"{alias}{time_column} < ?")
        params.append(scope.before)
    return " AND ".join(conditions), params


def steps_by_job(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Step seconds by job id, in the order of the rows (ordered by step)."""
    steps: dict[str, list[float]] = {}
    for row in rows:
        steps.setdefault(row["job_id"], []).append(float(row["seconds"]))
    return steps


def phases_by_job(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Phase seconds by job id and phase."""
    phases: dict[str, dict[str, float]] = {}
    for row in rows:
        phases.setdefault(row["job_id"], {})[row["phase"]] = float(row["seconds"])
    return phases


class ReportQueries(ABC):
    """What the reports read, each in scope of a ReportFilter; part of every JobStore."""

    @abstractmethod
    async def _select(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Rows of one read, as dicts (a JSON `images` column decoded)."""

    async def report_jobs(self, scope: ReportFilter) -> list[dict[str, Any]]:
        """Ended jobs (done, failed, cancelled) that ended in scope, with their size and GPU readings,
        in the order they ended."""
        where, params = report_where(scope, "finished_at", "j.")
        return await self._select(
            "SELECT j.id, j.status, j.finished_at, j.model, j.device, j.dtype, j.width, j.height,"
            " j.num_images, j.warm_up, j.gpu_util_start, j.gpu_util_mean, j.gpu_mem_peak_mb FROM jobs j"
            " WHERE j.status IN ('done', 'failed', 'cancelled') AND j.finished_at IS NOT NULL"
            f" AND {where} ORDER BY j.finished_at",
            params,
        )

    async def report_timings(
        self, scope: ReportFilter
    ) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
        """Step seconds (in step order) and phase seconds of each done job that ended in scope, both by
        job id."""
        where, params = report_where(scope, "finished_at", "j.")
        steps = await self._select(
            "SELECT s.job_id, s.step, s.seconds FROM step_timings s JOIN jobs j ON j.id = s.job_id"
            f" WHERE j.status = 'done' AND {where} ORDER BY s.job_id, s.step",
            params,
        )
        phases = await self._select(
            "SELECT p.job_id, p.phase, p.seconds FROM phase_timings p JOIN jobs j ON j.id = p.job_id"
            f" WHERE j.status = 'done' AND {where} ORDER BY p.job_id, p.phase",
            params,
        )
        return steps_by_job(steps), phases_by_job(phases)

    async def report_model_loads(self, scope: ReportFilter) -> list[dict[str, Any]]:
        """Every timed component of the model loads in scope (by when they loaded): load_id, model,
        device, dtype, component, seconds."""
        where, params = report_where(scope, "loaded_at")
        return await self._select(
            "SELECT load_id, model, device, dtype, component, seconds FROM model_loads"
            f" WHERE {where} ORDER BY load_id, component",
            params,
        )

    async def report_eta_predictions(self, scope: ReportFilter) -> list[dict[str, Any]]:
        """Every recorded prediction of the jobs that ended in scope, with the job's actual run time,
        size and end, oldest job first."""
        where, params = report_where(scope, "finished_at", "j.")
        return await self._select(
            "SELECT e.job_id, e.point, e.predicted_total_s, e.actual_total_s, j.width, j.height,"
            " j.num_images, j.finished_at FROM eta_predictions e JOIN jobs j ON j.id = e.job_id"
            f" WHERE {where} ORDER BY j.finished_at, e.point",
            params,
        )

    async def report_model_devices(self) -> list[tuple[str, str]]:
        """Every (model, device) pair that has run a job, in order: what the report filters offer."""
        rows = await self._select(
            "SELECT DISTINCT model, device FROM jobs WHERE device IS NOT NULL ORDER BY model, device", ()
        )
        return [(str(r["model"]), str(r["device"])) for r in rows]
