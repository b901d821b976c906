"""The JobService: what the web tier calls to submit, cancel, read and follow jobs.

It holds the live jobs' state and wires the seams together: the JobStore (`db.Store`), the JobQueue,
the EventBus, a Dispatcher per device and the Planner that places each queued job on the device that
finishes it first. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ..broadcaster import Broadcaster
from ..db import JobStore
from ..eta import EtaModel, Key
from ..events import Event
from ..frames import Frames
from ..messages import Outcome
from ..params import JobParams
from .bus import EventBus, MemoryBus
from .dispatcher import Dispatcher
from .errors import JobFinished, JobNotFound, QueueFull, ShuttingDown
from .following import Following
from .planning import Planning
from .queue import JobQueue, MemoryQueue
from .recorder import Recorder
from .runner import Runner
from .state import JobState, image_url, job_record, seconds
from .status import ModelState, overall

logger = logging.getLogger(__name__)

# A job the server died under (killed, crashed) is queued again once; dying a second time fails it,
# so a job that kills the server cannot crash-loop it (issue: reliability, migrations/004_attempts.sql).
MAX_ATTEMPTS = 2
SHUTDOWN = "shutdown"  # the last event of every stream when the server stops (README "Restarts and shutdown")


class JobService(Following, Planning):
    def __init__(
        self,
        store: JobStore,
        runners: Runner | Sequence[Runner],
        broadcaster: Broadcaster,
        *,
        replay_events: int = 512,
        keep_finished: int = 200,
        unload_after: float = 0.0,
        max_queue: int = 0,
        queue: JobQueue | None = None,
        bus: EventBus | None = None,
        frames: Frames | None = None,
    ) -> None:
        self.store = store
        self.frames = frames  # None: previews are not kept (no animations)
        self.queue: JobQueue = queue or MemoryQueue()
        self.bus: EventBus = bus or MemoryBus(broadcaster, replay_events)
        self.eta = EtaModel()
        self.recorder = Recorder(store, self.eta)
        self._keep_finished = keep_finished
        self._max_queue = max_queue  # 0: no limit
        self._jobs: OrderedDict[str, JobState] = OrderedDict()
        self._interrupted: set[str] = set()  # running jobs stopped by shutdown, to be queued again
        self.draining = False  # shutdown has begun: no new jobs, none started
        listed = [runners] if not isinstance(runners, Sequence) else list(runners)
        self.dispatchers = [Dispatcher(self, runner, unload_after=unload_after) for runner in listed]
        self._epoch = self.bus.last_id(None)

    @property
    def broadcaster(self) -> Broadcaster:
        return self.bus.broadcaster

    @property
    def model(self) -> str:
        return self.dispatchers[0].runner.model

    def dispatcher(self, device: str | None) -> Dispatcher | None:
        return next((d for d in self.dispatchers if d.device == device), None)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        requeued, failed = await self.store.recover_interrupted(
            time.time(),
            MAX_ATTEMPTS,
            f"The server stopped while this job was running, {MAX_ATTEMPTS} times (killed or crashed); "
            "it is not retried again. Submit it again to retry.",
        )
        for job_id in requeued:
            logger.warning("the server stopped while this job ran: queued again", extra={"job_id": job_id})
        for job_id in failed:
            logger.error("the server stopped while this job ran, again: failed", extra={"job_id": job_id})
        for row in await self.store.queued_jobs():
            state = JobState.from_row(row)
            self._remember(state, first_id=self._epoch)
            self.queue.put(state.id)
        for row in await self.store.timing_history():
            self.eta.add(job_record(row))
        for row in await self.store.model_load_totals():
            self.eta.add_load((row["model"], row["device"], row["dtype"]), float(row["seconds"]))
        self._renumber()
        for dispatcher in self.dispatchers:
            dispatcher.start()

    def preload(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.preload()

    async def drain(self, grace: float) -> None:
        """Shut down gently: take no new jobs, let every running job finish for up to `grace` seconds,
        then stop each at its next step and queue it again (they run first after the restart; queued
        jobs stay queued), and end every open stream with a `shutdown` event. Called on SIGTERM."""
        if self.draining:
            return
        self.draining = True
        self._wake()  # the dispatchers see `draining` and start nothing more
        busy = [d for d in self.dispatchers if d.running is not None]
        if busy:
            logger.info("shutting down: waiting up to %.0f s for %d running job(s)", grace, len(busy))
            await asyncio.gather(*(self._drain_one(d, grace) for d in busy))
        self.broadcaster.close_all(
            Event(
                SHUTDOWN,
                {
                    "reason": "The server is shutting down. Queued jobs keep their place; reconnect "
                    "with Last-Event-ID once it is back.",
                },
            )
        )

    async def _drain_one(self, dispatcher: Dispatcher, grace: float) -> None:
        try:
            await asyncio.wait_for(dispatcher.idle.wait(), grace)
        except TimeoutError:
            running = dispatcher.running
            if running is not None:
                logger.warning(
                    "shutting down: stopping the running job to queue it again", extra={"job_id": running.id}
                )
                self._interrupted.add(running.id)
                running.cancel.set()
            await dispatcher.idle.wait()  # the worker stops at its next step

    async def stop(self) -> None:
        """Drain (without grace unless drain() ran already), stop the devices, and end every stream."""
        await self.drain(0.0)
        await asyncio.gather(*(d.stop() for d in self.dispatchers))

    # -- queries ------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobState:
        state = self._jobs.get(job_id)
        if state is not None:
            return state
        row = await self.store.get_job(job_id)
        if row is None:
            raise JobNotFound(job_id)
        state = JobState.from_row(row)
        state.phases = await self.store.phase_timings(job_id)
        state.step_s = await self.store.step_timings(job_id)
        await self._list_frames([state])
        return state

    async def recent(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: str | None = None,
        search: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> list[JobState]:
        """Jobs newest first; live ones as they are in memory, ended ones as stored."""
        rows = await self.store.list_jobs(limit=limit, offset=offset, status=status, search=search, size=size)
        states = [self._jobs.get(row["id"]) or JobState.from_row(row) for row in rows]
        await self._list_frames([state for state in states if state.id not in self._jobs])
        return states

    async def _list_frames(self, states: list[JobState]) -> None:
        """The kept previews of done jobs read from the store (live ones are told by their dispatcher)."""
        done = [state for state in states if state.status == "done" and state.pruned_at is None]
        if self.frames is None or not done:
            return
        for state, steps in zip(done, await self.frames.listed([s.id for s in done]), strict=True):
            state.frames = steps

    def forget(self, job_ids: list[str]) -> None:
        """Drop ended jobs from memory after retention or a delete changed their rows: the next read
        comes from the store. Live jobs are never forgotten."""
        for job_id in job_ids:
            state = self._jobs.get(job_id)
            if state is not None and state.terminal:
                del self._jobs[job_id]
                self.bus.forget(job_id)

    def running_jobs(self) -> list[JobState]:
        return [d.running for d in self.dispatchers if d.running is not None]

    def queued(self) -> list[JobState]:
        return [self._jobs[job_id] for job_id in self.queue.waiting()]

    def queue_snapshot(self) -> dict[str, Any]:
        now = time.time()
        return {
            "running": [state.snapshot(now) for state in self.running_jobs()],
            "queued": [state.snapshot(now) for state in self.queued()],
            "devices": len(self.dispatchers),
        }

    def status_snapshot(self) -> dict[str, Any]:
        """GET /api/status: the first device's model status at the top (all there is with one device),
        the service's overall state, and every device's status under `devices`."""
        devices = [d.status_dict() for d in self.dispatchers]
        state = overall([d.status.state for d in self.dispatchers])
        first = next((s for s in devices if s["state"] == state.value), devices[0])
        return {**first, "state": state.value, "devices": devices, "queued": len(self.queue.waiting())}

    @property
    def loaded(self) -> bool:
        return any(d.runner.loaded for d in self.dispatchers)

    def failure(self) -> str | None:
        """Why no device can run jobs, when every one has failed; None otherwise."""
        if not self.dispatchers or any(d.status.state != ModelState.FAILED for d in self.dispatchers):
            return None
        if len(self.dispatchers) == 1:
            return self.dispatchers[0].status.error
        return "; ".join(f"{d.device}: {d.status.error}" for d in self.dispatchers)

    # -- commands -----------------------------------------------------------------------------

    async def submit(self, params: JobParams) -> JobState:
        if self.draining:
            raise ShuttingDown(
                "The server is shutting down and takes no new jobs; submit again once it is back."
            )
        waiting = self.queue.waiting()
        if self._max_queue and len(waiting) >= self._max_queue:
            now = time.time()
            self._plan(now)
            first, last = self._jobs[waiting[0]], self._jobs[waiting[-1]]
            start = None if first.predicted_start_at is None else max(0.0, first.predicted_start_at - now)
            raise QueueFull(self._max_queue, start, last.remaining_s(now))
        state = JobState(
            id=secrets.token_hex(8), params=params, status="queued", model=self.model, created_at=time.time()
        )
        await self.store.insert_job(
            {
                **params.to_dict(),
                "id": state.id,
                "status": state.status,
                "model": state.model,
                "created_at": state.created_at,
            }
        )
        self._remember(state)
        self.queue.put(state.id)
        self.queue_changed()
        logger.info(
            "queued at position %s: %dx%d, %d steps",
            state.position,
            params.width,
            params.height,
            params.steps,
            extra={"job_id": state.id},
        )
        return state

    async def cancel(self, job_id: str) -> JobState:
        state = await self.get(job_id)
        if state.terminal:
            raise JobFinished(job_id)
        if state.status == "queued" and self.queue.remove(job_id):
            await self.finish(state, "cancelled", error="Cancelled before it started.")
        else:
            # The worker checks this at the next step and stops without decoding, on whichever device.
            logger.info(
                "cancel requested while %s on %s", state.phase, state.device, extra={"job_id": job_id}
            )
            state.cancel.set()
        return state

    # -- streams ------------------------------------------------------------------------------

    # -- what the dispatchers call ------------------------------------------------------------

    def publish(self, state: JobState | None, kind: str, data: dict[str, Any]) -> Event:
        if state is not None and state.device is not None:
            data = {"device": state.device, **data}
        return self.bus.publish(state.id if state else None, kind, data)

    def claim(self, dispatcher: Dispatcher) -> JobState | None:
        """The job the plan gives this (free) device first, taken off the queue; None if none."""
        if self.draining:
            return None
        for placement in self._plan(time.time()):
            if placement.device == dispatcher.device and self.queue.claim(
                placement.job_id, dispatcher.device
            ):
                return self._jobs[placement.job_id]
        return None

    def interrupted(self, job_id: str) -> bool:
        return job_id in self._interrupted

    async def requeue(self, state: JobState) -> None:
        """Shutdown stopped this job: back to the head of the queue, as it was before it started."""
        self._interrupted.discard(state.id)
        await self.store.requeue(state.id)
        row = await self.store.get_job(state.id)
        if row is None:
            return
        self._jobs[state.id] = JobState.from_row(row)  # its stream's ids go on rising (the bus keeps them)
        self.queue.put(state.id, front=True)
        logger.info("stopped by shutdown: queued again, first", extra={"job_id": state.id})
        self.queue_changed()

    async def finish(
        self,
        state: JobState,
        status: str,
        *,
        error: str | None = None,
        outcome: Outcome | None = None,
        key: Key | None = None,
    ) -> None:
        finished_at = time.time()
        await self.recorder.finished(state, status, finished_at, key, error=error, outcome=outcome)
        # The in-memory end and its event in one loop turn, after the write: a stream that opens
        # during the write still sees a live job, subscribes, and so receives the terminal event.
        state.progress_floor = state.percent(finished_at)  # what an ended job keeps showing
        state.status = status
        state.error = error
        state.finished_at = finished_at
        state.phase = None
        state.eta_s = 0.0 if status == "done" else None
        state.position = None
        state.predicted_start_at = None
        state.planned_device = None
        payload: dict[str, Any] = {"status": status, "elapsed_s": state.elapsed_s(), "error": error}
        if status == "done":
            payload.update(
                images=[image_url(name) for name in state.images],
                phases={k: round(v, 4) for k, v in state.phases.items()},
                step_s=[round(s, 4) for s in state.step_s],
            )
        logger.info("%s%s", status, f": {error}" if error else "", extra={"job_id": state.id})
        self.publish(state, status, payload)
        self.queue_changed()

    # -- internals ----------------------------------------------------------------------------

    def _remember(self, state: JobState, first_id: int = 0) -> None:
        self._jobs[state.id] = state
        self.bus.open(state.id, first_id)
        finished = [job_id for job_id, s in self._jobs.items() if s.terminal]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]
            self.bus.forget(job_id)


__all__ = [
    "MAX_ATTEMPTS",
    "SHUTDOWN",
    "JobFinished",
    "JobNotFound",
    "JobService",
    "QueueFull",
    "ShuttingDown",
    "seconds",
]
