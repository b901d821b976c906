"""How a job's steps and phases are timed on its device without making the worker wait for it: marks
on the device's timeline (CUDA events on a GPU, clock readings on a CPU), read and reported in order on
a thread of their own, and GPU load sampled along the way."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import torch

from .gpu import GpuMonitor
from .messages import Emit, PhaseStarted

# Sample GPU load at most this often during a job: NVML reads cost microseconds, but need not be per step.
GPU_SAMPLE_EVERY_S = 0.5


@dataclass
class LoadSamples:
    monitor: GpuMonitor
    util: list[float] = field(default_factory=list)
    mem_peak_mb: float | None = None
    last: float = float("-inf")

    def take(self, now: float) -> None:
        if now - self.last < GPU_SAMPLE_EVERY_S:
            return
        self.last = now
        sample = self.monitor.sample()
        if sample is not None:
            self.util.append(sample.util)
            self.mem_peak_mb = max(self.mem_peak_mb or 0.0, sample.mem_used_mb)

    @property
    def util_mean(self) -> float | None:
        return sum(self.util) / len(self.util) if self.util else None


@dataclass(frozen=True)
class Mark:
    """A point on the device's timeline: a CUDA event on a GPU, a clock reading on the CPU."""

    at: float | None = None
    event: torch.cuda.Event | None = None

    def reached(self) -> None:
        """Wait until the device has got here (at once on the CPU, which computes as it goes)."""
        if self.event is not None:
            self.event.synchronize()

    def since(self, earlier: Mark) -> float:
        """Seconds of device time from `earlier` to here; both must have been reached."""
        if self.event is not None and earlier.event is not None:
            return float(earlier.event.elapsed_time(self.event)) / 1000
        assert self.at is not None and earlier.at is not None
        return self.at - earlier.at


@dataclass(frozen=True)
class Clock:
    """Marks the device's timeline without waiting for it.

    diffusers' Z-Image loop never waits for the GPU, and neither does this: a mark is a CUDA event
    recorded on the device's stream, read later by the reporter. Waiting for the GPU at every step and
    phase (torch.cuda.synchronize) kept the timings true but left the GPU idle while the next kernels
    were launched: 5-7 % of a job on an H200 (bench/RESULTS.md "GPU"). A blocking event puts the
    waiting thread to sleep instead of spinning a core.
    """

    device: str

    def mark(self) -> Mark:
        if not self.device.startswith("cuda"):
            return Mark(at=time.perf_counter())
        event = torch.cuda.Event(enable_timing=True, blocking=True)  # type: ignore[no-untyped-call]
        event.record(torch.cuda.current_stream(torch.device(self.device)))
        return Mark(event=event)


class Reporter:
    """Reports what the device has done, in order, from one thread that is not the worker's: each
    report waits for its mark, so a step's event goes out when the GPU has finished the step, and the
    worker goes on launching the next one meanwhile."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._sent: list[Future[None]] = []

    def after(self, mark: Mark | None, action: Callable[[], None]) -> None:
        def report() -> None:
            if mark is not None:
                mark.reached()
            action()

        self._sent.append(self._executor.submit(report))

    def drain(self) -> BaseException | None:
        """Wait for every report (none may follow the job's end); the first one's error, if any."""
        wait(self._sent)
        errors = [f.exception() for f in self._sent]
        self._sent.clear()
        return next((e for e in errors if e is not None), None)


@dataclass
class Timer:
    clock: Clock
    report: Reporter
    phases: dict[str, float] = field(default_factory=dict)

    def run(self, phase: str, emit: Emit, action: Callable[[], Any]) -> Any:
        start = self.clock.mark()
        self.report.after(start, lambda: emit(PhaseStarted(phase)))
        result = action()
        end = self.clock.mark()
        self.report.after(end, lambda: self.phases.__setitem__(phase, end.since(start)))
        return result
