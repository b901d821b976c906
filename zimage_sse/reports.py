"""Reports: what the history says about step times, phases, model loads, ETA accuracy, throughput and
the GPU, for the /reports page, the /api/reports JSON and CSV, and `zimage-sse report`.

Every report is a flat table (columns and rows) so that the JSON, the CSV and the terminal show the same
numbers. Timings are written when a job ends (zimage_sse/db), so only ended jobs count, and only done ones for
timings (a cancelled job's steps stop early). Dates and periods are UTC. Step-time spreads leave each
job's first step out, as the ETA engine does (it carries set-up costs, DESIGN.md "Timing truth"); the
per-step profile keeps it, since showing it is the point.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .db import JobStore, ReportFilter
from .estimate import accuracy_report
from .eta import ACCURACY_POINTS, EtaModel, Key, size_label, steady, tokens
from .params import InvalidRequest
from .progress import median
from .service import job_record
from .speed import SPEED_COLUMNS, speed_by_period

BUCKETS = ("day", "hour")
PHASES = ("encoding", "denoising", "decoding", "saving")
ENDED = ("done", "failed", "cancelled")
MAX_FILTER_CHARS = 1000
SERIES_COLUMNS = ("model", "device", "dtype")
SECTIONS = ("step-times", "step-profile", "phases", "loads", "eta-accuracy", "speed", "throughput", "gpu")
POINTS = tuple(f"{round(p * 100)}%" for p in ACCURACY_POINTS)
_ETA_COLUMNS = ("scope", "group", "point", "mape_percent", "jobs", "none")


@dataclass(frozen=True)
class Filters:
    """Which jobs a report covers: a model, a device, ended between two UTC dates (both included)."""

    model: str | None = None
    device: str | None = None
    since: date | None = None
    until: date | None = None
    bucket: str = "day"  # throughput periods

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for links that keep them), the unset ones left out."""
        values = {"model": self.model, "device": self.device, "since": self.since, "until": self.until}
        found = {k: str(v) for k, v in values.items() if v is not None}
        if self.bucket != "day":
            found["bucket"] = self.bucket
        return found

    def store_filter(self) -> ReportFilter:
        """The filters as the store reads them: each date as the Unix time its UTC day starts, and
        `until` as the start of the day after it, so that the whole day is in."""
        return ReportFilter(
            model=self.model,
            device=self.device,
            since=None if self.since is None else _midnight(self.since),
            before=None if self.until is None else _midnight(self.until + timedelta(days=1)),
        )


def parse_filters(values: Mapping[str, str | None]) -> Filters:
    """Filters from query parameters or command-line options; InvalidRequest names each bad field."""
    errors: dict[str, str] = {}
    found: dict[str, Any] = {}
    for name in ("model", "device"):
        value = (values.get(name) or "").strip()
        if len(value) > MAX_FILTER_CHARS:
            errors[name] = f"must be at most {MAX_FILTER_CHARS} characters"
        elif value:
            found[name] = value
    for name in ("since", "until"):
        value = (values.get(name) or "").strip()
        if not value:
            continue
        try:
            found[name] = date.fromisoformat(value)
        except ValueError:
            errors[name] = "must be a date as YYYY-MM-DD"
    if "since" in found and "until" in found and found["until"] < found["since"]:
        errors["until"] = "must not be before since"
    bucket = (values.get("bucket") or "day").strip()
    if bucket not in BUCKETS:
        errors["bucket"] = f"must be one of {', '.join(BUCKETS)}"
    if errors:
        raise InvalidRequest(errors)
    return Filters(bucket=bucket, **found)


@dataclass(frozen=True)
class Table:
    """One report: its rows share `columns`; `extra` holds what is not a row (fitted curves)."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "columns": list(self.columns),
            "rows": self.rows,
            **self.extra,
        }

    def as_csv(self) -> str:
        """Columns in order; an unknown value is an empty cell, never a zero."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in self.rows)
        return out.getvalue()


Report = dict[str, Table]


async def build(store: JobStore, filters: Filters) -> Report:
    """Every report over the jobs (and model loads) the filters select."""
    scope = filters.store_filter()
    jobs = await store.report_jobs(scope)
    steps, phases = await store.report_timings(scope)
    done = [{**job, "step_s": steps.get(job["id"], []), "phases": phases.get(job["id"], {})} for job in jobs]
    done = [job for job in done if job["status"] == "done"]
    loads = await store.report_model_loads(scope)
    predictions = await store.report_eta_predictions(scope)
    tables = (
        step_times(done),
        step_profile(done),
        phase_breakdown(done),
        model_loads(loads),
        eta_accuracy(predictions),
        device_speed(done, predictions, filters.bucket),
        throughput(jobs, filters.bucket),
        gpu_use(done),
    )
    return {table.name: table for table in tables}


async def choices(store: JobStore) -> dict[str, list[str]]:
    """The models and devices that have run jobs, to offer in the filter form."""
    pairs = await store.report_model_devices()
    return {
        "models": sorted({model for model, _ in pairs}),
        "devices": sorted({device for _, device in pairs}),
    }


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _seconds(value: float | None) -> float | None:
    """Seconds as reports carry them: microseconds are plenty, and None stays None."""
    return None if value is None else round(value, 6)


def _series(job: Mapping[str, Any]) -> Key:
    return (str(job["model"]), str(job["device"]), str(job["dtype"] or ""))


def _groups(
    jobs: Iterable[Mapping[str, Any]],
) -> dict[tuple[Key, tuple[int, int, int]], list[Mapping[str, Any]]]:
    """Jobs by (model, device, dtype) and size, in that order, sizes by image tokens."""
    groups: dict[tuple[Key, tuple[int, int, int]], list[Mapping[str, Any]]] = {}
    for job in jobs:
        groups.setdefault((_series(job), (job["width"], job["height"], job["num_images"])), []).append(job)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], tokens(*item[0][1]), item[0][1])))


def _row(key: Key, size: tuple[int, int, int]) -> dict[str, Any]:
    return {**dict(zip(SERIES_COLUMNS, key, strict=True)), "size": size_label(*size)}


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Minimum, quartiles, median and maximum (inclusive quartiles: within the observed range)."""
    if not values:
        return {"min_s": None, "q1_s": None, "median_s": None, "q3_s": None, "max_s": None}
    q1, median, q3 = (
        statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    )
    return {
        "min_s": _seconds(min(values)),
        "q1_s": _seconds(q1),
        "median_s": _seconds(median),
        "q3_s": _seconds(q3),
        "max_s": _seconds(max(values)),
    }


def step_times(done: Sequence[Mapping[str, Any]]) -> Table:
    """Steady step time by size, and what the ETA engine's cost model fitted on these jobs predicts."""
    engine = EtaModel(job_record(dict(job)) for job in done if job["step_s"])
    curves: dict[Key, Any] = {}
    rows = []
    for (key, size), group in _groups(done).items():
        values = [s for job in group for s in steady(job["step_s"])]
        if not values:
            continue
        if key not in curves:
            curves[key] = engine.step_curve(key)
        curve = curves[key]
        width, height, batch = size
        rows.append(
            {
                **_row(key, size),
                "tokens": tokens(*size),
                "jobs": len(group),
                "steps": len(values),
                **spread(values),
                # Curves are per image; a batch of n costs n times one image (eta.py).
                "curve_s": None if curve is None else _seconds(batch * curve(tokens(width, height, 1))),
            }
        )
    fitted = [
        {**dict(zip(SERIES_COLUMNS, key, strict=True)), "a": curve.a, "b": curve.b, "c": curve.c}
        for key, curve in curves.items()
        if curve is not None
    ]
    columns = (
        *SERIES_COLUMNS,
        "size",
        "tokens",
        "jobs",
        "steps",
        "min_s",
        "q1_s",
        "median_s",
        "q3_s",
        "max_s",
    )
    return Table(
        "step-times",
        "Step time by size",
        (*columns, "curve_s"),
        rows,
        # step seconds per image = a + b·T + c·T², T = (W/16)·(H/16) of one image
        {"curves": fitted},
    )


def step_profile(done: Sequence[Mapping[str, Any]]) -> Table:
    """Median time of each step index by size: shows whether a step (the first) is slower than the rest."""
    rows = []
    for (key, size), group in _groups(done).items():
        longest = max(len(job["step_s"]) for job in group)
        for index in range(longest):
            values = [job["step_s"][index] for job in group if len(job["step_s"]) > index]
            rows.append(
                {
                    **_row(key, size),
                    "step": index + 1,
                    "jobs": len(values),
                    "median_s": _seconds(median(values)),
                }
            )
    return Table(
        "step-profile", "Time per step index", (*SERIES_COLUMNS, "size", "step", "jobs", "median_s"), rows
    )


def phase_breakdown(done: Sequence[Mapping[str, Any]]) -> Table:
    """Median seconds of each phase by size (a phase a job did not time is left out of its median)."""
    rows = [
        {
            **_row(key, size),
            "jobs": len(group),
            **{f"{phase}_s": _seconds(median(job["phases"].get(phase) for job in group)) for phase in PHASES},
        }
        for (key, size), group in _groups(done).items()
    ]
    columns = (*SERIES_COLUMNS, "size", "jobs", *(f"{phase}_s" for phase in PHASES))
    return Table("phases", "Phases by size", columns, rows)


def model_loads(rows: Sequence[Mapping[str, Any]]) -> Table:
    """Whole-model loads (the sum of their parts) and each part, per model, device and dtype."""
    by_load: dict[str, dict[str, Any]] = {}
    for row in rows:
        load = by_load.setdefault(row["load_id"], {"key": _series(row), "parts": {}})
        load["parts"][row["component"]] = float(row["seconds"])
    groups: dict[tuple[Key, str], list[float]] = {}
    for load in by_load.values():
        groups.setdefault((load["key"], "total"), []).append(sum(load["parts"].values()))
        for component, seconds in load["parts"].items():
            groups.setdefault((load["key"], component), []).append(seconds)
    table = []
    for (key, component), values in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1] != "total")
    ):
        numbers = spread(values)
        table.append(
            {
                **dict(zip(SERIES_COLUMNS, key, strict=True)),
                "component": component,
                "loads": len(values),
                "median_s": numbers["median_s"],
                "min_s": numbers["min_s"],
                "max_s": numbers["max_s"],
            }
        )
    columns = (*SERIES_COLUMNS, "component", "loads", "median_s", "min_s", "max_s")
    return Table("loads", "Model loads", columns, table)


def eta_accuracy(rows: Sequence[Mapping[str, Any]]) -> Table:
    """eta.accuracy_report overall, by size and by UTC day, one row per point."""
    if not rows:
        return Table("eta-accuracy", "ETA accuracy", _ETA_COLUMNS, [])
    report = accuracy_report(rows)
    scopes: list[tuple[str, str, Mapping[str, Any]]] = [("overall", "", report["overall"])]
    scopes += [("size", size, summary) for size, summary in report["by_size"].items()]
    days: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        days.setdefault(_period(row["finished_at"], "day"), []).append(row)
    scopes += [("day", day, accuracy_report(day_rows)["overall"]) for day, day_rows in sorted(days.items())]
    table = [
        {"scope": scope, "group": group, "point": point, **summary[point]}
        for scope, group, summary in scopes
        for point in report["points"]
    ]
    return Table("eta-accuracy", "ETA accuracy", _ETA_COLUMNS, table)


def device_speed(
    done: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]], bucket: str
) -> Table:
    """How fast each device ran per UTC day or hour, next to how far off the ETA was at 0 %
    (speed.speed_by_period)."""
    rows = speed_by_period(done, predictions, lambda at: _period(at, bucket))
    return Table("speed", f"Device speed per {bucket}", SPEED_COLUMNS, rows)


def _period(finished_at: float, bucket: str) -> str:
    moment = datetime.fromtimestamp(finished_at, tz=UTC)
    return moment.strftime("%Y-%m-%d" if bucket == "day" else "%Y-%m-%d %H:00")


def throughput(jobs: Sequence[Mapping[str, Any]], bucket: str) -> Table:
    """Ended jobs by status and images made, per UTC day or hour; periods without jobs are left out."""
    periods: dict[str, dict[str, Any]] = {}
    for job in jobs:
        period = periods.setdefault(
            _period(job["finished_at"], bucket),
            {"jobs": 0, **dict.fromkeys(ENDED, 0), "images": 0},
        )
        period["jobs"] += 1
        period[job["status"]] += 1
        if job["status"] == "done":
            period["images"] += job["num_images"]
    rows = [{"period": name, **counts} for name, counts in sorted(periods.items())]
    return Table("throughput", f"Throughput per {bucket}", ("period", "jobs", *ENDED, "images"), rows)


def gpu_use(done: Sequence[Mapping[str, Any]]) -> Table:
    """GPU utilisation (pynvml) by size, over the jobs that have readings; on a CPU there are none."""
    rows = []
    for (key, size), group in _groups(done).items():
        read = [job for job in group if job["gpu_util_mean"] is not None]
        peaks = [job["gpu_mem_peak_mb"] for job in read if job["gpu_mem_peak_mb"] is not None]
        rows.append(
            {
                **_row(key, size),
                "jobs": len(group),
                "with_readings": len(read),
                "util_start_median": median(job["gpu_util_start"] for job in read),
                "util_mean_median": median(job["gpu_util_mean"] for job in read),
                "mem_peak_max_mb": max(peaks) if peaks else None,
            }
        )
    columns = (
        *SERIES_COLUMNS,
        "size",
        "jobs",
        "with_readings",
        "util_start_median",
        "util_mean_median",
        "mem_peak_max_mb",
    )
    return Table("gpu", "GPU utilisation", columns, rows, {"readings": sum(r["with_readings"] for r in rows)})


def seconds_text(value: float | None) -> str:
    """3.1 ms, 1.24 s: how pages and the terminal show report seconds; unknown is a dash."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"
