"""The learned ETA through a real server: before the first step, for unseen sizes, for the queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .conftest import SSE, Server, follow, read_sse, submit


def run_to_end(client: httpx.Client, **params: Any) -> list[SSE]:
    job = submit(client, **params)
    events = follow(client, job["id"])
    assert events[-1].event == "done", events[-1]
    return events


def test_an_unseen_size_has_an_eta_in_its_first_event(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        # Sizes whose jobs last long enough (0.3-3 s on the tiny model) for timing noise to stay small.
        for size in (512, 1024):
            for _ in range(3):
                run_to_end(client, width=size, height=size)

        job = submit(client, width=768, height=768)
        # Known before the job has run a single step: in the POST's answer and in the stream's first event.
        assert job["predicted_total_s"] is not None and job["predicted_total_s"] > 0
        events = follow(client, job["id"])
    first = events[0].json()
    assert events[0].event == "snapshot"
    # Whatever state the job is in when the stream opens, its predicted run time is there.
    assert first["predicted_total_s"] == job["predicted_total_s"]
    phases = [e.json() for e in events if e.event == "phase"]
    assert phases and all(p["eta_s"] is not None for p in phases), phases
    actual = events[-1].json()["elapsed_s"]
    # The unseen size lies between two known ones: the cost model should be in the right range.
    assert 0.3 * actual < job["predicted_total_s"] < 3 * actual, (job["predicted_total_s"], actual)

    with server.client() as client:
        report = client.get("/api/eta/accuracy").json()
    assert report["points"] == ["0%", "10%", "25%", "50%"]
    at_start = report["by_size"]["768x768"]["0%"]
    assert at_start["jobs"] == 1 and at_start["mape_percent"] is not None
    assert report["overall"]["0%"]["jobs"] + report["overall"]["0%"]["none"] == 7


def test_queued_jobs_carry_predicted_starts_that_follow_the_queue(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        # 1024² on the tiny model: about 0.15 s a step and 1.5 s of decoding on 2 cores.
        for _ in range(2):
            run_to_end(client, width=1024, height=1024)
        blocker = submit(client, width=1024, height=1024, steps=100)
        with client.stream("GET", f"/api/jobs/{blocker['id']}/events") as response:
            read_sse(response, until=lambda e: e.event == "step")

        first = submit(client, width=1024, height=1024)
        second = submit(client, width=1024, height=1024)
        assert first["predicted_start_s"] is not None and second["predicted_start_s"] is not None
        # The second starts after the first has run: its start is later by about the first's run time.
        gap = second["predicted_start_s"] - first["predicted_start_s"]
        assert abs(gap - first["predicted_total_s"]) < 0.5 * first["predicted_total_s"], (gap, first)
        assert second["eta_s"] > first["eta_s"]

        page = client.get(f"/jobs/{second['id']}").text
        assert "Starts in about" in page

        before = client.get(f"/api/jobs/{second['id']}").json()["predicted_start_s"]
        assert client.post(f"/api/jobs/{first['id']}/cancel").status_code == 202
        after = client.get(f"/api/jobs/{second['id']}").json()["predicted_start_s"]
        # The cancelled job no longer stands ahead of it.
        assert after < before - 0.5 * first["predicted_total_s"], (before, after)

        assert client.post(f"/api/jobs/{blocker['id']}/cancel").status_code == 202
        assert follow(client, second["id"])[-1].event == "done"
