"""Overhead: the same jobs through the whole service vs a bare loop of `pipe(...)` calls.

Service: a real `zimage-sse serve` process; for each job an HTTP POST /api/jobs, then its SSE stream
read until `done` (worker, events, SQLite, the PNG with its metadata): wall time from the POST to the
`done` event. Bare: the same checkpoint loaded in this process with the same loader, then for each job
`pipe(prompt, size, steps, guidance 0, generator seeded on the CPU)` and `image.save(png)`, as a
script would. Same seeds, sizes and steps on every side; each side runs one job first to load and warm
up (not counted). Each job then runs on every side back to back, in an order that rotates from job to
job, so drift on a shared machine hits the sides alike; the ratio of summed wall times is the overhead.
A third side says where overhead comes from: the service's `Worker` alone, run in this process on the
same loaded pipeline (no HTTP, queue, SQLite, SSE or server threads). worker/bare is the worker's own
cost (timing, previews, the PNG's metadata and fsync); service/worker is everything around it.
Goals (issue 7): ≤ 1.03 on the demo model on a CPU; ≤ 1.01 on a GPU with the real-size random-weight
Z-Image at 1024² (`--device cuda --full-size`, which builds that checkpoint first).

    .venv/bin/python -m bench.overhead [--quick] [--rounds 3] [--device cuda --full-size]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from . import common

GOAL_CPU = 1.03
GOAL_GPU = 1.01
PROMPT = "a lighthouse in a storm, dramatic clouds"


def service_job(
    http: httpx.Client, job: dict[str, Any], phases: dict[str, list[float]] | None = None
) -> float:
    """Submit one job and follow its stream to the end; seconds from the POST to the `done` event.
    With `phases`, the worker's own phase times for the job are appended to it (not timed)."""
    started = time.perf_counter()
    job_id = common.submit(http, job)
    with http.stream("GET", f"/api/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: ") and line[7:] in ("done", "failed", "cancelled"):
                if line[7:] != "done":
                    raise RuntimeError(f"job {job_id} ended {line[7:]}")
                seconds = time.perf_counter() - started
                break
        else:
            raise RuntimeError(f"the stream of job {job_id} ended without a terminal event")
    if phases is not None:
        for phase, value in http.get(f"/api/jobs/{job_id}").json()["phases"].items():
            phases.setdefault(phase, []).append(value)
    return seconds


class InProcess:
    """The service's worker alone, in this process, with the settings the server inherits: the same
    previews, and the job's parameters read as the API reads them."""

    def __init__(self, model: str, models_dir: Path, device: str, out: Path) -> None:
        from zimage_sse.config import Settings
        from zimage_sse.worker import Worker

        self.settings = Settings.from_env()
        self.worker = Worker(model, models_dir, out, device=device, preview_every=self.settings.preview_every)

    def job(self, job: dict[str, Any]) -> float:
        from zimage_sse.params import validate

        params = validate(job, self.settings)
        started = time.perf_counter()
        self.worker.run(secrets.token_hex(8), params, lambda _message: None, threading.Event())
        return time.perf_counter() - started


class Bare:
    """The checkpoint the worker loaded (the same loader as the server's), called directly."""

    def __init__(self, pipe: Any, out: Path) -> None:
        import torch

        self.torch, self.pipe, self.out = torch, pipe, out

    def job(self, job: dict[str, Any]) -> float:
        started = time.perf_counter()
        generator = self.torch.Generator("cpu").manual_seed(job["seed"])
        images = self.pipe(
            prompt=job["prompt"],
            height=job["height"],
            width=job["width"],
            num_inference_steps=job["steps"],
            guidance_scale=0.0,
            generator=generator,
        ).images
        for index, image in enumerate(images):
            image.save(self.out / f"{job['seed']}-{index}.png")
        return time.perf_counter() - started


def workload(sizes: Sequence[int], steps: int, count: int) -> list[dict[str, Any]]:
    return [
        {"prompt": PROMPT, "width": size, "height": size, "steps": steps, "seed": 1000 + index}
        for index, size in zip(range(count), [*sizes] * count, strict=False)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    common.add_common_args(parser, model="demo")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs a round on each side (default 4; quick 2)"
    )
    parser.add_argument(
        "--sizes", default=None, help="image sides, cycled (default 768,1024; GPU 1024; quick 256)"
    )
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="build and use a random-weight Z-Image-Turbo-sized checkpoint (6B transformer; needs a GPU)",
    )
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if args.quick and args.model == "demo":
        args.model = "tiny"
    rounds = args.rounds or (1 if args.quick else 3)
    count = args.jobs or (2 if args.quick else 4)
    default_sizes = "256" if args.quick else ("1024" if gpu else "768,1024")
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    run = common.Run.begin("Overhead (bench/overhead.py)", "bench.overhead", argv, args.device)
    goal = GOAL_GPU if gpu else GOAL_CPU

    with tempfile.TemporaryDirectory(prefix="zimage-overhead-") as scratch:
        if args.full_size:
            from .full_size import build_full_size

            location = build_full_size(Path(scratch) / "full-size", args.device)
            args.model = str(location)
            print(f"built the full-size random-weight checkpoint in {location}", file=sys.stderr)
        jobs = workload(sizes, args.steps, count)
        warm = {**jobs[0], "seed": 1}
        sides = ("service", "worker", "bare")
        times: dict[str, list[float]] = {side: [] for side in sides}
        phases: dict[str, list[float]] = {}
        with common.serve_for(args) as server, server.client() as http:
            service_job(http, warm)
            models_dir = args.models_dir or Path(scratch) / "models"
            out = Path(scratch) / "in-process"
            out.mkdir()
            alone = InProcess(args.model, models_dir, args.device, out)
            bare = Bare(alone.worker.load(), out)  # one copy of the weights for both
            alone.job(warm)
            bare.job(warm)
            run_side: dict[str, Callable[[dict[str, Any]], float]] = {
                "service": lambda job: service_job(http, job, phases),
                "worker": alone.job,
                "bare": bare.job,
            }
            for number in range(rounds):
                for index, job in enumerate(jobs):
                    # Each job on every side back to back, the order rotating, so that drift on a
                    # shared machine (tens of seconds of it) hits the three sides alike.
                    turn = (number * len(jobs) + index) % len(sides)
                    for side in sides[turn:] + sides[:turn]:
                        times[side].append(run_side[side](job))
                print(f"round {number + 1}/{rounds} done", file=sys.stderr, flush=True)

    service, alone_s, plain = (sum(times[side]) for side in sides)
    ratio = service / plain
    rows = [
        [side, str(len(values)), f"{common.median(values):.3f}", f"{sum(values):.3f}"]
        for side, values in (
            ("service (HTTP, SSE, SQLite)", times["service"]),
            ("worker alone (in process)", times["worker"]),
            ("bare pipe()", times["bare"]),
        )
    ]
    worker = [sum(values) for values in zip(*phases.values(), strict=True)]
    outside = [wall - inner for wall, inner in zip(times["service"], worker, strict=True)]
    breakdown = ", ".join(f"{phase} {common.median(values) * 1000:.1f}" for phase, values in phases.items())
    lines = [
        f"{'full-size random-weight Z-Image' if args.full_size else args.model + ' model'} on {args.device},"
        f" sizes {','.join(map(str, sizes))}, {args.steps} steps, {rounds} rounds × {count} jobs a side"
        " (interleaved job by job, order rotating)",
        *common.table(["side", "jobs", "median s", "total s"], rows),
        f"service, median ms a job: worker phases {breakdown}; outside the worker (HTTP, queue, events,"
        f" SQLite, SSE) {common.median(outside) * 1000:.1f}",
        f"where it goes: worker/bare {alone_s / plain:.4f} (the worker's own cost), service/worker"
        f" {service / alone_s:.4f} (HTTP, queue, SQLite, SSE, the server's other threads)",
        f"ratio service/bare: {ratio:.4f}  (goal <= {goal}: {common.verdict(ratio <= goal)})",
    ]
    common.report(run, args, lines)
    return 0 if ratio <= goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
