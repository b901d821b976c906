"""What keeping the previews for the animation costs: the same jobs with frames kept and not kept,
then the time and bytes to build one animation from them.

Run: .venv/bin/python -m bench.frames [--pairs 4] [--size 512] [--steps 8] [--model demo|tiny]
     [--models-dir DIR] [--device cpu|cuda]

The jobs run through the real JobService and Dispatcher (in-process, SQLite in a temp dir), with a
preview after every step, on one warm worker; between jobs the service keeps its previews or not
(`JobService.frames`), alternating (off, on, on, off, …) so drift on a shared machine hits both alike.
A job's time is from submit to its terminal event, as a client sees it: with frames kept it includes
waiting for the last preview's write before `done`. Goal (issue 18): the previews exist already, so
keeping them must not slow the job: ratio ≤ 1.02.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from zimage_sse import frames
from zimage_sse.broadcaster import Broadcaster
from zimage_sse.config import Settings
from zimage_sse.db import Store
from zimage_sse.params import JobParams
from zimage_sse.service import JobService
from zimage_sse.worker import Worker

GOAL = 1.02


class TimedFrames(frames.Frames):
    """The real Frames, timing what it does: on the event loop (deciding, decoding base64) and on its
    own thread (writing), so the cost shows apart from the machine's noise."""

    def __init__(self, directory: Path, *, max_count: int, max_bytes: int) -> None:
        super().__init__(directory, max_count=max_count, max_bytes=max_bytes)
        self.loop_s = 0.0
        self.thread_s = 0.0
        self.settle_s = 0.0

    def keep(self, job_id: str, total: int, step: int, url: str) -> list[int]:
        start = time.perf_counter()
        try:
            return super().keep(job_id, total, step, url)
        finally:
            self.loop_s += time.perf_counter() - start

    def _apply(self, job_id: str, first: bool, step: int, data: bytes | None, dropped: list[int]) -> None:
        start = time.perf_counter()
        try:
            super()._apply(job_id, first, step, data, dropped)
        finally:
            self.thread_s += time.perf_counter() - start

    async def settle(self, job_id: str) -> list[int]:
        start = time.perf_counter()
        try:
            return await super().settle(job_id)
        finally:
            self.settle_s += time.perf_counter() - start


async def run_job(manager: JobService, params: JobParams) -> tuple[str, float]:
    start = time.perf_counter()
    state = await manager.submit(params)
    async for _event in manager.until_end(state.id):
        pass
    ended = await manager.get(state.id)
    assert ended.status == "done", ended.error
    return state.id, time.perf_counter() - start


async def measure(args: argparse.Namespace, scratch: Path) -> int:
    defaults = Settings()
    models_dir = args.models_dir or scratch / "models"
    images = scratch / "images"
    images.mkdir(parents=True)
    kept = TimedFrames(scratch / "frames", max_count=defaults.frames_max, max_bytes=defaults.frames_max_bytes)
    store = await Store.open(scratch / "bench.sqlite")
    worker = Worker(args.model, models_dir, images, device=args.device, preview_every=1)
    manager = JobService(store, worker, Broadcaster())
    await manager.start()
    params = JobParams("a lighthouse in a storm", "", args.size, args.size, args.steps, 0.0, 1, 1)
    times: dict[bool, list[float]] = {False: [], True: []}
    done: list[str] = []
    try:
        await run_job(manager, params)  # load and warm up; not counted
        for pair in range(args.pairs):
            for keep in (False, True) if pair % 2 == 0 else (True, False):
                manager.frames = kept if keep else None
                job_id, seconds = await run_job(manager, params)
                times[keep].append(seconds)
                if args.verbose:
                    print(
                        f"  pair {pair}: frames {'kept' if keep else 'not kept'}: {seconds:.3f} s", flush=True
                    )
                if keep:
                    done.append(job_id)
    finally:
        await manager.stop()
        await store.close()

    job_id = done[-1]
    steps = frames.kept(scratch / "frames", job_id)
    frame_bytes = frames.size(scratch / "frames", job_id)
    builds = {}
    for fmt in frames.FORMATS:
        start = time.perf_counter()
        path = frames.animation(scratch / "frames", job_id, images / f"{job_id}-0.png", fmt)
        assert path is not None
        builds[fmt] = (time.perf_counter() - start, path.stat().st_size)
        start = time.perf_counter()
        frames.animation(scratch / "frames", job_id, images / f"{job_id}-0.png", fmt)
        builds[fmt + " cached"] = (time.perf_counter() - start, path.stat().st_size)
    kept.close()

    off, on = sum(times[False]), sum(times[True])
    ratio = on / off
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, device {worker.device}")
    print(f"{args.model} model, {args.size}x{args.size}, {args.steps} steps, a preview every step,")
    print(f"{args.pairs} pairs (order alternating), submit → terminal event through JobService")
    print(f"frames not kept:   median {statistics.median(times[False]):.3f} s, total {off:.3f} s")
    print(f"frames kept:       median {statistics.median(times[True]):.3f} s, total {on:.3f} s")
    print(f"ratio kept/not: {ratio:.4f}  (goal <= {GOAL}: {'PASS' if ratio <= GOAL else 'FAIL'})")
    print(f"kept per job: {len(steps)} previews, {frame_bytes / 1e3:.1f} kB on disk")
    jobs = len(times[True])
    print(
        f"cost per job kept: {kept.loop_s / jobs * 1000:.2f} ms on the event loop,"
        f" {kept.thread_s / jobs * 1000:.2f} ms on the frames thread (the worker's thread: none),"
        f" {kept.settle_s / jobs * 1000:.2f} ms from the job's end to `done` (the last write and a listing)"
    )
    for name, (seconds, size) in builds.items():
        print(f"animation {name:<12} {seconds * 1000:8.1f} ms, {size / 1e3:.1f} kB")
    return 0 if ratio <= GOAL else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--model", default="demo", help="tiny, demo or a checkpoint directory")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--verbose", action="store_true", help="print every job's time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        return asyncio.run(measure(args, Path(scratch)))


if __name__ == "__main__":
    raise SystemExit(main())
