"""A job's snapshot (zimage_sse/service/state.py): reading it changes nothing, and an ended job says
nothing stale."""

from __future__ import annotations

from zimage_sse.params import JobParams
from zimage_sse.service.state import JobState

PARAMS = JobParams("a red fox", "", 256, 256, 8, 0.0, 7, 1)


def running(now: float) -> JobState:
    state = JobState("0123456789abcdef", PARAMS, "running", "tiny", created_at=now - 5, device="cuda:1")
    state.started_at = now - 4.0
    state.eta_s, state.eta_at = 4.0, now  # half way
    return state


def test_reading_a_snapshot_moves_nothing() -> None:
    state = running(1000.0)
    first = state.snapshot(1000.0)
    assert first["percent"] == 50.0
    assert state.progress_floor == 0.0  # reading it kept nothing
    assert state.snapshot(1000.0) == first


def test_a_longer_new_estimate_makes_the_bar_wait_never_go_back() -> None:
    """Drawn at 56 % half a second later, then a step says the job will take longer: the bar stays
    where the old estimate had it (62.5 % at that moment) instead of dropping to 45 %."""
    state = running(1000.0)
    drawn = state.snapshot(1000.5)["percent"]
    state.set_eta(6.0, 1001.0)
    after = [state.snapshot(t)["percent"] for t in (1001.0, 1001.5, 1002.0)]
    assert drawn == 56.2 and after[0] == 62.5 >= drawn
    assert after == sorted(after)


def test_a_failed_job_keeps_the_percent_it_reached_and_has_no_eta() -> None:
    state = running(1000.0)
    state.set_eta(4.0, 1000.0)
    state.status, state.finished_at, state.eta_s = "failed", 1001.0, None
    snapshot = state.snapshot(1002.0)
    assert snapshot["percent"] == 50.0  # not 99.9: it never got near the end
    assert (snapshot["eta_s"], snapshot["predicted_start_s"], snapshot["predicted_total_s"]) == (
        None,
        None,
        None,
    )
    assert snapshot["device"] == "cuda:1"


def test_a_job_cancelled_while_queued_has_no_place_no_plan_and_no_eta() -> None:
    state = JobState("0123456789abcdef", PARAMS, "queued", "tiny", created_at=1000.0)
    state.position, state.planned_device = 1, "cuda:0"
    state.predicted_start_at, state.predicted_total_s = 1003.0, 2.0
    state.eta_s, state.eta_at = 5.0, 1000.0
    queued = state.snapshot(1000.0)
    assert (queued["position"], queued["planned_device"], queued["predicted_start_s"]) == (1, "cuda:0", 3.0)

    state.status = "cancelled"
    snapshot = state.snapshot(1001.0)
    assert (snapshot["position"], snapshot["eta_s"], snapshot["percent"]) == (None, None, 0.0)
    assert (snapshot["planned_device"], snapshot["predicted_start_s"], snapshot["predicted_total_s"]) == (
        None,
        None,
        None,
    )


def test_a_done_job_is_at_100_with_nothing_left() -> None:
    state = running(1000.0)
    state.status, state.finished_at, state.eta_s = "done", 1004.0, 0.0
    snapshot = state.snapshot(1010.0)
    assert (snapshot["percent"], snapshot["eta_s"], snapshot["elapsed_s"]) == (100.0, 0.0, 8.0)
