"""The worker on a CUDA device: what only a GPU can show (skipped elsewhere; `bench/gpu.sh` runs it first).

On a GPU the worker times each step and phase with CUDA events and reports them from another thread
(timing.py `Clock`, `Reporter`), so that it never makes the device wait while it launches the next
kernels. This checks that the worker adds no synchronising call of its own to what diffusers' `pipe()`
makes anyway; that the events still go out in order with true timings is the job-sequence test of
tests/test_pipeline.py, which runs on every device there is.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from zimage_sse import pipeline
from zimage_sse.worker import Worker

from .test_pipeline import Recorder, make_params, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PACKAGE = str(Path(pipeline.__file__).parent)


@pytest.fixture(scope="module")
def gpu_worker(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Worker:
    worker = Worker("tiny", models_dir, tmp_path_factory.mktemp("images"), device="cuda")
    run(worker, make_params(steps=2))  # loads and warms up
    return worker


@contextmanager
def synchronising_calls() -> Iterator[list[tuple[str, str, int]]]:
    """Every call that made the CPU wait for the GPU, as (thread name, file, line) of the Python code
    that made it, using torch's own sync debug mode."""
    calls: list[tuple[str, str, int]] = []

    def record(message: Any, category: Any, filename: str, lineno: int, *_: Any, **__: Any) -> None:
        if "synchronizing" in str(message):
            calls.append((threading.current_thread().name, filename, lineno))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield calls
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_the_worker_adds_no_wait_for_the_gpu_to_what_pipe_makes(gpu_worker: Worker) -> None:
    """A synchronising call on the worker's thread leaves the GPU idle while the next kernels are
    launched: at 1024² on an H200, waiting at each step and phase cost 5-7 % (bench/RESULTS.md "GPU")."""
    params = make_params(steps=8, width=512, height=512)
    pipe = gpu_worker.load()

    def bare() -> None:
        pipe(
            prompt=params.prompt,
            height=params.height,
            width=params.width,
            num_inference_steps=params.steps,
            guidance_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(params.seed),
        )

    def service() -> None:
        run(gpu_worker, params, Recorder())

    def count(action: Callable[[], None]) -> list[tuple[str, str, int]]:
        action()  # once unobserved, so both are as warm
        with synchronising_calls() as calls:
            action()
        return [call for call in calls if call[0] == threading.current_thread().name]

    ours, theirs = count(service), count(bare)

    assert [call for call in ours if call[1].startswith(PACKAGE)] == []
    assert len(ours) <= len(theirs), f"worker {ours}\npipe() {theirs}"
