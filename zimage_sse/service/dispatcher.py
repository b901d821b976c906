"""One dispatcher per device: takes the job the plan gives its device when the device is free, runs
it on the device's own thread, and turns what the worker reports into published events.

Everything here runs on the event loop; the runner runs in this dispatcher's executor thread and
reaches the loop only through `Handoff`, which survives a closed loop (STYLE.md, "datasette").
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from ..estimate import LiveEstimate
from ..eta import Key, Prediction
from ..events import Cancelled, JobFailed
from ..logs import job_context
from ..messages import LoadProgress, Message, Outcome, PhaseStarted, PreviewReady, StepDone
from ..params import JobParams
from .planner import DeviceView
from .runner import Runner
from .state import JobState, seconds
from .status import ModelState, ModelStatus

if TYPE_CHECKING:
    from .jobs import JobService

logger = logging.getLogger(__name__)

# A device whose load or job failed gets no new work for this long while another device can take it;
# then it is tried again (a fixed checkpoint, freed memory), so it recovers without a restart.
RECOVER_AFTER_S = 30.0


class Handoff:
    """Calls from the worker's thread onto the loop; dropped once the loop has closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __call__(self, callback: Any, *args: Any) -> None:
        if self._loop.is_closed():
            return
        with suppress(RuntimeError):  # closed between the check and the call
            self._loop.call_soon_threadsafe(callback, *args)


class Dispatcher:
    def __init__(self, service: JobService, runner: Runner, *, unload_after: float = 0.0) -> None:
        self.service = service
        self.runner = runner
        self.device = runner.device
        self.key: Key = (runner.model, runner.device, runner.dtype_name)
        self._unload_after = unload_after
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"worker-{runner.device}", initializer=runner.thread_started
        )
        self.status = ModelStatus(runner.model, runner.device, runner.dtype_name)
        self.running: JobState | None = None
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()  # set while no job runs: what a shutdown waits for
        self.idle.set()
        self._preload: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- what the planner and the pages see ---------------------------------------------------

    def view(self, now: float) -> DeviceView:
        free_in: float | None = 0.0
        if self.running is not None:
            free_in = self.running.remaining_s(now)
        elif self._preload is not None and not self._preload.done():
            free_in = self.load_left(now)
        available = not (self.status.state == ModelState.FAILED and now - self.status.since < RECOVER_AFTER_S)
        busy = self.running is not None
        return DeviceView(
            self.device,
            free_in,
            loaded=self.runner.loaded or busy,
            warm=self.runner.warm or busy,
            available=available,
        )

    def predict(
        self, params: JobParams, *, loaded: bool, warm_up: bool, gpu_util: float | None = None
    ) -> Prediction | None:
        """The ETA engine's prediction for a job on this device (in the state it is in now: a cold
        one has run no size yet)."""
        return self.service.eta.predict(
            self.key,
            params.width,
            params.height,
            params.num_images,
            params.steps,
            loaded=loaded,
            warm_up=warm_up,
            first_of_size=warm_up or not self.runner.ran(params),
            gpu_util=gpu_util,
        )

    def load_left(self, now: float) -> float | None:
        expected = self.service.eta.load_estimate(self.key)
        return None if expected is None else max(0.0, expected - (now - self.status.since))

    def status_dict(self) -> dict[str, Any]:
        return self.status.to_dict(self.service.eta.load_estimate(self.key))

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name=f"dispatcher-{self.device}")

    def preload(self) -> None:
        """Load the model now rather than with the first job; jobs wait for it meanwhile."""
        self._preload = asyncio.create_task(self._load_model(), name=f"preload-{self.device}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        # A preload may still be running; wait for it off the loop, which still serves requests.
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)

    async def _loop(self) -> None:
        while True:
            if self._preload is not None:
                await asyncio.wait({self._preload})
                self._preload = None
                self.service.queue_changed()  # the load is over: the plan changes
            if self.service.draining:
                return  # what is queued stays queued, in the store, for the restart
            state = self.service.claim(self)
            if state is None:
                self.wakeup.clear()
                if self._unload_after > 0 and self.runner.loaded:
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), self._unload_after)
                    except TimeoutError:
                        await self._unload()
                    continue
                await self.wakeup.wait()
                continue
            self.idle.clear()
            try:
                with job_context(state.id):
                    await self._execute(state)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The device must survive anything one job does, or every later job waits forever.
                logger.exception("unexpected error on %s", self.device)
                self.running = None
                self.service.queue_changed()  # the job's end replans otherwise (JobService.finish)
            finally:
                self.running = None
                self.idle.set()

    # -- the model ----------------------------------------------------------------------------

    def set_status(self, state: ModelState, **changes: Any) -> None:
        self.status = self.status.to(state, **changes)
        self.service.publish(None, "status", self.status_dict())
        self.service.loading_changed()

    async def _load_model(self) -> None:
        handoff = Handoff(asyncio.get_running_loop())
        self.set_status(ModelState.LOADING)

        def emit(message: Message) -> None:
            if isinstance(message, LoadProgress):
                handoff(lambda: self.set_status(ModelState.LOADING, **message.data()))

        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.runner.load, emit)
        except Exception as exc:
            logger.exception("preloading the model on %s failed", self.device)
            reason = exc.reason if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
            self.set_status(ModelState.FAILED, error=reason)
            return
        await self._model_loaded(dict(self.runner.load_timings))

    async def _model_loaded(self, timings: dict[str, float]) -> None:
        self.set_status(ModelState.READY)
        await self.service.recorder.model_loaded(self.key, timings)

    async def _unload(self) -> None:
        logger.info("unloading the model from %s after %.0f s without jobs", self.device, self._unload_after)
        await asyncio.get_running_loop().run_in_executor(self.executor, self.runner.unload)
        self.set_status(ModelState.UNLOADED)

    # -- one job ------------------------------------------------------------------------------

    async def _execute(self, state: JobState) -> None:
        loop = asyncio.get_running_loop()
        service = self.service
        self.running = state
        state.status = "running"
        state.position = None
        state.planned_device = None
        state.device = self.device
        state.started_at = time.time()
        sample = self.runner.gpu_sample()
        gpu_util = None if sample is None else float(sample.util)
        prior = self.predict(
            state.params, loaded=self.runner.loaded, warm_up=not self.runner.warm, gpu_util=gpu_util
        )
        state.live = LiveEstimate(prior, state.params.steps, state.started_at, gpu_util=gpu_util)
        state.predicted_start_at = None
        state.predicted_total_s = prior.total_s if prior else None
        state.set_eta(state.live.remaining(state.started_at), state.started_at)
        await service.store.mark_started(
            state.id, state.started_at, self.device, self.runner.dtype_name, gpu_util
        )
        service.queue_changed()
        handoff = Handoff(loop)

        def emit(message: Message) -> None:
            handoff(self._on_worker_event, state, message)

        status, error, fault = "done", None, False
        outcome: Outcome | None = None
        try:
            outcome = await loop.run_in_executor(
                self.executor, self.runner.run, state.id, state.params, emit, state.cancel
            )
        except asyncio.CancelledError:
            state.cancel.set()
            raise
        except Cancelled:
            if service.interrupted(state.id):
                self.running = None
                service.queue.ack(state.id)
                await self._frames_end(state, "queued")
                await service.requeue(state)
                return
            status, error = "cancelled", "Cancelled while running."
        except JobFailed as exc:
            status, error, fault = "failed", exc.reason, exc.device_fault
        except Exception as exc:
            logger.exception("the runner on %s raised", self.device)
            status, error, fault = "failed", f"{type(exc).__name__}: {exc}", True
        self.running = None
        service.queue.ack(state.id)
        if outcome is not None:
            state.images = list(outcome.images)
            state.step_s = list(outcome.step_s)
            state.phases.update(outcome.phases)
            if outcome.load_timings:
                await self._model_loaded(dict(outcome.load_timings))
            elif self.status.state == ModelState.FAILED:
                self.set_status(ModelState.READY)  # it ran a job: recovered
        elif fault:
            # A load that failed, out of memory, a crash: the device is shown as failed and gets no
            # work while another can take it, until it recovers (RECOVER_AFTER_S).
            self.set_status(ModelState.FAILED, error=error)
        await self._frames_end(state, status)
        await service.finish(state, status, error=error, outcome=outcome, key=self.key)
        await loop.run_in_executor(self.executor, self.runner.between_jobs)

    async def _frames_end(self, state: JobState, status: str) -> None:
        """A done job's kept previews are all on disk before its `done` event (the page links them);
        any other end drops them."""
        frames = self.service.frames
        if frames is not None:
            state.frames = await (frames.settle(state.id) if status == "done" else frames.discard(state.id))

    def _on_worker_event(self, state: JobState, message: Message) -> None:
        if state.terminal:
            return
        now = time.time()
        service = self.service
        if isinstance(message, LoadProgress):
            state.loading = message.data()
            self.set_status(ModelState.LOADING, **state.loading)
            service.publish(
                state, "phase", {"phase": "loading", **state.loading, "eta_s": seconds(state.eta_s)}
            )
        elif isinstance(message, PhaseStarted):
            if message.phase == "loading":
                self.set_status(ModelState.LOADING)
            elif state.phase == "loading":
                self.set_status(ModelState.READY)
            state.phase = message.phase
            if state.live is not None:
                state.live.on_phase(message.phase, now)
                state.set_eta(state.live.remaining(now), now)
            service.publish(state, "phase", {"phase": state.phase, "eta_s": seconds(state.eta_s)})
        elif isinstance(message, StepDone):
            state.step = message.step
            state.step_s.append(message.step_s)
            if state.live is not None:
                state.live.on_step(message.step_s, now)
                state.set_eta(state.live.remaining(now), now)
            service.publish(
                state,
                "step",
                {
                    **message.data(),
                    "elapsed_s": seconds(state.elapsed_s(now)),
                    "eta_s": seconds(state.eta_s),
                    "percent": round(state.percent(now), 1),
                },
            )
        else:
            state.preview = message.data()
            if service.frames is not None and isinstance(message, PreviewReady):
                # The JPEG exists already: kept as it is, written off the loop (zimage_sse/frames.py).
                state.frames = service.frames.keep(state.id, state.params.steps, message.step, message.url)
            service.publish(state, message.kind, state.preview)
