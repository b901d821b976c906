"""What live previews cost: the same jobs with previews off and after every step.

Run: .venv/bin/python -m bench.preview_overhead [--pairs 4] [--size 768] [--models-dir DIR]
     [--model demo|tiny|CHECKPOINT] [--device cpu|cuda]

Jobs alternate (off, on, off, on, …) on one warm worker so drift on a shared machine hits both
alike; the ratio of the summed wall times is the overhead. Goal (issue): ≤ 1.02 on the demo model;
on a GPU, with the full-size checkpoint of bench/full_size.py, the same goal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from zimage_sse.params import JobParams
from zimage_sse.pipeline import is_embedded
from zimage_sse.worker import Worker

GOAL = 1.02


def run_job(worker: Worker, params: JobParams, job_id: str) -> float:
    start = time.perf_counter()
    worker.run(job_id, params, lambda _message: None, threading.Event())
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--model", default="demo", help="tiny, demo or a checkpoint directory")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        models_dir = args.models_dir or Path(scratch) / "models"
        worker = Worker(args.model, models_dir, Path(scratch) / "images", device=args.device)
        params = JobParams("a lighthouse in a storm", "", args.size, args.size, args.steps, 0.0, 1, 1)
        worker.preview_every = 0
        run_job(worker, params, "0" * 16)  # load and warm up; not counted
        times: dict[int, list[float]] = {0: [], 1: []}
        for pair in range(args.pairs):
            for every in (0, 1) if pair % 2 == 0 else (1, 0):
                worker.preview_every = every
                times[every].append(run_job(worker, params, f"{pair:015x}{every}"))

    off, on = sum(times[0]), sum(times[1])
    ratio = on / off
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, device {worker.device}")
    model = f"{args.model} model" if is_embedded(args.model) else "full-size random-weight checkpoint"
    print(f"{model}, {args.size}x{args.size}, {args.steps} steps, {args.pairs} pairs (order alternating)")
    print(f"previews off:          median {statistics.median(times[0]):.3f} s, total {off:.3f} s")
    print(f"preview every step:    median {statistics.median(times[1]):.3f} s, total {on:.3f} s")
    print(f"ratio on/off: {ratio:.4f}  (goal <= {GOAL}: {'PASS' if ratio <= GOAL else 'FAIL'})")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
