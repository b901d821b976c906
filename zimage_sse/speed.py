"""How fast a device runs right now, across every size: the speed factor (DESIGN.md "ETA model").

A job's time is its size's shape (the per-size medians and the cost model over them) times the
device's speed at the moment: 1.0 is its usual pace, 1.25 a quarter slower. The speed changes with
what else runs there (another tenant on the GPU, a CPU hog, thermal limits) and changes every size at
once, so one job of any size corrects the prediction for all of them, and the shapes are learned from
times divided by the speed each job ran at, so a size seen only while the machine was slow is not
predicted slow forever.

Pure functions over a time-ordered list of (size, seconds); eta.EtaModel applies them to the steady
step times and reports.py to the history, so the reports show the speed the engine uses.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .records import steady

# The speed at a past job: the median of the ratios of the jobs this many places either side of it, so
# a change shows within a couple of jobs and one odd job does not make a period of its own.
LOCAL_HALF_WIDTH = 2
# The speed now, when nothing has changed: the median of the newest jobs' ratios (one outlier among
# them moves it little; a slow ramp is followed about two jobs behind).
RECENT_JOBS = 5
# The speed has changed when the newest CHANGE_JOBS jobs or more all lie more than CHANGE (relative) on
# the same side of that median: then they alone set it. Within a job steps vary by about 1.5 %
# (shared/data/h200-step-profile.json), jobs of one size on a busy 2-core CPU by a few %: two jobs in a
# row 8 % off the same way is a change, not noise.
CHANGE = 0.08
CHANGE_JOBS = 2
# Shapes and local speeds are refined in turn this many times (each pass divides by the last one's
# speeds). More passes do not settle where a load slows sizes unequally (a CPU hog slowed 512² 4×
# and 1024² 2× here): two keep the shapes near the per-size medians.
PASSES = 2

Size = TypeVar("Size", bound=Hashable)


@dataclass(frozen=True)
class Speeds(Generic[Size]):
    """What the history says about speed: per job (oldest first) its ratio to its size's shape (None
    for a size run only once: its time is its shape, so it says nothing about speed) and the local
    speed around it; per size its shape (seconds at speed 1.0); and the speed now."""

    ratios: list[float | None]
    local: list[float]
    shape: dict[Size, float]
    now: float


def speeds(jobs: Sequence[tuple[Size, float]]) -> Speeds[Size]:
    """`jobs`: (size, seconds) per job, oldest first, seconds > 0."""
    runs: dict[Size, int] = {}
    for size, _ in jobs:
        runs[size] = runs.get(size, 0) + 1
    local = [1.0] * len(jobs)
    ratios: list[float | None] = []
    shape: dict[Size, float] = {}
    for _ in range(PASSES):
        by_size: dict[Size, list[float]] = {}
        for (size, seconds), speed in zip(jobs, local, strict=True):
            by_size.setdefault(size, []).append(seconds / speed)
        shape = {size: statistics.median(values) for size, values in by_size.items()}
        ratios = [seconds / shape[size] if runs[size] > 1 else None for size, seconds in jobs]
        local = local_speeds(ratios)
    return Speeds(ratios, local, shape, current([r for r in ratios if r is not None]))


def local_speeds(ratios: Sequence[float | None]) -> list[float]:
    """Each job's speed: the median of the known ratios within LOCAL_HALF_WIDTH known jobs of it; a
    job without one (its size ran once) ran as the jobs just before it did."""
    known = [(i, r) for i, r in enumerate(ratios) if r is not None]
    if not known:
        return [1.0] * len(ratios)
    places = [i for i, _ in known]
    values = [r for _, r in known]
    local = []
    for i in range(len(ratios)):
        at = bisect.bisect_left(places, i)
        if ratios[i] is None:
            before = values[max(0, at - LOCAL_HALF_WIDTH - 1) : at] or values[:1]
            local.append(statistics.median(before))
        else:
            local.append(statistics.median(values[max(0, at - LOCAL_HALF_WIDTH) : at + LOCAL_HALF_WIDTH + 1]))
    return local


def current(ratios: Sequence[float]) -> float:
    """The speed now, from the newest jobs' ratios (oldest first); 1.0 with none."""
    recent = list(ratios[-RECENT_JOBS:])
    if not recent:
        return 1.0
    level = statistics.median(recent)
    changed: list[float] = []
    for ratio in reversed(ratios):
        off = ratio / level - 1.0
        if abs(off) <= CHANGE or (changed and (off > 0) != (changed[0] / level > 1.0)):
            break
        changed.append(ratio)
    if len(changed) >= CHANGE_JOBS:
        return statistics.median(changed)
    return level


# The speed report's columns (reports.py "speed"): per model, device, dtype and period.
SPEED_COLUMNS = (
    "model",
    "device",
    "dtype",
    "period",
    "jobs",
    "speed",
    "slowest",
    "fastest",
    "eta_mape_at_0_percent",
    "eta_jobs",
)


def speed_by_period(
    done: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    period: Callable[[float], str],
) -> list[dict[str, Any]]:
    """Each device's speed per period, next to the ETA's error at 0 % over the same jobs.

    `done`: finished jobs in the order they ended (with `step_s`); `predictions`: the recorded ones
    (job_id, point, predicted and actual totals). A job's speed is its steady step time ÷ its size's
    shape, as the ETA engine scales its predictions: 1.0 is the device's usual pace over these jobs,
    1.25 a quarter slower; so a slow period and the error it caused read side by side.
    """
    at_start = {
        row["job_id"]: abs(float(row["predicted_total_s"]) / float(row["actual_total_s"]) - 1.0)
        for row in predictions
        if float(row["point"]) == 0.0 and row["predicted_total_s"] is not None and row["actual_total_s"]
    }
    series: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for job in done:
        if not job["warm_up"] and job["step_s"]:
            key = (str(job["model"]), str(job["device"]), str(job["dtype"] or ""))
            series.setdefault(key, []).append(job)
    rows = []
    for key, jobs in sorted(series.items()):
        sizes = [(j["width"], j["height"], j["num_images"]) for j in jobs]
        found = speeds(
            [(size, statistics.median(steady(j["step_s"]))) for size, j in zip(sizes, jobs, strict=True)]
        )
        by_period: dict[str, list[tuple[float, float | None]]] = {}
        for job, ratio, local in zip(jobs, found.ratios, found.local, strict=True):
            # A size run only once says nothing about speed by itself: it ran at its period's.
            speed = local if ratio is None else ratio
            by_period.setdefault(period(job["finished_at"]), []).append((speed, at_start.get(job["id"])))
        for name, values in sorted(by_period.items()):
            ratios = [ratio for ratio, _ in values]
            errors = [error for _, error in values if error is not None]
            numbers = (
                len(values),
                round(statistics.median(ratios), 3),
                round(max(ratios), 3),
                round(min(ratios), 3),
                round(100 * statistics.fmean(errors), 2) if errors else None,
                len(errors),
            )
            rows.append(dict(zip(SPEED_COLUMNS, (*key, name, *numbers), strict=True)))
    return rows


def spread_over(count: int, known: Mapping[int, float], default: float) -> list[float]:
    """A value for each of `count` places from the places in `known`: each place takes the nearest
    known one before it (the first known one before any); `default` where none is known."""
    if not known:
        return [default] * count
    first = known[min(known)]
    values, last = [], first
    for index in range(count):
        last = known.get(index, last)
        values.append(last)
    return values
