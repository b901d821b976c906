"""Prometheus metrics: the app's own registry, the metrics in it, and the recorder that feeds them.

Nothing here is module-level state (STYLE.md "no singletons"): `Metrics(manager)` builds a
`CollectorRegistry` of its own, which the lifespan keeps on `app.state.metrics`. Counters and
histograms are fed by `MetricsRecorder`, a task subscribed to the broadcaster's ALL topic, so the job
manager and the worker know nothing about metrics. Gauges (queue, subscribers, GPU) are read when
Prometheus scrapes, by `LiveCollector`.

Only terminal events are recorded: step events are coalesced per subscriber (broadcaster.py), so the
step times come from the job's state when it ends, where every step is kept. The manager updates a
job's state before it publishes the event, so on a terminal event `manager.get` has the final state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from .broadcaster import ALL, Subscription
from .eta import size_label
from .events import PHASES, TERMINAL, Event
from .service import JobNotFound, JobService, JobState

logger = logging.getLogger(__name__)

# Job run time (start to end, loading included): about 0.5–7 s per job on the H200
# (shared/data/h200-step-profile.json, 512² to 2048²), about 10 s for a 1024² job of the demo model on
# 2 CPU cores (README), and minutes for a first job that loads a real checkpoint.
JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Phases span four orders of magnitude: encode 30–50 ms and decode 22–400 ms warm, 1.3 s encode on the
# first call (H200 profile), denoising up to ~7 s at 2048², loading tens of seconds to minutes.
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Steps are 40–730 ms on the H200 (43 ms at 512², 144 ms at 1024², 725 ms at 2048²; first call up to
# 1 s), about 0.1–1 s on the CPU demo model and a few ms on the tiny test model: fine buckets over
# the H200 range, coarser ones for CPUs and contention.
STEP_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
)
# |predicted total at job start − actual| in seconds: tenths of a second for a known size, seconds for
# an unseen size, a warm-up or contention the prior did not know.
ETA_ERROR_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# Any multiple of 16 is a valid size, so a client could make one series per size: beyond this many
# distinct sizes, steps are counted under size="other" to keep the series count bounded.
MAX_SIZE_LABELS = 32
OTHER_SIZE = "other"


class Metrics:
    """The registry and every metric in it; `record(event)` takes what a terminal event reports."""

    def __init__(self, manager: JobService) -> None:
        self.manager = manager
        self.registry = CollectorRegistry()
        self.jobs_finished = Counter(
            "zimage_jobs_finished",
            "Jobs that ended since the process started, by status.",
            ["status"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "zimage_job_duration_seconds",
            "Run time of done jobs, from start to end (loading included, queueing not).",
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.phase_duration = Histogram(
            "zimage_phase_duration_seconds",
            "Time of each phase of done jobs.",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "zimage_step_duration_seconds",
            "Time of each denoising step on the device, by image size (WxH, or WxHxN for N images).",
            ["size"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.eta_error = Histogram(
            "zimage_eta_abs_error_seconds",
            "Absolute difference between the predicted total at job start and the actual run time.",
            buckets=ETA_ERROR_BUCKETS,
            registry=self.registry,
        )
        self.recorder_overflows = Counter(
            "zimage_metrics_recorder_overflows",
            "Times the metrics recorder fell behind the event feed and re-subscribed (events were lost).",
            registry=self.registry,
        )
        # Series that exist from the first scrape, so rates and dashboards need no special case.
        for status in sorted(TERMINAL):
            self.jobs_finished.labels(status)
        for phase in PHASES:
            self.phase_duration.labels(phase)
        self._sizes: set[str] = set()
        self.recorder = MetricsRecorder(self)
        self.registry.register(LiveCollector(manager, self.recorder))

    async def start(self) -> None:
        self.recorder.start()

    async def stop(self) -> None:
        await self.recorder.stop()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def record(self, event: Event) -> None:
        if not event.terminal or event.job_id is None:
            return
        try:
            state: JobState | None = await self.manager.get(event.job_id)
        except JobNotFound:
            logger.warning("metrics: job %s ended but is no longer known", event.job_id)
            state = None
        if state is not None:
            self._steps(state)
            if event.kind == "done":
                self._done(state)
        # Counted last, so a scrape that shows the job's end shows its timings too.
        self.jobs_finished.labels(event.kind).inc()

    def _done(self, state: JobState) -> None:
        """Run time, phases and ETA error: only a job that ran to the end has them complete."""
        elapsed = state.elapsed_s()
        if elapsed is not None:
            self.job_duration.observe(elapsed)
        for phase, seconds in state.phases.items():
            self.phase_duration.labels(phase).observe(seconds)
        predicted = _predicted_at_start(state)
        if predicted is not None and elapsed is not None:
            self.eta_error.observe(abs(predicted - elapsed))

    def _steps(self, state: JobState) -> None:
        """Every step the job ran, cancelled and failed jobs included: each was a real step."""
        if not state.step_s:
            return
        params = state.params
        size = size_label(params.width, params.height, params.num_images)
        if size not in self._sizes:
            if len(self._sizes) >= MAX_SIZE_LABELS:
                size = OTHER_SIZE
            else:
                self._sizes.add(size)
        histogram = self.step_duration.labels(size)
        for seconds in state.step_s:
            histogram.observe(seconds)


def _predicted_at_start(state: JobState) -> float | None:
    """The total the ETA engine predicted when the job started (None: it had nothing to go on)."""
    if state.live is None or not state.live.history:
        return None
    return state.live.history[0][1]


class LiveCollector:
    """Gauges read at scrape time, from the manager, the broadcaster and the worker's GPU sample."""

    def __init__(self, manager: JobService, recorder: MetricsRecorder) -> None:
        self._manager = manager
        self._recorder = recorder

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        return self._families([(d.device, d.runner.gpu_sample()) for d in self._manager.dispatchers])

    def _families(self, gpus: list[tuple[str, Any]]) -> list[Metric]:
        manager = self._manager
        queued = len(manager.queued())
        running = len(manager.running_jobs())
        active = GaugeMetricFamily("zimage_jobs_active", "Jobs queued or running now.", labels=["status"])
        active.add_metric(["queued"], queued)
        active.add_metric(["running"], running)
        # The recorder is a subscriber too; it is not a client.
        clients = manager.broadcaster.subscriber_count - (1 if self._recorder.subscribed else 0)
        loaded = GaugeMetricFamily(
            "zimage_model_loaded", "1 when the model is resident on the device.", labels=["device"]
        )
        busy = GaugeMetricFamily("zimage_device_busy", "1 while the device runs a job.", labels=["device"])
        for dispatcher in manager.dispatchers:
            loaded.add_metric([dispatcher.device], int(dispatcher.runner.loaded))
            busy.add_metric([dispatcher.device], int(dispatcher.running is not None))
        families: list[Metric] = [
            GaugeMetricFamily(
                "zimage_queue_depth", "Jobs waiting to run (the running jobs not counted).", queued
            ),
            active,
            GaugeMetricFamily("zimage_sse_subscribers", "Open event streams (SSE clients).", clients),
            loaded,
            busy,
        ]
        util = GaugeMetricFamily(
            "zimage_gpu_utilization_ratio", "Share of time a kernel ran (NVML).", labels=["device"]
        )
        used = GaugeMetricFamily("zimage_gpu_memory_used_bytes", "GPU memory in use.", labels=["device"])
        total = GaugeMetricFamily("zimage_gpu_memory_total_bytes", "GPU memory in all.", labels=["device"])
        sampled = [(device, gpu) for device, gpu in gpus if gpu is not None]
        for device, gpu in sampled:
            util.add_metric([device], float(gpu.util) / 100.0)
            used.add_metric([device], float(gpu.mem_used_mb) * 2**20)
            total.add_metric([device], float(gpu.mem_total_mb) * 2**20)
        if sampled:
            # Absent on CPU: no series rather than NaN, so "no GPU" is not mistaken for a broken one.
            families += [util, used, total]
        return families


class MetricsRecorder:
    """Feeds `Metrics` from every event on the broadcaster's ALL topic, for the life of the app."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._broadcaster = metrics.manager.broadcaster
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None

    def start(self) -> None:
        # Subscribed here, not in the task, so no event published after start() is missed.
        self._subscription = self._broadcaster.open(ALL)
        self._task = asyncio.create_task(self._run(), name="metrics-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._release()

    def _release(self) -> None:
        if self._subscription is not None:
            self._broadcaster.release(ALL, self._subscription)
            self._subscription = None

    async def _run(self) -> None:
        while self._subscription is not None:
            subscription = self._subscription
            async for event in subscription:
                try:
                    await self._metrics.record(event)
                except Exception:
                    # The recorder must outlive any one event, or metrics stop for good.
                    logger.exception("metrics: recording a %s event failed", event.kind)
            self._release()
            if not subscription.overflowed:
                return  # closed by the broadcaster: the app is stopping
            logger.warning("metrics: the recorder fell behind the event feed; re-subscribing")
            self._metrics.recorder_overflows.inc()
            self._subscription = self._broadcaster.open(ALL)
