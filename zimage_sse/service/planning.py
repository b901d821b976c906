"""Keeping the queue's plan: positions, each queued job's device, start and total (planner.py), and the
events that tell clients and dispatchers. A part of JobService (jobs.py)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from ..events import Event
from . import planner
from .dispatcher import Dispatcher
from .queue import JobQueue
from .state import JobState
from .status import ModelState


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

    def _wake(self) -> None:
        for dispatcher in self.dispatchers:
            dispatcher.wakeup.set()

    def _renumber(self) -> None:
        for position, job_id in enumerate(self.queue.waiting(), start=1):
            self._jobs[job_id].position = position

    def _plan(self, now: float) -> list[planner.Placement]:
        """Every queued job's device, predicted start and run time (planner.py), kept on its state."""
        by_device = {d.device: d for d in self.dispatchers}
        waiting = self.queue.waiting()

        def cost(job_id: str, device: str) -> planner.JobCost | None:
            prior = by_device[device].predict(self._jobs[job_id].params, loaded=False, warm_up=True)
            return None if prior is None else planner.JobCost.of(prior)

        placements = planner.plan(waiting, [d.view(now) for d in self.dispatchers], cost)
        for placement in placements:
            # With one device there is nothing to say about where it runs: pages read as before.
            self._jobs[placement.job_id].place(placement, now, name_device=len(self.dispatchers) > 1)
        return placements
