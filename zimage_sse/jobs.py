"""The job manager: the one central object between the web tier, the worker, the store and the streams.

It owns the FIFO queue, the in-memory state of every live job (what a snapshot shows), the
per-job replay buffers, and it turns what the worker reports into published events. Everything
here runs on the event loop; the worker runs in its executor thread and reaches us only through
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from .broadcaster import ALL, Broadcaster, Subscription
from .db import Store
from .eta import EtaModel, JobRecord, LiveEstimate, Prediction, accuracy_points
from .events import TERMINAL, Cancelled, Event, JobFailed
from .logs import job_context
from .params import JobParams

logger = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]


class JobNotFound(Exception):
    pass


class JobFinished(Exception):
    """The job has already ended, so it cannot be cancelled."""


class ShuttingDown(Exception):
    """The server is shutting down and takes no new jobs; it keeps the queue for its restart."""


# A job the server died under (killed, crashed) is queued again once; dying a second time fails it,
# so a job that kills the server cannot crash-loop it (issue: reliability, migrations/004_attempts.sql).
MAX_ATTEMPTS = 2
SHUTDOWN = "shutdown"  # the last event of every stream when the server stops (README "Restarts and shutdown")


class QueueFull(Exception):
    """The queue holds `limit` jobs already. `next_slot_s`: predicted seconds until one starts (and a
    place frees up); `drained_s`: until the last queued job has run. None where nothing predicts it."""

    def __init__(self, limit: int, next_slot_s: float | None, drained_s: float | None) -> None:
        super().__init__(f"the queue is full ({limit} jobs waiting)")
        self.limit, self.next_slot_s, self.drained_s = limit, next_slot_s, drained_s


class Runner(Protocol):
    """What the manager needs from a worker (zimage_sse.worker.Worker), without importing torch."""

    model: str
    device: str

    @property
    def dtype_name(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def warm(self) -> bool: ...

    def gpu_sample(self) -> Any: ...

    def thread_started(self) -> None: ...

    def between_jobs(self) -> None: ...

    def load(self, emit: Emit | None = None) -> Any: ...

    def unload(self) -> None: ...

    def run(self, job_id: str, params: JobParams, emit: Emit, cancel: threading.Event) -> Any: ...


@dataclass
class JobState:
    """Everything a client needs to draw a job; `snapshot()` is the `snapshot` event's payload."""

    id: str
    params: JobParams
    status: str
    model: str
    created_at: float
    device: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    phase: str | None = None
    step: int = 0
    step_s: list[float] = field(default_factory=list)
    eta_s: float | None = None
    position: int | None = None
    images: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seq: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    # Queue predictions (wall-clock start, seconds of running) and the running job's live estimate.
    predicted_start_at: float | None = None
    predicted_total_s: float | None = None
    live: LiveEstimate | None = None
    preview: dict[str, Any] | None = None  # the latest `preview` event's data
    loading: dict[str, Any] | None = None  # the component being loaded: component, index, count
    model_loading: dict[str, Any] | None = None  # while queued behind a load: the model's status
    # Wall-clock time of the last ETA, so elapsed and the ETA agree on when they were measured.
    eta_at: float | None = None
    progress_floor: float = 0.0
    # When retention removed the job's images (its row and timings stay); None: not pruned.
    pruned_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def pixels(self) -> int:
        return self.params.width * self.params.height * self.params.num_images

    def elapsed_s(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (now or time.time())
        return max(0.0, end - self.started_at)

    def remaining_s(self, now: float | None = None) -> float | None:
        """The last ETA, counted down by the time since it was made."""
        if self.terminal:
            return 0.0
        if self.eta_s is None or self.eta_at is None:
            return None
        return max(0.0, self.eta_s - ((now or time.time()) - self.eta_at))

    def percent(self, now: float | None = None) -> float:
        """Time-based progress, elapsed / (elapsed + remaining), so decode does not make the bar jump.

        It never goes back: when a new estimate is longer than the last, the ETA grows and the bar
        waits for time to catch up instead of retreating.
        """
        if self.status == "done":
            return 100.0
        elapsed, remaining = self.elapsed_s(now), self.remaining_s(now)
        if elapsed is not None and remaining is not None and elapsed + remaining > 0:
            self.progress_floor = max(self.progress_floor, min(99.9, 100.0 * elapsed / (elapsed + remaining)))
        return self.progress_floor

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        elapsed = self.elapsed_s(now)
        remaining = self.remaining_s(now)
        return {
            "id": self.id,
            "status": self.status,
            "params": self.params.to_dict(),
            "model": self.model,
            "device": self.device,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "position": self.position,
            "phase": self.phase,
            "step": self.step,
            "total": self.params.steps,
            "step_s": self.step_s[-1] if self.step_s else None,
            "elapsed_s": _seconds(elapsed),
            "eta_s": _seconds(remaining),
            "percent": round(self.percent(now), 1),
            "images": [image_url(name) for name in self.images],
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "error": self.error,
            "predicted_start_s": (
                None if self.predicted_start_at is None else _seconds(max(0.0, self.predicted_start_at - now))
            ),
            "predicted_total_s": _seconds(self.predicted_total_s),
            "preview": self.preview if self.status == "running" else None,
            "loading": self.loading if self.phase == "loading" else None,
            "model_loading": self.model_loading if self.status == "queued" else None,
            "pruned_at": self.pruned_at,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobState:
        return cls(
            id=row["id"],
            params=JobParams.from_dict(row),
            status=row["status"],
            model=row["model"],
            created_at=row["created_at"],
            device=row["device"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            images=list(row["images"]),
            error=row["error"],
            step=row["steps"] if row["status"] == "done" else 0,
            pruned_at=row.get("pruned_at"),
        )


def image_url(name: str) -> str:
    return f"/images/{name}"


class JobManager:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        broadcaster: Broadcaster,
        *,
        replay_events: int = 512,
        keep_finished: int = 200,
        unload_after: float = 0.0,
        max_queue: int = 0,
    ) -> None:
        self._unload_after = unload_after
        self._max_queue = max_queue  # 0: no limit
        self.store = store
        self.runner = runner
        self.broadcaster = broadcaster
        self._replay_events = replay_events
        self._keep_finished = keep_finished
        self._jobs: OrderedDict[str, JobState] = OrderedDict()
        self._history: dict[str, deque[Event]] = {}
        self._global: deque[Event] = deque(maxlen=replay_events)
        self._pending: list[str] = []
        self._running: str | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while no job runs: what a shutdown waits for
        self._idle.set()
        self._interrupted: set[str] = set()  # running jobs stopped by shutdown, to be queued again
        self.draining = False  # shutdown has begun: no new jobs, none started
        # Event ids continue across restarts instead of starting again at 1, so an id a client kept from
        # the last process can never name a different event in this one: ids from before the restart
        # are below this base (microseconds since the epoch), hence older than the replay buffer, and get
        # a fresh snapshot. Jobs submitted in this process never had ids before and count from 1.
        self._epoch = time.time_ns() // 1000
        self._gseq = self._epoch
        self.eta = EtaModel()
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"worker-{runner.device}", initializer=runner.thread_started
        )
        self._task: asyncio.Task[None] | None = None
        self._preload: asyncio.Task[None] | None = None
        # What GET /api/status and `status` events say about the model.
        self.model_status: dict[str, Any] = {
            "state": "unloaded",  # unloaded, loading, ready, failed
            "model": runner.model,
            "device": runner.device,
            "component": None,
            "index": None,
            "count": None,
            "error": None,
            "since": time.time(),
        }

    # -- lifecycle ---------------------------------------------------------------------------

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
            state.seq = self._epoch
            self._remember(state)
            self._pending.append(state.id)
        for row in await self.store.timing_history():
            self.eta.add(job_record(row))
        for row in await self.store.model_load_totals():
            self.eta.add_load((row["model"], row["device"], row["dtype"]), float(row["seconds"]))
        self._renumber()
        self._task = asyncio.create_task(self._run_queue(), name="job-queue")

    async def drain(self, grace: float) -> None:
        """Shut down gently: take no new jobs, let the running one finish for up to `grace` seconds, then
        stop it at its next step and queue it again (it runs first after the restart; queued jobs stay
        queued), and end every open stream with a `shutdown` event. Called on SIGTERM (serving.py)."""
        if self.draining:
            return
        self.draining = True
        self._wakeup.set()  # the queue loop sees `draining` and starts nothing more
        running = self.running()
        if running is not None:
            logger.info("shutting down: waiting up to %.0f s for the running job", grace)
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                logger.warning(
                    "shutting down: stopping the running job to queue it again", extra={"job_id": running.id}
                )
                self._interrupted.add(running.id)
                running.cancel.set()
                await self._idle.wait()  # the worker stops at its next step
        self.broadcaster.close_all(
            Event(
                SHUTDOWN,
                {
                    "reason": "The server is shutting down. Queued jobs keep their place; reconnect "
                    "with Last-Event-ID once it is back.",
                },
            )
        )

    async def stop(self) -> None:
        """Drain (without grace unless drain() ran already), stop the queue, and end every stream."""
        await self.drain(0.0)
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        # A preload may still be running; wait for it off the loop, which still serves requests.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    # -- queries -----------------------------------------------------------------------------

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
        return [self._jobs.get(row["id"]) or JobState.from_row(row) for row in rows]

    def forget(self, job_ids: list[str]) -> None:
        """Drop ended jobs from memory after retention or a delete changed their rows: the next read
        comes from the store. Live jobs are never forgotten."""
        for job_id in job_ids:
            state = self._jobs.get(job_id)
            if state is not None and state.terminal:
                del self._jobs[job_id]
                self._history.pop(job_id, None)

    def running(self) -> JobState | None:
        return self._jobs[self._running] if self._running is not None else None

    def queued(self) -> list[JobState]:
        return [self._jobs[job_id] for job_id in self._pending]

    def queue_snapshot(self) -> dict[str, Any]:
        running = self.running()
        return {
            "running": running.snapshot() if running else None,
            "queued": [state.snapshot() for state in self.queued()],
        }

    # -- commands ----------------------------------------------------------------------------

    async def submit(self, params: JobParams) -> JobState:
        if self.draining:
            raise ShuttingDown(
                "The server is shutting down and takes no new jobs; submit again once it is back."
            )
        if self._max_queue and len(self._pending) >= self._max_queue:
            now = time.time()
            self._plan_queue(now)
            first, last = self.queued()[0], self.queued()[-1]
            start = None if first.predicted_start_at is None else max(0.0, first.predicted_start_at - now)
            raise QueueFull(self._max_queue, start, last.remaining_s(now))
        state = JobState(
            id=secrets.token_hex(8),
            params=params,
            status="queued",
            model=self.runner.model,
            created_at=time.time(),
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
        self._pending.append(state.id)
        self._queue_changed()
        self._wakeup.set()
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
        if state.status == "queued" and job_id in self._pending:
            self._pending.remove(job_id)
            await self._finish_job(state, "cancelled", error="Cancelled before it started.")
            self._queue_changed()
        else:
            # The worker checks this at the next step and stops without decoding.
            logger.info("cancel requested while %s", state.phase, extra={"job_id": job_id})
            state.cancel.set()
        return state

    # -- streams -----------------------------------------------------------------------------

    @asynccontextmanager
    async def follow(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[tuple[list[Event], Subscription | None]]:
        """What a job's stream sends: the events a client missed (or a snapshot), then live events.

        The replay and the subscription are taken in one loop turn, so nothing falls between them.
        The subscription is None when the job has already ended.
        """
        state = await self.get(job_id)
        first = self._replay(job_id, last_event_id)
        if first is None:
            first = [Event("snapshot", state.snapshot(), job_id=job_id, seq=state.seq)]
        if state.terminal or any(event.terminal for event in first):
            yield first, None
            return
        async with self.broadcaster.subscribe(job_id) as subscription:
            yield first, subscription

    @asynccontextmanager
    async def follow_all(
        self, last_event_id: str | None = None
    ) -> AsyncIterator[tuple[list[Event], Subscription]]:
        first = self._replay_global(last_event_id)
        if first is None:
            first = [Event("snapshot", self.queue_snapshot(), gseq=self._gseq)]
        async with self.broadcaster.subscribe(ALL) as subscription:
            yield first, subscription

    def seen_the_end(self, state: JobState, last_event_id: str | None) -> bool:
        """Whether a client resuming from `last_event_id` already has this ended job's final state.

        A job from before a restart is not numbered in this process: its stream is a snapshot with
        id 0, so a client that resumes from 0 has it, and one that resumes from an older id (it may
        have missed the end) gets the snapshot first.
        """
        last = _parse_id(last_event_id)
        if not state.terminal or last is None:
            return False
        if state.id in self._history:
            return last >= state.seq
        return last == 0

    def _replay(self, job_id: str, last_event_id: str | None) -> list[Event] | None:
        last = _parse_id(last_event_id)
        history = self._history.get(job_id)
        if last is None or history is None:
            return None
        state = self._jobs[job_id]
        if last >= state.seq:
            return [] if last == state.seq else None
        if not history or history[0].seq > last + 1:
            return None  # the buffer no longer reaches back: a fresh snapshot instead
        return [event for event in history if event.seq > last]

    def _replay_global(self, last_event_id: str | None) -> list[Event] | None:
        last = _parse_id(last_event_id)
        if last is None or last > self._gseq:
            return None
        if last == self._gseq:
            return []
        if not self._global or self._global[0].gseq > last + 1:
            return None
        return [event for event in self._global if event.gseq > last]

    # -- internals ---------------------------------------------------------------------------

    def _remember(self, state: JobState) -> None:
        self._jobs[state.id] = state
        self._history[state.id] = deque(maxlen=self._replay_events)
        finished = [job_id for job_id, s in self._jobs.items() if s.terminal]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]
            self._history.pop(job_id, None)

    def _publish(self, state: JobState | None, kind: str, data: dict[str, Any]) -> Event:
        # "at": when the event was made (unix seconds), so a client can measure its delivery delay.
        data = {**data, "at": round(time.time(), 6)}
        self._gseq += 1
        if state is not None:
            state.seq += 1
        event = Event(
            kind, data, job_id=state.id if state else None, seq=state.seq if state else 0, gseq=self._gseq
        )
        if state is not None:
            history = self._history[state.id]
            if kind == "preview":
                # A resuming client is sent only the newest preview, so the buffers keep only that one:
                # a job's previews (a few kB each) never crowd out its steps or pile up after it ends.
                previous = next((e for e in reversed(history) if e.kind == "preview"), None)
                if previous is not None:
                    _drop(history, previous)
                    _drop(self._global, previous)
            history.append(event)
        self._global.append(event)
        self.broadcaster.publish(event)
        return event

    def _renumber(self) -> None:
        for position, job_id in enumerate(self._pending, start=1):
            self._jobs[job_id].position = position

    def _predict(
        self, params: JobParams, *, loaded: bool, warm_up: bool, gpu_util: float | None = None
    ) -> Prediction | None:
        key = (self.runner.model, self.runner.device, self.runner.dtype_name)
        return self.eta.predict(
            key,
            params.width,
            params.height,
            params.num_images,
            params.steps,
            loaded=loaded,
            warm_up=warm_up,
            gpu_util=gpu_util,
        )

    @staticmethod
    def _set_eta(state: JobState, remaining: float | None, now: float) -> None:
        state.eta_s, state.eta_at = remaining, now

    def _plan_queue(self, now: float) -> None:
        """Predicted start and run time of every queued job: what is left of the running job plus
        the predicted totals of the jobs ahead. Unknown from the first job nothing is known about."""
        running = self.running()
        start: float | None = 0.0
        if running is not None:
            start = running.remaining_s(now)
        resident, warm = self.runner.loaded or running is not None, self.runner.warm or running is not None
        for state in self.queued():
            prior = self._predict(state.params, loaded=resident, warm_up=not warm)
            resident = warm = True
            state.predicted_total_s = prior.total_s if prior else None
            state.predicted_start_at = None if start is None else now + start
            finish = (
                None if start is None or state.predicted_total_s is None else start + state.predicted_total_s
            )
            self._set_eta(state, finish, now)
            start = finish

    def _queue_changed(self) -> None:
        self._renumber()
        now = time.time()
        self._plan_queue(now)
        for state in self.queued():
            snapshot = state.snapshot()
            self._publish(
                state,
                "queued",
                {
                    "position": state.position,
                    "queue_length": len(self._pending),
                    "predicted_start_s": snapshot["predicted_start_s"],
                    "predicted_total_s": snapshot["predicted_total_s"],
                    "eta_s": snapshot["eta_s"],
                },
            )
        self._publish(None, "queue", {"running": self._running, "queued": list(self._pending)})

    def preload(self) -> None:
        """Load the model now rather than with the first job; jobs wait in the queue meanwhile."""
        self._preload = asyncio.create_task(self._load_model(), name="preload")

    async def _load_model(self) -> None:
        loop = asyncio.get_running_loop()
        self._set_model_status(state="loading")

        def emit(kind: str, data: dict[str, Any]) -> None:
            if kind == "loading":
                loop.call_soon_threadsafe(lambda: self._set_model_status(state="loading", **data))

        try:
            await loop.run_in_executor(self._executor, self.runner.load, emit)
        except Exception as exc:
            logger.exception("preloading the model failed")
            reason = exc.reason if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
            self._set_model_status(state="failed", error=reason)
            return
        await self._model_loaded(dict(getattr(self.runner, "load_timings", {})))

    async def _model_loaded(self, timings: dict[str, float]) -> None:
        self._set_model_status(state="ready", component=None, index=None, count=None, error=None)
        if timings:
            key = (self.runner.model, self.runner.device, self.runner.dtype_name)
            await self.store.record_model_load(secrets.token_hex(8), time.time(), *key, timings)
            self.eta.add_load(key, sum(timings.values()))
            logger.info(
                "model %s loaded in %.2f s: %s",
                key[0],
                sum(timings.values()),
                ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
            )

    async def _unload(self) -> None:
        logger.info("unloading the model after %.0f s without jobs", self._unload_after)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.unload)
        self._set_model_status(state="unloaded", component=None, index=None, count=None, error=None)

    def _set_model_status(self, **changes: Any) -> None:
        if changes.get("state") != self.model_status["state"]:
            changes["since"] = time.time()
        self.model_status.update(changes)
        self._publish(None, "status", dict(self.model_status))
        # Jobs waiting behind a load say what they wait for ("loading model: transformer (2/3) …").
        loading = self.model_status_snapshot() if self.model_status["state"] == "loading" else None
        for state in self.queued():
            if loading is not None or state.model_loading is not None:
                state.model_loading = loading
                self._publish(state, "queued", {"position": state.position, "model_loading": loading})

    def model_status_snapshot(self) -> dict[str, Any]:
        """The model's state, with the expected time left while it loads (from past loads)."""
        status = dict(self.model_status)
        expected = self.eta.load_estimate((self.runner.model, self.runner.device, self.runner.dtype_name))
        if status["state"] == "loading" and expected is not None:
            status["eta_s"] = _seconds(max(0.0, expected - (time.time() - status["since"])))
        else:
            status["eta_s"] = None
        return status

    async def _run_queue(self) -> None:
        while True:
            if self._preload is not None:
                await asyncio.wait({self._preload})
                self._preload = None
            if self.draining:
                return  # what is queued stays queued, in the store, for the restart
            if not self._pending:
                self._wakeup.clear()
                if self._unload_after > 0 and self.runner.loaded:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), self._unload_after)
                    except TimeoutError:
                        await self._unload()
                    continue
                await self._wakeup.wait()
                continue
            job_id = self._pending.pop(0)
            self._idle.clear()
            try:
                with job_context(job_id):
                    await self._execute(self._jobs[job_id])
            except asyncio.CancelledError:
                raise
            except Exception:
                # The queue must survive anything one job does, or every later job waits forever.
                logger.exception("unexpected error in the job manager")
            finally:
                self._idle.set()

    async def _execute(self, state: JobState) -> None:
        loop = asyncio.get_running_loop()
        self._running = state.id
        state.status = "running"
        state.position = None
        state.device = self.runner.device
        state.started_at = time.time()
        sample = self.runner.gpu_sample()
        gpu_util = None if sample is None else float(sample.util)
        prior = self._predict(
            state.params, loaded=self.runner.loaded, warm_up=not self.runner.warm, gpu_util=gpu_util
        )
        state.live = LiveEstimate(prior, state.params.steps, state.started_at, gpu_util=gpu_util)
        state.predicted_start_at = None
        state.predicted_total_s = prior.total_s if prior else None
        self._set_eta(state, state.live.remaining(state.started_at), state.started_at)
        await self.store.mark_started(
            state.id, state.started_at, self.runner.device, self.runner.dtype_name, gpu_util
        )
        self._queue_changed()

        def emit(kind: str, data: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self._on_worker_event, state, kind, data)

        status, error, outcome = "done", None, None
        try:
            outcome = await loop.run_in_executor(
                self._executor, self.runner.run, state.id, state.params, emit, state.cancel
            )
        except asyncio.CancelledError:
            state.cancel.set()
            raise
        except Cancelled:
            if state.id in self._interrupted:
                self._running = None
                await self._requeue(state)
                return
            status, error = "cancelled", "Cancelled while running."
        except JobFailed as exc:
            status, error = "failed", exc.reason
        except Exception as exc:
            logger.exception("the runner raised")
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            self._running = None
        if outcome is not None:
            state.images = list(outcome.images)
            state.step_s = list(outcome.step_s)
            state.phases.update(outcome.phases)
            if outcome.load_timings:
                await self._model_loaded(dict(outcome.load_timings))
        elif state.phase == "loading":
            self._set_model_status(state="failed", error=error)
        await self._finish_job(state, status, error=error, outcome=outcome)
        self._queue_changed()
        await loop.run_in_executor(self._executor, self.runner.between_jobs)

    async def _requeue(self, state: JobState) -> None:
        """Shutdown stopped this job: back to the head of the queue, as it was before it started."""
        self._interrupted.discard(state.id)
        await self.store.requeue(state.id)
        row = await self.store.get_job(state.id)
        if row is None:
            return
        fresh = JobState.from_row(row)
        fresh.seq = state.seq  # its stream's ids go on rising
        self._jobs[state.id] = fresh
        self._pending.insert(0, state.id)
        logger.info("stopped by shutdown: queued again, first", extra={"job_id": state.id})
        self._queue_changed()

    async def _finish_job(
        self, state: JobState, status: str, *, error: str | None = None, outcome: Any = None
    ) -> None:
        finished_at = time.time()
        actual = finished_at - state.started_at if state.started_at is not None else None
        points = None
        if status == "done" and state.live is not None and actual is not None:
            points = accuracy_points(state.live.history, actual)
        await self.store.finish_job(
            state.id,
            status=status,
            finished_at=finished_at,
            error=error,
            images=state.images,
            step_s=state.step_s,
            phases=state.phases,
            warm_up=outcome.warm_up if outcome else None,
            gpu_util_mean=outcome.gpu_util_mean if outcome else None,
            gpu_mem_peak_mb=outcome.gpu_mem_peak_mb if outcome else None,
            eta_points=points,
            actual_total_s=actual,
        )
        if status == "done" and outcome is not None:
            sample_util = state.live.gpu_util if state.live else None
            self.eta.add(
                JobRecord(
                    model=self.runner.model,
                    device=self.runner.device,
                    dtype=self.runner.dtype_name,
                    width=state.params.width,
                    height=state.params.height,
                    batch=state.params.num_images,
                    step_s=tuple(state.step_s),
                    phases=dict(state.phases),
                    warm_up=bool(outcome.warm_up),
                    gpu_util=sample_util,
                )
            )
        # The in-memory end and its event in one loop turn, after the write: a stream that opens
        # during the write still sees a live job, subscribes, and so receives the terminal event.
        state.status = status
        state.error = error
        state.finished_at = finished_at
        state.phase = None
        state.eta_s = 0.0
        state.predicted_start_at = None
        payload: dict[str, Any] = {"status": status, "elapsed_s": state.elapsed_s(), "error": error}
        if status == "done":
            payload.update(
                images=[image_url(name) for name in state.images],
                phases={k: round(v, 4) for k, v in state.phases.items()},
                step_s=[round(s, 4) for s in state.step_s],
            )
        logger.info("%s%s", status, f": {error}" if error else "", extra={"job_id": state.id})
        self._publish(state, status, payload)

    def _on_worker_event(self, state: JobState, kind: str, data: dict[str, Any]) -> None:
        if state.terminal:
            return
        now = time.time()
        if kind == "loading":
            state.loading = data
            self._set_model_status(state="loading", **data)
            self._publish(
                state,
                "phase",
                {"phase": "loading", **data, "eta_s": _seconds(state.eta_s)},
            )
        elif kind == "phase":
            if data["phase"] == "loading":
                self._set_model_status(state="loading")
            elif state.phase == "loading":
                self._set_model_status(state="ready", component=None, index=None, count=None, error=None)
            state.phase = data["phase"]
            if state.live is not None:
                state.live.on_phase(data["phase"], now)
                self._set_eta(state, state.live.remaining(now), now)
            self._publish(
                state,
                "phase",
                {"phase": state.phase, "eta_s": _seconds(state.eta_s)},
            )
        elif kind == "step":
            state.step = data["step"]
            state.step_s.append(data["step_s"])
            if state.live is not None:
                state.live.on_step(data["step_s"], now)
                self._set_eta(state, state.live.remaining(now), now)
            elapsed = state.elapsed_s(now)
            self._publish(
                state,
                "step",
                {
                    **data,
                    "elapsed_s": _seconds(elapsed),
                    "eta_s": _seconds(state.eta_s),
                    "percent": round(state.percent(now), 1),
                },
            )
        elif kind == "preview":
            state.preview = data
            self._publish(state, kind, data)
        else:
            self._publish(state, kind, data)


def _drop(events: deque[Event], old: Event) -> None:
    """Remove `old` (this very event, found by identity, searching from the newest end, where a recent
    one is) if the buffer still holds it."""
    for index in range(len(events) - 1, -1, -1):
        if events[index] is old:
            del events[index]
            return


def _seconds(value: float | None) -> float | None:
    """Seconds as events carry them: milliseconds are plenty, and None stays None ("not known")."""
    return None if value is None else round(value, 3)


def _parse_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def job_record(row: dict[str, Any]) -> JobRecord:
    """A stored job (with its `step_s` and `phases` attached) as the ETA engine learns from it."""
    return JobRecord(
        model=row["model"],
        device=row["device"],
        dtype=row["dtype"] or "",
        width=row["width"],
        height=row["height"],
        batch=row["num_images"],
        step_s=tuple(row["step_s"]),
        phases=row["phases"],
        warm_up=bool(row["warm_up"]),
        gpu_util=row["gpu_util_start"],
    )
