"""The metrics recorder in-process: what a terminal event records, overflow recovery, the GPU gauges.

The end-to-end view (real jobs on a real server) is tests/test_ops.py; here the events are published
by hand, so the branches a CPU server never reaches (a GPU sample, an overflowed subscription) run too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from zimage_sse.broadcaster import Broadcaster
from zimage_sse.config import Settings
from zimage_sse.db import Store
from zimage_sse.estimate import LiveEstimate
from zimage_sse.events import Event
from zimage_sse.gpu import GpuSample
from zimage_sse.metrics import MAX_SIZE_LABELS, OTHER_SIZE, Metrics
from zimage_sse.params import JobParams, validate
from zimage_sse.service import Emit, JobService, JobState

# Room for the queued events of every job one test submits, so only the overflow test overflows.
QUEUE_SIZE = 64


class FakeRunner:
    """Stands in for the worker: the manager never runs a job here (its queue task is not started)."""

    model = "fake"
    device = "cuda:0"
    dtype_name = "bfloat16"
    loaded = True
    warm = True

    def __init__(self, sample: GpuSample | None) -> None:
        self.sample = sample
        self.load_timings: dict[str, float] = {}

    def gpu_sample(self) -> GpuSample | None:
        return self.sample

    def ran(self, params: JobParams) -> bool:
        return True

    def thread_started(self) -> None:
        raise AssertionError("the manager's worker thread never starts in these tests")

    def between_jobs(self) -> None:
        raise AssertionError("no job runs in these tests")

    def load(self, emit: Emit | None = None) -> Any:
        raise AssertionError("the model is never loaded in these tests")

    def unload(self) -> None:
        raise AssertionError("the model is never unloaded in these tests")

    def run(self, job_id: str, params: JobParams, emit: Emit, cancel: threading.Event) -> Any:
        raise AssertionError("no job runs in these tests")


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[JobService]:
    store = await Store.open(tmp_path / "test.db")
    runner = FakeRunner(GpuSample(util=42.0, mem_used_mb=1024.0, mem_total_mb=4096.0))
    manager = JobService(store, runner, Broadcaster(QUEUE_SIZE))
    yield manager
    await manager.stop()
    await store.close()


@pytest.fixture
async def metrics(manager: JobService) -> AsyncIterator[Metrics]:
    metrics = Metrics(manager)
    await metrics.start()
    yield metrics
    await metrics.stop()


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def finished_is(metrics: Metrics, status: str, count: int) -> bool:
    return sample(metrics, "zimage_jobs_finished_total", status=status) == count


async def settle(condition: Callable[[], bool]) -> None:
    """Let the recorder task run until `condition` holds (it needs only loop turns, no time)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the recorder did not take the event in")


async def ended(manager: JobService, width: int, height: int, **state: Any) -> JobState:
    """A job as the manager leaves it when it ends, without running it."""
    job = await manager.submit(validate({"prompt": "p", "width": width, "height": height}, Settings()))
    for name, value in state.items():
        setattr(job, name, value)
    return job


async def test_a_done_job_records_its_run_steps_phases_and_eta_error(
    manager: JobService, metrics: Metrics
) -> None:
    job = await ended(
        manager,
        512,
        768,
        status="done",
        started_at=100.0,
        finished_at=102.5,
        step_s=[0.2, 0.1, 0.1],
        phases={"encoding": 0.03, "denoising": 0.4, "decoding": 0.08, "saving": 0.01},
        live=LiveEstimate(None, 3, 100.0),
    )
    assert job.live is not None
    job.live.history[:] = [(0.0, 2.0), (1.0, 2.4)]  # predicted 2.0 s at the start
    manager.broadcaster.publish(Event("done", {"status": "done"}, job_id=job.id))
    await settle(lambda: sample(metrics, "zimage_jobs_finished_total", status="done") == 1)

    assert sample(metrics, "zimage_job_duration_seconds_count") == 1
    assert sample(metrics, "zimage_job_duration_seconds_sum") == pytest.approx(2.5)
    assert sample(metrics, "zimage_step_duration_seconds_count", size="512x768") == 3
    assert sample(metrics, "zimage_step_duration_seconds_sum", size="512x768") == pytest.approx(0.4)
    assert sample(metrics, "zimage_phase_duration_seconds_sum", phase="denoising") == pytest.approx(0.4)
    assert sample(metrics, "zimage_phase_duration_seconds_count", phase="loading") == 0
    assert sample(metrics, "zimage_eta_abs_error_seconds_count") == 1
    assert sample(metrics, "zimage_eta_abs_error_seconds_sum") == pytest.approx(0.5)


async def test_a_cancelled_job_counts_its_steps_but_no_run_time(
    manager: JobService, metrics: Metrics
) -> None:
    job = await ended(manager, 256, 256, status="cancelled", started_at=1.0, finished_at=2.0, step_s=[0.1])
    manager.broadcaster.publish(Event("cancelled", {"status": "cancelled"}, job_id=job.id))
    await settle(lambda: sample(metrics, "zimage_jobs_finished_total", status="cancelled") == 1)

    assert sample(metrics, "zimage_step_duration_seconds_count", size="256x256") == 1
    assert sample(metrics, "zimage_job_duration_seconds_count") == 0
    assert sample(metrics, "zimage_eta_abs_error_seconds_count") == 0


async def test_sizes_past_the_label_limit_share_one_series(manager: JobService, metrics: Metrics) -> None:
    for index in range(MAX_SIZE_LABELS + 2):
        job = await ended(manager, 64 + 16 * index, 64, status="failed", step_s=[0.1])
        manager.broadcaster.publish(Event("failed", {"status": "failed"}, job_id=job.id))
        await settle(partial(finished_is, metrics, "failed", index + 1))

    step_count = "zimage_step_duration_seconds_count"
    assert sample(metrics, step_count, size=OTHER_SIZE) == 2
    assert sample(metrics, step_count, size=f"{64 + 16 * (MAX_SIZE_LABELS - 1)}x64") == 1
    assert sample(metrics, step_count, size=f"{64 + 16 * MAX_SIZE_LABELS}x64") is None


async def test_the_recorder_resubscribes_after_an_overflow(manager: JobService, metrics: Metrics) -> None:
    # More events than the subscriber queue holds, in one loop turn: the recorder cannot keep up.
    for _ in range(QUEUE_SIZE + 1):
        manager.broadcaster.publish(Event("queue", {"running": None, "queued": []}))
    await settle(lambda: sample(metrics, "zimage_metrics_recorder_overflows_total") == 1)

    job = await ended(manager, 256, 256, status="cancelled")
    manager.broadcaster.publish(Event("cancelled", {"status": "cancelled"}, job_id=job.id))
    await settle(lambda: sample(metrics, "zimage_jobs_finished_total", status="cancelled") == 1)
    assert manager.broadcaster.subscriber_count == 1  # the new subscription only


async def test_gauges_are_read_at_scrape(manager: JobService, metrics: Metrics) -> None:
    await manager.submit(validate({"prompt": "waiting"}, Settings()))
    client = manager.broadcaster.open("*")

    assert sample(metrics, "zimage_queue_depth") == 1
    assert sample(metrics, "zimage_jobs_active", status="queued") == 1
    assert sample(metrics, "zimage_jobs_active", status="running") == 0
    assert sample(metrics, "zimage_sse_subscribers") == 1  # the client; the recorder is not counted
    assert sample(metrics, "zimage_model_loaded", device="cuda:0") == 1
    assert sample(metrics, "zimage_device_busy", device="cuda:0") == 0
    assert sample(metrics, "zimage_gpu_utilization_ratio", device="cuda:0") == pytest.approx(0.42)
    assert sample(metrics, "zimage_gpu_memory_used_bytes", device="cuda:0") == 1024 * 2**20
    assert sample(metrics, "zimage_gpu_memory_total_bytes", device="cuda:0") == 4096 * 2**20

    manager.broadcaster.release("*", client)
    assert sample(metrics, "zimage_sse_subscribers") == 0
    runner = manager.dispatchers[0].runner
    assert isinstance(runner, FakeRunner)
    runner.sample = None  # a CPU: no GPU series at all
    assert sample(metrics, "zimage_gpu_utilization_ratio", device="cuda:0") is None
    assert b"zimage_gpu_" not in metrics.render()


async def test_the_recorder_stops_when_the_broadcaster_closes(manager: JobService, metrics: Metrics) -> None:
    manager.broadcaster.close_all()
    await settle(lambda: not metrics.recorder.subscribed)
    assert manager.broadcaster.subscriber_count == 0
