"""How accurate is our ETA, next to the ETAs that A1111 and tqdm would have shown for the same jobs?

Runs a fixed, seeded workload on the embedded `demo` model through the real pieces the service wires
together (zimage_sse/app.py): a `JobService` over a SQLite `Store`, a CPU `Worker` and a `Broadcaster`.
Each job is submitted only after the previous one ended, so every job runs alone and what is measured
is the run-time estimate, not the queue. For every finished job it reads back from SQLite what the
manager recorded (`eta_predictions`: our predicted total at 0, 10, 25 and 50 % of the actual run
time), the actual total and the step and phase timings. From the timings it rebuilds the job's
timeline (start → loading → encoding → steps → decoding → saving) and computes at the same moments
what two familiar progress displays would have predicted:

- A1111-style linear: total = elapsed ÷ (steps done ÷ N); none before the first step.
- tqdm-style EMA (smoothing 0.3 of the step time): total = elapsed + EMA × steps left, where
  EMA = 0.3·step + 0.7·EMA on each step and starts at the first step; none before the first step.

Both ignore decoding and saving, like the UIs they imitate. The report gives the mean absolute
percentage error (MAPE) of the predicted total per point, ours at 0 % split by sizes seen before in
the run and sizes never seen, the targets with PASS/FAIL, and diagnostics that say which part of our
prediction (step rate, first step, decode, overheads) the error comes from.

The run is made twice by default (`--scenario both`): once on the machine as it is ("steady"), and
once with a competing load started after job 30 and stopped after job 45 ("drift", bench/drift.py),
reported per window (before, during, after) with how many jobs the estimate takes to catch up.

    cd /work/main && .venv/bin/python -m bench.eta_accuracy [--jobs N] [--scenario steady|drift|both]
        [--models-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime
import itertools
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from zimage_sse import pipeline
from zimage_sse.broadcaster import Broadcaster
from zimage_sse.config import Settings
from zimage_sse.db import Store
from zimage_sse.estimate import LiveEstimate
from zimage_sse.eta import ACCURACY_POINTS, DECODE_PER_STEP, EtaModel, JobRecord, Prediction
from zimage_sse.params import JobParams
from zimage_sse.service import JobService
from zimage_sse.worker import Worker

from . import drift

MODEL = "demo"
SEED = 20251126  # the order and seeds of the workload; fixed so runs are comparable
DEFAULT_JOBS = 60
Size = tuple[int, int, int]  # width, height, batch

# The first job loads the model and pays the warm-up; it is the same in every run.
FIRST: Size = (512, 512, 1)
# Sizes used from the start, with how often each appears per 40 jobs: mostly ≤ 768², with enough
# 896² and 1024² that 60 jobs take about 4–5 minutes on an idle 2-core CPU (demo model, measured:
# 512² ≈ 1.2 s, 768² ≈ 3.4 s, 896² ≈ 5.3 s, 1024² ≈ 8.2 s a job) and 5–8 while other work shares it.
EARLY_MIX: tuple[tuple[Size, int], ...] = (
    ((384, 384, 1), 2),
    ((512, 512, 1), 4),
    ((384, 384, 2), 2),
    ((640, 512, 1), 4),
    ((512, 768, 1), 3),
    ((512, 512, 2), 3),
    ((768, 768, 1), 6),
    ((896, 896, 1), 7),
    ((1024, 1024, 1), 9),
)
# Sizes first used in the last third of the run (after job 40 of 60), each twice: the first time
# never seen before (cost model), the second time seen once.
LATE_SIZES: tuple[Size, ...] = ((704, 704, 1), (832, 640, 1), (640, 640, 2), (768, 1024, 1))
OTHER_STEPS = (4, 6, 12, 16)  # a fifth of the jobs; the rest use Z-Image-Turbo's 8
PROMPTS = (
    "a photograph of a red fox in the snow at dawn",
    "an oil painting of a lighthouse on a cliff during a storm, dramatic clouds",
    "a bowl of ramen on a wooden table, steam rising",
    "isometric illustration of a tiny city with trains, bridges and a harbour",
)
EMA_SMOOTHING = 0.3  # tqdm's default

# Targets (the issue on an ETA that holds when the machine's speed changes): at 0 %, sizes seen
# before within FLOOR_MARGIN points of the hindsight median (the machine's own noise), sizes never
# seen within TARGET_UNSEEN_0; at 25 % and 50 % within TARGET_LIVE.
FLOOR_MARGIN = 2.0
TARGET_UNSEEN_0 = 12.0
TARGET_LIVE = 4.0

POINT_25 = 0.25
WORST_SEEN = 5  # seen-size jobs listed with their prior, worst first
ESTIMATORS = ("ours", "A1111 linear", "tqdm EMA")


def workload(count: int, seed: int = SEED) -> list[JobParams]:
    """The jobs in run order: FIRST, then a shuffled mix; LATE_SIZES only from job ⌊2·count/3⌋ + 1 on."""
    rng = random.Random(seed)
    late_from = max(1, count * 2 // 3)
    late = [size for _ in range(2) for size in LATE_SIZES][: max(0, count - late_from)]
    dealt = _deal(rng, count - 1 - len(late))
    early, rest = dealt[: late_from - 1], dealt[late_from - 1 :]
    tail = late + rest
    rng.shuffle(tail)
    sizes = ([FIRST, *early, *tail])[:count]
    jobs = []
    for index, (width, height, batch) in enumerate(sizes):
        steps = 8 if index == 0 or rng.random() < 0.8 else rng.choice(OTHER_STEPS)
        jobs.append(
            JobParams(
                prompt=PROMPTS[index % len(PROMPTS)],
                negative_prompt="",
                width=width,
                height=height,
                steps=steps,
                guidance=0.0,
                seed=rng.randrange(2**32),
                num_images=batch,
            )
        )
    return jobs


def _deal(rng: random.Random, count: int) -> list[Size]:
    """`count` sizes in EARLY_MIX's proportions: whole shuffled decks, dealt one after another."""
    deck = [size for size, weight in EARLY_MIX for _ in range(weight)]
    dealt: list[Size] = []
    while len(dealt) < count:
        hand = list(deck)
        rng.shuffle(hand)
        dealt.extend(hand)
    return dealt[: max(0, count)]


# -- running the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One finished job as read back from SQLite."""

    index: int  # 1-based position in the run
    id: str
    params: JobParams
    status: str
    warm_up: bool
    actual_s: float | None
    ours: dict[float, float | None]  # point → our recorded predicted total
    step_s: tuple[float, ...]
    phases: dict[str, float]
    first_of_size: bool = False
    load: float = 0.0  # the 1-minute load average when it ended

    @property
    def size(self) -> Size:
        return (self.params.width, self.params.height, self.params.num_images)

    @property
    def label(self) -> str:
        p = self.params
        return f"{p.width}×{p.height}" + (f" ×{p.num_images}" if p.num_images != 1 else "")


async def run_workload(
    jobs: Sequence[JobParams],
    models_dir: Path,
    work_dir: Path,
    say: Callable[[str], None],
    after_job: Callable[[int], None] = lambda number: None,
) -> tuple[list[Job], str]:
    store = await Store.open(work_dir / "bench.sqlite")
    worker = Worker(MODEL, models_dir, work_dir / "images", device="cpu")
    (work_dir / "images").mkdir(parents=True, exist_ok=True)
    manager = JobService(store, worker, Broadcaster())
    await manager.start()
    ids: list[str] = []
    loads: dict[str, float] = {}
    try:
        for number, params in enumerate(jobs, start=1):
            state = await manager.submit(params)
            ids.append(state.id)
            async for _event in manager.until_end(state.id):  # as a client follows the stream
                pass
            ended = await manager.get(state.id)
            elapsed = ended.elapsed_s()
            say(
                f"[{number:>3}/{len(jobs)}] {params.width}×{params.height} ×{params.num_images},"
                f" {params.steps} steps: {ended.status} in {elapsed or 0.0:.2f} s"
                f" (ours predicted {_seconds(ended.predicted_total_s)} at the start)"
            )
            loads[state.id] = os.getloadavg()[0]
            after_job(number)
        finished = [replace(job, load=loads[job.id]) for job in await read_jobs(store, ids)]
    finally:
        await manager.stop()
        await store.close()
    return finished, worker.dtype_name


async def read_jobs(store: Store, ids: Sequence[str]) -> list[Job]:
    """What the manager stored: recorded predictions, actual totals, step and phase timings."""
    predictions: dict[str, dict[float, float | None]] = {}
    actual: dict[str, float] = {}
    for row in await store.eta_accuracy_rows():
        predictions.setdefault(row["job_id"], {})[float(row["point"])] = row["predicted_total_s"]
        actual[row["job_id"]] = float(row["actual_total_s"])
    result = []
    for index, job_id in enumerate(ids, start=1):
        job = await store.get_job(job_id)
        assert job is not None, job_id
        result.append(
            Job(
                index=index,
                id=job_id,
                params=JobParams.from_dict(job),
                status=job["status"],
                warm_up=bool(job["warm_up"]),
                actual_s=actual.get(job_id),
                ours=predictions.get(job_id, {}),
                step_s=tuple(await store.step_timings(job_id)),
                phases=await store.phase_timings(job_id),
                first_of_size=bool(job.get("first_of_size")),
            )
        )
    return result


# -- timelines and the baselines -----------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """When each thing happened, in seconds since the job started (the manager's `started_at`).

    The time outside the worker's phases (the start written to SQLite, the hand-off to the worker
    thread, the return to the event loop) is put before the first phase: almost all of it happens
    there, and the manager takes `finished_at` right after the worker returns.
    """

    total: float
    steps: int
    phase_start: dict[str, float]
    phase_end: dict[str, float]
    step_done_at: tuple[float, ...]

    def steps_done(self, at: float) -> int:
        return bisect.bisect_right(self.step_done_at, at + 1e-9)

    def phase_at(self, at: float) -> str:
        current = "start"
        for phase, start in self.phase_start.items():
            if start <= at + 1e-9:
                current = phase
        return current

    def events(self) -> list[tuple[float, str]]:
        """(time, a phase's name or "step"): what the worker reported, in order."""
        found = [(start, phase) for phase, start in self.phase_start.items()]
        found += [(done, "step") for done in self.step_done_at]
        found.sort(key=lambda item: item[0])
        return found


def timeline(job: Job) -> Timeline:
    assert job.actual_s is not None
    overhead = max(0.0, job.actual_s - sum(job.phases.values()))
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    at = overhead
    for phase in ("loading", "encoding", "denoising", "decoding", "saving"):
        if phase in job.phases:
            start[phase], at = at, at + job.phases[phase]
            end[phase] = at
    denoise = start.get("denoising", overhead)
    done_at = tuple(itertools.accumulate(job.step_s, initial=denoise))[1:]
    return Timeline(job.actual_s, job.params.steps, start, end, done_at)


def a1111_total(line: Timeline, at: float) -> float | None:
    """A1111's ETA: elapsed ÷ progress, progress = steps done ÷ N (modules/progress.py)."""
    done = line.steps_done(at)
    return None if done == 0 else at * line.steps / done


def tqdm_total(line: Timeline, step_s: Sequence[float], at: float) -> float | None:
    """tqdm's ETA with smoothing 0.3: elapsed + EMA of the step time × steps left."""
    done = line.steps_done(at)
    if done == 0:
        return None
    ema = step_s[0]
    for seconds in step_s[1:done]:
        ema = EMA_SMOOTHING * seconds + (1 - EMA_SMOOTHING) * ema
    return at + ema * (line.steps - done)


# -- diagnostics: what our prediction was made of ------------------------------------------------


def priors(jobs: Sequence[Job], key: tuple[str, str, str]) -> dict[str, Prediction | None]:
    """The prior the manager had for each job: an EtaModel of the jobs done before it, as it learns."""
    model = EtaModel()
    result: dict[str, Prediction | None] = {}
    warm = False
    ran: set[Size] = set()
    for job in jobs:
        p = job.params
        result[job.id] = model.predict(
            key,
            p.width,
            p.height,
            p.num_images,
            p.steps,
            loaded=job.index > 1,
            warm_up=not warm,
            first_of_size=not warm or job.size not in ran,
        )
        if job.status == "done":
            warm = True
            ran.add(job.size)
            model.add(
                JobRecord(
                    model=key[0],
                    device=key[1],
                    dtype=key[2],
                    width=p.width,
                    height=p.height,
                    batch=p.num_images,
                    step_s=job.step_s,
                    phases=dict(job.phases),
                    warm_up=job.warm_up,
                    first_of_size=job.first_of_size,
                )
            )
    return result


@dataclass(frozen=True)
class Breakdown:
    """A predicted total minus the actual one, split by where the difference arises (seconds)."""

    parts: dict[str, float]
    replayed_total: float | None


BREAKDOWN_PARTS = (
    "first step (set-up inside step 1)",
    "steady steps (step rate)",
    "denoise tail (after the last step)",
    "encode",
    "decode",
    "save",
    "outside the phases (start-up, hand-offs)",
)


def prior_breakdown(job: Job, line: Timeline, prior: Prediction) -> Breakdown:
    """The 0 % prediction (the prior) against what each part of the job actually took."""
    first, rest = (job.step_s[0], job.step_s[1:]) if job.step_s else (0.0, ())
    denoise = job.phases.get("denoising", 0.0)
    parts = {
        BREAKDOWN_PARTS[0]: prior.step_s + prior.warmup_s - first,
        BREAKDOWN_PARTS[1]: (prior.steps - 1) * prior.step_s - sum(rest),
        BREAKDOWN_PARTS[2]: -(denoise - sum(job.step_s)),
        BREAKDOWN_PARTS[3]: prior.encode_s - job.phases.get("encoding", 0.0),
        BREAKDOWN_PARTS[4]: prior.decode_s - job.phases.get("decoding", 0.0),
        BREAKDOWN_PARTS[5]: prior.save_s - job.phases.get("saving", 0.0),
        BREAKDOWN_PARTS[6]: -(line.total - sum(job.phases.values())),
    }
    return Breakdown(parts, prior.total_s)


def live_breakdown(job: Job, line: Timeline, prior: Prediction | None, point: float) -> Breakdown | None:
    """Replays the job's events into a LiveEstimate up to `point` of its run time and splits the
    latest estimate made by then (the one the manager recorded) into the same parts."""
    at = point * line.total
    live = LiveEstimate(prior, line.steps, 0.0)
    steps = iter(job.step_s)
    for when, kind in line.events():
        if when > at + 1e-9:
            break
        if kind == "step":
            live.on_step(next(steps), when)
        else:
            live.on_phase(kind, when)
    total = live.history[-1][1]
    step = live.step_estimate()
    if total is None or step is None or live.phase not in (None, "loading", "encoding", "denoising"):
        return None
    # Mirrors LiveEstimate.remaining: decode scaled by what the steps said about this run's speed.
    factor = step / prior.step_s if prior and prior.step_s > 0 else 1.0
    decode = prior.decode_s * factor if prior else step * DECODE_PER_STEP
    save = prior.save_s * factor if prior else 0.0
    steps_end = line.step_done_at[-1] if line.step_done_at else line.phase_end.get("denoising", 0.0)
    predicted_steps_end = total - decode - save  # when the last step ends, as predicted
    denoise_end = line.phase_end.get("denoising", steps_end)
    parts = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
    parts[BREAKDOWN_PARTS[1]] = predicted_steps_end - steps_end  # encode and steps still to come
    parts[BREAKDOWN_PARTS[2]] = -(denoise_end - steps_end)
    parts[BREAKDOWN_PARTS[4]] = decode - job.phases.get("decoding", 0.0)
    parts[BREAKDOWN_PARTS[5]] = save - job.phases.get("saving", 0.0)
    parts[BREAKDOWN_PARTS[6]] = -(line.total - line.phase_end.get("saving", line.total))
    return Breakdown(parts, total)


# -- the report ----------------------------------------------------------------------------------


def ape(predicted: float | None, actual: float) -> float | None:
    return None if predicted is None else 100.0 * abs(predicted - actual) / actual


def mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _percent(value: float | None, digits: int = 1) -> str:
    return "none" if value is None else f"{value:.{digits}f} %"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f} %"


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"


def _point(point: float) -> str:
    return f"{round(point * 100)} %"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown pipe table, padded so it also reads as a table in a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    right = [i > 0 for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True)
    )
    return [line(headers), rule + "|", *(line(r) for r in rows)]


@dataclass
class Scores:
    """Per job and point, the absolute percentage error of each estimator (None: no estimate)."""

    errors: dict[str, dict[float, dict[str, float | None]]]  # estimator → point → job id → APE
    signed: dict[float, dict[str, float | None]]  # ours: point → job id → signed % error

    def mape(self, estimator: str, point: float, ids: Iterable[str]) -> tuple[float | None, int]:
        values = [self.errors[estimator][point].get(i) for i in ids]
        known = [v for v in values if v is not None]
        return (statistics.fmean(known) if known else None), len(known)


def score(jobs: Sequence[Job], lines: dict[str, Timeline]) -> Scores:
    errors: dict[str, dict[float, dict[str, float | None]]] = {
        name: {p: {} for p in ACCURACY_POINTS} for name in ESTIMATORS
    }
    signed: dict[float, dict[str, float | None]] = {p: {} for p in ACCURACY_POINTS}
    for job in jobs:
        line = lines[job.id]
        for point in ACCURACY_POINTS:
            at = point * line.total
            ours = job.ours.get(point)
            errors["ours"][point][job.id] = ape(ours, line.total)
            errors["A1111 linear"][point][job.id] = ape(a1111_total(line, at), line.total)
            errors["tqdm EMA"][point][job.id] = ape(tqdm_total(line, job.step_s, at), line.total)
            signed[point][job.id] = None if ours is None else 100.0 * (ours - line.total) / line.total
    return Scores(errors, signed)


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    passed: bool | None  # None: nothing to compare

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else ("PASS" if self.passed else "FAIL")


def report(
    jobs: Sequence[Job],
    *,
    command: str,
    dtype: str,
    wall_s: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    started: datetime.datetime,
    scenario: str = "steady",
) -> str:
    done = [j for j in jobs if j.status == "done" and j.actual_s is not None]
    lines = {j.id: timeline(j) for j in done}
    scores = score(done, lines)
    all_ids = [j.id for j in done]
    key = (MODEL, "cpu", dtype)
    prior_of = priors(jobs, key)
    out: list[str] = []
    add = out.append

    late_after = max(1, len(jobs) * 2 // 3)  # as in workload()
    add(f"### ETA accuracy, {scenario}: our estimator vs the ETAs of A1111 and tqdm")
    add("")
    add(f"- Date: {started:%Y-%m-%d %H:%M} (local), command: `{command}`")
    add(
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}, {torch.get_num_threads()} torch"
        f" threads), no GPU; torch {torch.__version__}, Python {platform.python_version()};"
        f" device cpu, {dtype}; load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at"
        " the end (timings are noisy while other work shares the machine); over the jobs' ends"
        f" {min(j.load for j in jobs):.2f}–{max(j.load for j in jobs):.2f}"
    )
    add(
        f"- Workload: {len(jobs)} jobs on the embedded `{MODEL}` model (random weights, Z-Image"
        f" architecture), seed {SEED}; each submitted after the previous one ended (run alone);"
        f" sizes {_size_list(jobs)}; sizes first used after job {late_after}: "
        + ", ".join(_size_name(s) for s in LATE_SIZES if any(j.size == s for j in jobs))
    )
    add(
        f"- Done: {len(done)} of {len(jobs)}; job time {sum(lines[i].total for i in all_ids):.0f} s;"
        f" total benchmark time {wall_s:.0f} s ({wall_s / 60:.1f} min)"
    )
    if scenario == "drift":
        add(
            f"- Drift: a competing load (one process multiplying 512² matrices on one core, bench/drift.py)"
            f" ran from the end of job {drift.CHANGES[0] - 1} to the end of job {drift.CHANGES[1] - 1}"
        )
    if len(jobs) < DEFAULT_JOBS:
        add(f"- Fewer than {DEFAULT_JOBS} jobs: a smoke run, not a measurement.")
    add("")

    add("#### Predicted total vs actual: MAPE (jobs with an estimate / jobs)")
    add("")
    rows = []
    for name in ESTIMATORS:
        cells = [name]
        for point in ACCURACY_POINTS:
            value, count = scores.mape(name, point, all_ids)
            cells.append(f"{_percent(value)} ({count}/{len(all_ids)})")
        rows.append(cells)
    out += table(["estimator", *(_point(p) for p in ACCURACY_POINTS)], rows)
    add("")
    add(
        "Ours: what the JobService recorded in `eta_predictions` (the latest estimate made at or before"
        " each point). Baselines: computed from the job's step and phase timings at the same moments;"
        " they have none before the first step and ignore decoding and saving."
    )
    add("")

    # Seen vs never seen, at 0 %, without the first job (model load, no history).
    seen_ids: list[str] = []
    unseen_ids: list[str] = []
    finished_sizes: set[Size] = set()
    for job in jobs:
        if job.status == "done" and job.index > 1 and job.id in lines:
            (seen_ids if job.size in finished_sizes else unseen_ids).append(job.id)
        if job.status == "done":
            finished_sizes.add(job.size)
    add("#### Ours at 0 %: sizes seen before vs never seen (first job excluded)")
    add("")
    rows = []
    for name, ids in (("seen before", seen_ids), ("never seen", unseen_ids), ("all", seen_ids + unseen_ids)):
        values = [v for v in (scores.errors["ours"][0.0][i] for i in ids) if v is not None]
        bias = mean(scores.signed[0.0][i] for i in ids)
        rows.append(
            [
                name,
                f"{len(values)}/{len(ids)}",
                _percent(mean(values)),
                _percent(statistics.median(values) if values else None),
                _percent(max(values) if values else None),
                _signed(bias),
            ]
        )
    out += table(["sizes", "jobs", "MAPE", "median APE", "worst", "mean signed error"], rows)
    add("")

    floor = hindsight(done, lines)
    recoveries: list[drift.Recovery] = []
    if scenario == "drift":
        out += _windows(jobs, scores)
        at_0 = [scores.errors["ours"][0.0].get(j.id) for j in jobs]
        recoveries = [drift.recovery(at_0, change) for change in drift.CHANGES if change <= len(jobs)]
        out += _recoveries(recoveries)
    targets = _targets(scores, all_ids, seen_ids, unseen_ids, mean(floor), recoveries)
    add("#### Targets")
    add("")
    out += table(["target", "measured", "result"], [[t.name, t.measured, t.verdict] for t in targets])
    add("")
    failed = [t for t in targets if t.passed is False]
    add(f"**{len(targets) - len(failed)} of {len(targets)} targets pass" + ("." if not failed else ":"))
    if failed:
        out[-1] += " " + "; ".join(t.name for t in failed) + " fail.**"
    else:
        out[-1] += "**"
    add("")

    out += _diagnostics(jobs, done, lines, scores, prior_of, seen_ids, unseen_ids)
    return "\n".join(out) + "\n"


def hindsight(done: Sequence[Job], lines: dict[str, Timeline]) -> list[float]:
    """Each job's APE when predicted by the median actual total of all jobs of its size and step count
    in this run (groups of ≥ 3; not the first job): what the machine's own noise leaves to any prior."""
    groups: dict[tuple[Size, int], list[float]] = {}
    for job in done:
        groups.setdefault((job.size, job.params.steps), []).append(lines[job.id].total)
    floor = []
    for job in done:
        same = groups[(job.size, job.params.steps)]
        if job.index > 1 and len(same) >= 3:
            floor.append(100.0 * abs(statistics.median(same) - lines[job.id].total) / lines[job.id].total)
    return floor


def _windows(jobs: Sequence[Job], scores: Scores) -> list[str]:
    """MAPE per estimator and point in each window of the drift scenario, with its load average."""
    out = ["#### Before, during and after the competing load: MAPE (jobs with an estimate)", ""]
    rows = []
    for name, first, last in drift.WINDOWS:
        ids = [j.id for j in jobs if first <= j.index <= last and j.id in scores.errors["ours"][0.0]]
        loads = [j.load for j in jobs if first <= j.index <= last]
        if not ids:
            continue
        for estimator in ESTIMATORS:
            cells = [f"{name} (jobs {first}–{min(last, len(jobs))})", estimator]
            for point in ACCURACY_POINTS:
                value, count = scores.mape(estimator, point, ids)
                cells.append(f"{_percent(value)} ({count})")
            cells.append(f"{statistics.fmean(loads):.2f}")
            rows.append(cells)
    out += table(["window", "estimator", *(_point(p) for p in ACCURACY_POINTS), "load average"], rows)
    out.append("")
    return out


def _recoveries(recoveries: Sequence[drift.Recovery]) -> list[str]:
    out = [
        f"#### Catching up with a change: ours at 0 % for the {drift.SHOWN_AFTER_CHANGE} jobs after it",
        "",
    ]
    rows = []
    for found in recoveries:
        what = "load started" if found.change == drift.CHANGES[0] else "load stopped"
        errors = ", ".join(_percent(e, 0) for e in found.errors)
        took = "never" if found.jobs is None else str(found.jobs)
        rows.append([f"job {found.change} ({what})", errors, took])
    out += table(
        ["change", "APE at 0 %, from that job on", f"jobs ≥ {drift.RECOVERED_BELOW:g} % first"], rows
    )
    out.append("")
    return out


def _targets(
    scores: Scores,
    all_ids: list[str],
    seen: list[str],
    unseen: list[str],
    floor: float | None,
    recoveries: Sequence[drift.Recovery],
) -> list[Target]:
    targets = []
    value, count = scores.mape("ours", 0.0, seen)
    limit = None if floor is None else floor + FLOOR_MARGIN
    targets.append(
        Target(
            f"ours at 0 %, sizes seen before: MAPE ≤ hindsight median + {FLOOR_MARGIN:g} points",
            f"{_percent(value)} ({count} jobs) vs {_percent(limit)} (floor {_percent(floor)})",
            None if value is None or limit is None else value <= limit,
        )
    )
    value, count = scores.mape("ours", 0.0, unseen)
    targets.append(
        Target(
            f"ours at 0 %, sizes never seen: MAPE ≤ {TARGET_UNSEEN_0:g} %",
            f"{_percent(value)} ({count} jobs)",
            None if value is None else value <= TARGET_UNSEEN_0,
        )
    )
    for point in (POINT_25, 0.5):
        value, count = scores.mape("ours", point, all_ids)
        targets.append(
            Target(
                f"ours at {_point(point)}: MAPE ≤ {TARGET_LIVE:g} %",
                f"{_percent(value)} ({count} jobs)",
                None if value is None else value <= TARGET_LIVE,
            )
        )
    for found in recoveries:
        targets.append(
            Target(
                f"after the change at job {found.change}: at most {drift.RECOVERY_GOAL} jobs at ≥"
                f" {drift.RECOVERED_BELOW:g} % before one under it",
                "never" if found.jobs is None else f"{found.jobs} jobs",
                found.met,
            )
        )
    for baseline in ESTIMATORS[1:]:
        for point in ACCURACY_POINTS:
            both = [
                i
                for i in all_ids
                if scores.errors[baseline][point][i] is not None
                and scores.errors["ours"][point][i] is not None
            ]
            only = sum(
                1
                for i in all_ids
                if scores.errors[baseline][point][i] is not None and scores.errors["ours"][point][i] is None
            )
            if not both and not only:
                continue  # the baseline had no estimate at this point
            ours, _ = scores.mape("ours", point, both)
            theirs, _ = scores.mape(baseline, point, both)
            measured = f"{_percent(ours)} vs {_percent(theirs)} on the {len(both)} jobs where both had one"
            if only:
                measured += f"; {only} job(s) where only {baseline} had one"
            passed = None if ours is None or theirs is None else ours < theirs
            targets.append(Target(f"ours better than {baseline} at {_point(point)}", measured, passed))
    return targets


def _diagnostics(
    jobs: Sequence[Job],
    done: Sequence[Job],
    lines: dict[str, Timeline],
    scores: Scores,
    prior_of: dict[str, Prediction | None],
    seen_ids: list[str],
    unseen_ids: list[str],
) -> list[str]:
    out: list[str] = ["#### Diagnostics", ""]
    add = out.append
    by_id = {j.id: j for j in done}

    # 1. The prior (0 %), part by part.
    breakdowns: dict[str, Breakdown] = {}
    mismatch = 0
    for job in done:
        prior = prior_of.get(job.id)
        if prior is None or prior.total_s is None or job.index == 1:
            continue
        breakdowns[job.id] = prior_breakdown(job, lines[job.id], prior)
        recorded = job.ours.get(0.0)
        if recorded is None or abs(recorded - prior.total_s) > 1e-6 * max(1.0, recorded):
            mismatch += 1
    add("##### Where the error at 0 % comes from")
    add("")
    add(
        "Each job's prior (rebuilt with EtaModel from the jobs done before it, as the manager learns;"
        f" it matches the recorded 0 % prediction for {len(breakdowns) - mismatch} of {len(breakdowns)}"
        " jobs) minus what the job took, per part, as a share of the job's actual total; mean signed"
        " (+: predicted too long) and mean absolute."
    )
    add("")
    groups = (("seen", seen_ids), ("never seen", unseen_ids))
    rows = []
    for part in (*BREAKDOWN_PARTS, "total"):
        cells = [part]
        for _, ids in groups:
            shares = [_share(breakdowns[i], part, lines[i].total) for i in ids if i in breakdowns]
            cells.append(_signed(mean(shares)))
            cells.append(_percent(mean(abs(s) for s in shares)))
        rows.append(cells)
    out += table(["part", "seen: signed", "seen: abs", "never seen: signed", "never seen: abs"], rows)
    add("")

    # 2. The live estimate at 10, 25 and 50 %.
    add("##### The live estimate at 10, 25 and 50 % (replayed from the timings)")
    add("")
    add(
        "The job's events fed into a LiveEstimate up to each point; the latest estimate split as above"
        " (step rate: the predicted end of the last step vs the actual one, so it includes any encode"
        " still to come). Mean signed share of the actual total (and mean absolute), over the jobs still"
        " before decoding."
    )
    add("")
    live_points = ACCURACY_POINTS[1:]
    live: dict[float, dict[str, Breakdown]] = {p: {} for p in live_points}
    phases: dict[float, dict[str, int]] = {p: {} for p in live_points}
    replay_gap: list[float] = []
    for job in done:
        if job.index == 1:
            continue
        line = lines[job.id]
        for point in live_points:
            phase = line.phase_at(point * line.total)
            if phase == "denoising":
                phase = "first step" if line.steps_done(point * line.total) == 0 else "later steps"
            phases[point][phase] = phases[point].get(phase, 0) + 1
            found = live_breakdown(job, line, prior_of.get(job.id), point)
            if found is None:
                continue
            live[point][job.id] = found
            recorded = job.ours.get(point)
            if recorded is not None and found.replayed_total is not None:
                replay_gap.append(100.0 * abs(found.replayed_total - recorded) / line.total)
    rows = []
    for part in (BREAKDOWN_PARTS[1], BREAKDOWN_PARTS[2], BREAKDOWN_PARTS[4], BREAKDOWN_PARTS[5]):
        cells = [part]
        for point in live_points:
            shares = [_share(b, part, lines[i].total) for i, b in live[point].items()]
            cells.append(f"{_signed(mean(shares))} (abs {_percent(mean(abs(v) for v in shares))})")
        rows.append(cells)
    rows.append(
        ["recorded total: mean signed error"]
        + [_signed(mean(v for i, v in scores.signed[p].items() if by_id[i].index > 1)) for p in live_points]
    )
    rows.append(
        ["recorded total: MAPE"]
        + [
            _percent(mean(v for i, v in scores.errors["ours"][p].items() if by_id[i].index > 1))
            for p in live_points
        ]
    )
    rows.append(
        ["where the job was"]
        + [
            ", ".join(f"{k} {v}" for k, v in sorted(phases[p].items(), key=lambda kv: -kv[1]))
            for p in live_points
        ]
    )
    out += table(["part", *(_point(p) for p in live_points)], rows)
    add("")
    if replay_gap:
        add(
            f"Replay vs recorded estimate: mean difference {statistics.fmean(replay_gap):.2f} % of the total"
            f" (max {max(replay_gap):.2f} %), from event delivery delays."
        )
        add("")

    # 3. Sizes never seen: the cost model.
    add("##### What the prior assumed: every size never seen, and the worst seen ones")
    add("")
    worst_seen = sorted(
        (i for i in seen_ids if scores.errors["ours"][0.0][i] is not None),
        key=lambda i: -(scores.errors["ours"][0.0][i] or 0.0),
    )[:WORST_SEEN]
    rows = []
    for job_id in [*unseen_ids, *worst_seen]:
        job = by_id[job_id]
        prior = prior_of.get(job_id)
        rest = job.step_s[1:] or job.step_s
        rows.append(
            [
                str(job.index),
                job.label,
                str(job.params.steps),
                "new" if job_id in unseen_ids else "seen",
                prior.source if prior else "none",
                _seconds(prior.step_s if prior else None),
                _seconds(statistics.median(rest) if rest else None),
                _seconds(prior.decode_s if prior else None),
                _seconds(job.phases.get("decoding")),
                _seconds(job.ours.get(0.0)),
                _seconds(lines[job_id].total),
                _signed(scores.signed[0.0][job_id]),
            ]
        )
    out += table(
        [
            "job",
            "size",
            "steps",
            "size was",
            "step from",
            "step: prior",
            "step: actual median",
            "decode: prior",
            "decode: actual",
            "total: prior",
            "total: actual",
            "error",
        ],
        rows,
    )
    add("")

    # 4. How noisy the machine was: what a predictor that knew the future could have done.
    add("##### Noise floor")
    add("")
    floor = hindsight(done, lines)
    spreads = []
    for job in done:
        rest = job.step_s[1:]
        if len(rest) >= 3:
            spreads.append(100.0 * statistics.pstdev(rest) / statistics.fmean(rest))
    add(
        f"- Hindsight median: predicting each job's total as the median actual total of all jobs of its size"
        f" and step count in this run (groups of ≥ 3) gives a MAPE of {_percent(mean(floor))} over"
        f" {len(floor)} jobs: roughly how much of any prior's error is the machine's run-to-run noise."
    )
    add(
        f"- Step time within a job (steps 2…N): mean coefficient of variation {_percent(mean(spreads))},"
        f" median {_percent(statistics.median(spreads) if spreads else None)}."
    )
    first = done[0] if done and done[0].index == 1 else None
    if first is not None:
        line = lines[first.id]
        add(
            f"- Job 1 (model load and warm-up, not in the split above): {line.total:.2f} s, of which"
            f" loading {first.phases.get('loading', 0.0):.2f} s and step 1 {first.step_s[0]:.2f} s;"
            " APE ours / A1111 / tqdm "
            + "; ".join(
                f"at {_point(p)}: "
                + " / ".join(_percent(scores.errors[name][p][first.id], 0) for name in ESTIMATORS)
                for p in live_points
            )
        )
    add("")

    # 5. Every job.
    add("##### Every job")
    add("")
    rows = []
    seen = set(seen_ids)
    for job in jobs:
        if job.id not in lines:
            rows.append([str(job.index), job.label, str(job.params.steps), "", job.status, *[""] * 8])
            continue
        line = lines[job.id]
        rows.append(
            [
                str(job.index),
                job.label,
                str(job.params.steps),
                "first" if job.index == 1 else ("seen" if job.id in seen else "new"),
                f"{line.total:.2f}",
                f"{job.phases.get('decoding', 0.0):.2f}",
                *(_percent(scores.errors["ours"][p][job.id], 0) for p in ACCURACY_POINTS),
                *(
                    _percent(scores.errors[name][p][job.id], 0)
                    for name in ESTIMATORS[1:]
                    for p in (0.25, 0.5)
                ),
            ]
        )
    out += table(
        [
            "job",
            "size",
            "steps",
            "size was",
            "actual s",
            "decode s",
            "ours 0 %",
            "ours 10 %",
            "ours 25 %",
            "ours 50 %",
            "A1111 25 %",
            "A1111 50 %",
            "tqdm 25 %",
            "tqdm 50 %",
        ],
        rows,
    )
    return out


def _share(breakdown: Breakdown, part: str, total: float) -> float:
    if part == "total":
        return 100.0 * sum(breakdown.parts.values()) / total
    return 100.0 * breakdown.parts[part] / total


def _size_name(size: Size) -> str:
    return f"{size[0]}×{size[1]}" + (f" ×{size[2]}" if size[2] != 1 else "")


def _size_list(jobs: Sequence[JobParams] | Sequence[Job]) -> str:
    counts: dict[Size, int] = {}
    for job in jobs:
        p = job.params if isinstance(job, Job) else job
        size = (p.width, p.height, p.num_images)
        counts[size] = counts.get(size, 0) + 1
    return ", ".join(
        f"{_size_name(s)} ({n})"
        for s, n in sorted(counts.items(), key=lambda kv: kv[0][0] * kv[0][1] * kv[0][2])
    )


# -- command line ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eta_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to run (default {DEFAULT_JOBS})"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where the embedded demo model is (built there if missing); default: the service's",
    )
    parser.add_argument(
        "--scenario",
        choices=("steady", "drift", "both"),
        default="both",
        help="the machine as it is, with a competing load during jobs 31–45, or both runs (default)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report to FILE (Markdown)")
    args = parser.parse_args(argv)
    if args.jobs < 2:
        parser.error("--jobs must be at least 2")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    models_dir: Path = args.models_dir or Settings.from_env().model_cache
    pipeline.ensure_embedded(MODEL, models_dir)
    jobs = workload(args.jobs)
    command = shlex.join(["python", "-m", "bench.eta_accuracy", *(sys.argv[1:] if argv is None else argv)])

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    reports = []
    for scenario in ("steady", "drift") if args.scenario == "both" else (args.scenario,):
        say(f"-- scenario {scenario}: {len(jobs)} jobs")
        started, clock = datetime.datetime.now(), time.perf_counter()
        load_before = os.getloadavg()
        hog = drift.Hog()
        after = drift.schedule(hog, say) if scenario == "drift" else (lambda number: None)
        try:
            with tempfile.TemporaryDirectory(prefix="eta-bench-") as work:
                finished, dtype = asyncio.run(run_workload(jobs, models_dir, Path(work), say, after))
        finally:
            hog.stop()
        text = report(
            finished,
            command=command,
            dtype=dtype,
            wall_s=time.perf_counter() - clock,
            load_before=load_before,
            load_after=os.getloadavg(),
            started=started,
            scenario=scenario,
        )
        print(text, flush=True)
        reports.append(text)
    if args.out is not None:
        args.out.write_text("\n".join(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
