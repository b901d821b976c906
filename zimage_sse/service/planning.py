"""Keeping the queue's plan: positions, each queued job's device, start and total (planner.py), and the
events that tell clients and dispatchers. A part of JobService (jobs.py)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import Event
from ..params import JobParams
from . import planner
from .dispatcher import Dispatcher
from .queue import JobQueue
from .state import JobState, seconds
from .status import ModelState

# The id the job an estimate asks about has in the plan: never a real job's (those are 16 hex digits).
ESTIMATED = "estimate"


@dataclass(frozen=True)
class Estimate:
    """What a job with these parameters would cost if it were submitted now (GET /api/estimate)."""

    params: JobParams
    device: str  # the device the plan would give it
    run_s: float | None  # its predicted run there, load and warm-up included; None: not known
    source: str | None  # how the ETA engine knows: "size", "cost-model", "scaled"; None: it does not
    start_s: float | None  # seconds from now until it would start: 0 on an idle device; None: not known
    needs_load: bool  # the model would be loaded for it first
    needs_warmup: bool  # it would be the device's first generation since the load
    load_s: float | None  # the load's part of run_s (0.0 without one; None: a load never timed)
    warmup_s: float  # the warm-up's part of run_s
    jobs_ahead: int  # running and queued jobs it would wait behind, on any device

    @property
    def finish_s(self) -> float | None:
        return None if self.start_s is None or self.run_s is None else self.start_s + self.run_s


class Planning:
    queue: JobQueue
    dispatchers: list[Dispatcher]
    _jobs: OrderedDict[str, JobState]

    def publish(self, state: JobState | None, kind: str, data: dict[str, Any]) -> Event:
        raise NotImplementedError

    def queued(self) -> list[JobState]:
        raise NotImplementedError

    def dispatcher(self, device: str | None) -> Dispatcher | None:
        raise NotImplementedError

    def queue_changed(self) -> None:
        """The queue or a device changed: renumber, replan, tell every queued job and every device."""
        self._renumber()
        now = time.time()
        self._plan(now)
        waiting = self.queue.waiting()
        for state in self.queued():
            snapshot = state.snapshot(now)
            self.publish(
                state,
                "queued",
                {
                    "position": state.position,
                    "queue_length": len(waiting),
                    "planned_device": state.planned_device,
                    "predicted_start_s": snapshot["predicted_start_s"],
                    "predicted_total_s": snapshot["predicted_total_s"],
                    "eta_s": snapshot["eta_s"],
                },
            )
        running = self.queue.running()
        self.publish(
            None, "queue", {"running": list(running.values()), "devices": running, "queued": waiting}
        )
        self._wake()

    def loading_changed(self) -> None:
        """Jobs waiting behind a load say what they wait for ("loading model: transformer (2/3) …")."""
        for state in self.queued():
            dispatcher = self.dispatcher(state.planned_device) or self.dispatchers[0]
            loading = dispatcher.status_dict() if dispatcher.status.state == ModelState.LOADING else None
            if loading is not None or state.model_loading is not None:
                state.model_loading = loading
                self.publish(state, "queued", {"position": state.position, "model_loading": loading})

    def estimate(self, params: JobParams) -> Estimate:
        """A job with `params` planned at the end of the queue as it is now, with the same planner and
        ETA engine as every queued job; nothing is queued or published."""
        now = time.time()
        by_device = {d.device: d for d in self.dispatchers}
        waiting = self.queue.waiting()
        views = [d.view(now) for d in self.dispatchers]

        def params_of(job_id: str) -> JobParams:
            return params if job_id == ESTIMATED else self._jobs[job_id].params

        placements = planner.plan([*waiting, ESTIMATED], views, self._cost(params_of))
        placement = placements[-1]
        dispatcher = by_device[placement.device]
        view = next(v for v in views if v.name == placement.device)
        # The planner has a device loaded and warm once any job before this one is planned on it.
        before = any(p.device == placement.device for p in placements[:-1])
        needs_load = not (before or view.loaded)
        needs_warmup = not (before or view.warm)
        prior = dispatcher.predict(params, loaded=not needs_load, warm_up=needs_warmup)
        # In milliseconds, as events carry seconds: the figures and any text made from them then agree.
        return Estimate(
            params=params,
            device=placement.device,
            run_s=seconds(placement.total_s),
            source=None if prior is None else prior.source,
            start_s=seconds(placement.start_s),
            needs_load=needs_load,
            needs_warmup=needs_warmup,
            load_s=None if prior is None else seconds(prior.load_s),
            warmup_s=0.0 if prior is None else round(prior.warmup_s, 3),
            jobs_ahead=len(waiting) + sum(d.running is not None for d in self.dispatchers),
        )

    def _cost(self, params_of: Callable[[str], JobParams]) -> planner.Cost:
        """The planner's cost of a job on a device: the ETA engine's prediction for a cold device with
        the model not resident, in parts (planner.JobCost)."""
        by_device = {d.device: d for d in self.dispatchers}

        def cost(job_id: str, device: str) -> planner.JobCost | None:
            prior = by_device[device].predict(params_of(job_id), loaded=False, warm_up=True)
            return None if prior is None else planner.JobCost.of(prior)

        return cost

    def _wake(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.wakeup.set()

    def _renumber(self) -> None:
        for position, job_id in enumerate(self.queue.waiting(), start=1):
            self._jobs[job_id].position = position

    def _plan(self, now: float) -> list[planner.Placement]:
        """Every queued job's device, predicted start and run time (planner.py), kept on its state."""
        placements = planner.plan(
            self.queue.waiting(),
            [d.view(now) for d in self.dispatchers],
            self._cost(lambda job_id: self._jobs[job_id].params),
        )
        for placement in placements:
            # With one device there is nothing to say about where it runs: pages read as before.
            self._jobs[placement.job_id].place(placement, now, name_device=len(self.dispatchers) > 1)
        return placements
