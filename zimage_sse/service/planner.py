"""Which device finishes each queued job first: a pure plan over the queue, no I/O.

The queue is walked in order; each job goes to the device that would finish it first: when that device
frees up (now, or when what it runs and what is planned on it before ends), plus the model load if it is
not resident, the warm-up if it is cold, and the ETA engine's run time for that device. A device only
ever takes the first job planned on it, and only when it is free, so nothing is assigned ahead: a plan
that went stale (a job ran long, a faster device freed up) costs nothing, the next one is made afresh.

Greedy earliest-finish can lose to plain first-free on a makespan (a slightly faster device taken by a
small job that a much faster device would have run next), so both plans are made and the one that
ends the whole queue sooner is used; with no predictions at all, both are first free device, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..eta import Prediction


@dataclass(frozen=True)
class DeviceView:
    """What the planner knows of one device."""

    name: str
    free_in: float | None  # seconds until it is free: 0 when idle, None when busy for an unknown time
    loaded: bool = True  # the model is resident
    warm: bool = True  # a generation has run since the load
    available: bool = True  # False while it has failed and not yet recovered


@dataclass(frozen=True)
class JobCost:
    """The predicted seconds of one job on one device, in parts."""

    run_s: float  # encode, steps, decode and save, once the model is resident and warm
    load_s: float | None = 0.0  # a load, if the model is not resident (None: not known)
    warmup_s: float = 0.0  # the first generation's extra, if the device is cold

    @classmethod
    def of(cls, prior: Prediction) -> JobCost:
        """The ETA engine's prediction for a cold device with the model not resident, in parts."""
        run = prior.encode_s + prior.steps * prior.step_s + prior.decode_s + prior.save_s
        return cls(run_s=run, load_s=prior.load_s, warmup_s=prior.warmup_s)


@dataclass(frozen=True)
class Placement:
    job_id: str
    device: str
    start_s: float | None  # seconds from now until it starts; None: not known
    total_s: float | None  # its predicted run on that device, load and warm-up included


Cost = Callable[[str, str], JobCost | None]  # (job id, device) → cost, None where nothing predicts it


@dataclass
class _Device:
    view: DeviceView
    order: int
    free: float  # seconds from now; inf: unknown
    loaded: bool
    warm: bool

    def total(self, cost: JobCost | None) -> float | None:
        if cost is None:
            return None
        load = 0.0 if self.loaded else cost.load_s
        if load is None:
            return None
        return load + (0.0 if self.warm else cost.warmup_s) + cost.run_s


def plan(jobs: Sequence[str], devices: Sequence[DeviceView], cost: Cost) -> list[Placement]:
    """A device for every job in `jobs` (queue order), with its predicted start and total."""
    if not devices or not jobs:
        return []
    by_finish = _plan(jobs, devices, cost, by_finish=True)
    first_free = _plan(jobs, devices, cost, by_finish=False)
    return first_free if makespan(first_free) < makespan(by_finish) else by_finish


def makespan(placements: Sequence[Placement]) -> float:
    """When the last job is predicted to end (inf when any end is not known)."""
    end = 0.0
    for placement in placements:
        if placement.start_s is None or placement.total_s is None:
            return math.inf
        end = max(end, placement.start_s + placement.total_s)
    return end


def _plan(
    jobs: Sequence[str], views: Sequence[DeviceView], cost: Cost, *, by_finish: bool
) -> list[Placement]:
    devices = [
        _Device(
            view, order, math.inf if view.free_in is None else max(0.0, view.free_in), view.loaded, view.warm
        )
        for order, view in enumerate(views)
    ]
    # A failed device gets no work while another can take it; if every device has failed, jobs still go
    # to them (and fail with the reason) rather than wait for ever.
    candidates = [d for d in devices if d.view.available] or devices
    placements = []
    for job_id in jobs:
        totals = [device.total(cost(job_id, device.view.name)) for device in candidates]
        known = [t for t in totals if t is not None]
        # A device that has never run this job's size is assumed as fast as the best that has.
        guess = min(known) if known else None

        keys = []
        for index, device in enumerate(candidates):
            total = totals[index] if totals[index] is not None else guess
            finish = math.inf if total is None else device.free + total
            keys.append((finish if by_finish else device.free, device.free, device.order))
        chosen = min(range(len(candidates)), key=keys.__getitem__)
        device = candidates[chosen]
        total = totals[chosen]
        expected = total if total is not None else guess
        placements.append(
            Placement(job_id, device.view.name, None if math.isinf(device.free) else device.free, total)
        )
        device.free = math.inf if expected is None else device.free + expected
        device.loaded = device.warm = True
    return placements
