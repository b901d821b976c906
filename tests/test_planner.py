"""The planner: each queued job on the device that finishes it first (zimage_sse/service/planner.py)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from zimage_sse.service.planner import DeviceView, JobCost, Placement, makespan, plan


def first_free(jobs: list[str], devices: list[DeviceView], costs: dict[tuple[str, str], JobCost]) -> float:
    """The predicted makespan of giving each job, in order, to the device that is free first."""
    free = {d.name: (math.inf if d.free_in is None else d.free_in) for d in devices}
    ready = {d.name: (d.loaded, d.warm) for d in devices}
    usable = [d for d in devices if d.available] or devices
    end = 0.0
    for job in jobs:
        device = min(usable, key=lambda d: (free[d.name], devices.index(d)))
        cost = costs[(job, device.name)]
        loaded, warm = ready[device.name]
        load = 0.0 if loaded else cost.load_s
        assert load is not None
        free[device.name] += load + (0.0 if warm else cost.warmup_s) + cost.run_s
        ready[device.name] = (True, True)
        end = max(end, free[device.name])
    return end


def by_job(placements: list[Placement]) -> dict[str, Placement]:
    return {p.job_id: p for p in placements}


def test_a_job_goes_to_the_device_that_finishes_it_first_even_if_busy() -> None:
    """cuda:0 is busy for 1 s but runs the job in 1 s; cuda:1 is free but takes 5 s: cuda:0."""
    devices = [DeviceView("cuda:0", 1.0), DeviceView("cuda:1", 0.0)]
    costs = {("a", "cuda:0"): JobCost(1.0), ("a", "cuda:1"): JobCost(5.0)}
    (placement,) = plan(["a"], devices, lambda job, device: costs[(job, device)])
    assert placement == Placement("a", "cuda:0", 1.0, 1.0)


def test_a_cold_device_pays_its_load_and_warm_up() -> None:
    """The same speed on both, but cuda:1 would have to load the model (3 s) and warm up (2 s)."""
    devices = [DeviceView("cuda:0", 4.0), DeviceView("cuda:1", 0.0, loaded=False, warm=False)]
    cost = JobCost(run_s=1.0, load_s=3.0, warmup_s=2.0)
    (placement,) = plan(["a"], devices, lambda job, device: cost)
    assert (placement.device, placement.start_s, placement.total_s) == ("cuda:0", 4.0, 1.0)
    (placement,) = plan(["a"], [DeviceView("cuda:0", 6.0), devices[1]], lambda job, device: cost)
    assert (placement.device, placement.start_s, placement.total_s) == ("cuda:1", 0.0, 6.0)


def test_with_no_predictions_it_is_the_first_free_device_in_order() -> None:
    devices = [DeviceView("cuda:0", None), DeviceView("cuda:1", 0.0), DeviceView("cuda:2", 0.0)]
    placements = plan(["a", "b", "c"], devices, lambda job, device: None)
    assert [(p.device, p.start_s, p.total_s) for p in placements] == [
        ("cuda:1", 0.0, None),
        ("cuda:2", 0.0, None),
        ("cuda:0", None, None),  # behind a job whose end nothing predicts
    ]


def test_a_failed_device_gets_no_work_while_another_can_take_it() -> None:
    devices = [DeviceView("cuda:0", 0.0, available=False), DeviceView("cuda:1", 10.0)]
    placements = plan(["a", "b"], devices, lambda job, device: JobCost(1.0))
    assert [p.device for p in placements] == ["cuda:1", "cuda:1"]
    # Every device failed: the jobs still go somewhere (and fail with the reason), not nowhere.
    down = [DeviceView("cuda:0", 0.0, available=False), DeviceView("cuda:1", 0.0, available=False)]
    assert [p.device for p in plan(["a"], down, lambda job, device: JobCost(1.0))] == ["cuda:0"]


def test_a_device_new_to_a_size_is_taken_as_fast_as_one_that_knows_it() -> None:
    """cuda:1 has never run this size; the plan still uses it, as if it ran as fast as cuda:0."""
    devices = [DeviceView("cuda:0", 0.0), DeviceView("cuda:1", 0.0)]
    costs = {"cuda:0": JobCost(2.0), "cuda:1": None}
    placements = plan(["a", "b"], devices, lambda job, device: costs[device])
    assert [(p.device, p.start_s, p.total_s) for p in placements] == [
        ("cuda:0", 0.0, 2.0),
        ("cuda:1", 0.0, None),
    ]


def test_earliest_finish_is_not_used_where_first_free_ends_the_queue_sooner() -> None:
    """Greedy earliest-finish would put the small job on the slightly faster cuda:1 and the big one
    after it there (14 s); first-free runs them side by side (10 s)."""
    devices = [DeviceView("cuda:0", 0.0), DeviceView("cuda:1", 0.0)]
    costs = {
        ("small", "cuda:0"): JobCost(5.0),
        ("small", "cuda:1"): JobCost(4.0),
        ("big", "cuda:0"): JobCost(100.0),
        ("big", "cuda:1"): JobCost(10.0),
    }
    placements = plan(["small", "big"], devices, lambda job, device: costs[(job, device)])
    assert makespan(placements) == 10.0
    assert [p.device for p in placements] == ["cuda:0", "cuda:1"]


SPEEDS = st.floats(min_value=0.05, max_value=20.0)


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[str], list[DeviceView], dict[tuple[str, str], JobCost]]:
    """Fast, slow, busy, cold and failed devices, and jobs of different sizes."""
    count = draw(st.integers(1, 4))
    devices = [
        DeviceView(
            f"cuda:{i}",
            draw(st.sampled_from([0.0, 0.0, 1.5, 7.0])),
            loaded=draw(st.booleans()),
            warm=draw(st.booleans()),
            available=draw(st.booleans()) or i == 0,
        )
        for i in range(count)
    ]
    jobs = [f"job{n}" for n in range(draw(st.integers(1, 12)))]
    speed = {d.name: draw(SPEEDS) for d in devices}
    load = {d.name: draw(st.floats(0.0, 30.0)) for d in devices}
    size = {job: draw(st.floats(0.1, 10.0)) for job in jobs}
    costs = {
        (job, d.name): JobCost(
            run_s=size[job] * speed[d.name], load_s=load[d.name], warmup_s=0.5 * speed[d.name]
        )
        for job in jobs
        for d in devices
    }
    return jobs, devices, costs


@given(queues())
def test_never_worse_than_first_free_and_every_job_placed_in_order(
    queue: tuple[list[str], list[DeviceView], dict[tuple[str, str], JobCost]],
) -> None:
    jobs, devices, costs = queue
    placements = plan(jobs, devices, lambda job, device: costs[(job, device)])

    assert [p.job_id for p in placements] == jobs  # every job, once, in queue order: none starved
    assert all(p.start_s is not None and p.total_s is not None for p in placements)
    assert makespan(placements) <= first_free(jobs, devices, costs) + 1e-9
    available = {d.name for d in devices if d.available}
    assert {p.device for p in placements} <= available
    # On each device, jobs start in queue order, one after another.
    for device in {p.device for p in placements}:
        mine = [p for p in placements if p.device == device]
        for earlier, later in itertools.pairwise(mine):
            assert earlier.start_s is not None and earlier.total_s is not None and later.start_s is not None
            assert later.start_s >= earlier.start_s + earlier.total_s - 1e-9


@given(st.integers(1, 4), st.integers(1, 10), SPEEDS)
def test_identical_devices_and_jobs_are_taken_in_queue_and_device_order(
    devices: int, jobs: int, run: float
) -> None:
    views = [DeviceView(f"cuda:{i}", 0.0) for i in range(devices)]
    names = [f"job{n}" for n in range(jobs)]
    placements = plan(names, views, lambda job, device: JobCost(run))
    starts = [p.start_s for p in placements]
    assert None not in starts
    assert starts == sorted(
        s for s in starts if s is not None
    )  # an earlier job never starts after a later one
    assert [p.device for p in placements[:devices]] == [v.name for v in views][: len(placements)]
