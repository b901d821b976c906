"""Operational endpoints against real servers: /health, /ready and /metrics after real jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import LONG_JOB, Server, follow, read_sse, submit

SMALL_STEPS = 6
# How long a scrape may wait for the recorder task to take in an event that has already been published.
RECORDER_DEADLINE_S = 10.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[Samples, set[str]]:
    """Every sample of /metrics by (name, labels), and the metric family names, as Prometheus parses them."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def scrape_until(client: httpx.Client, ready: Callable[[Samples], bool]) -> Samples:
    """Scrape until `ready` holds: the recorder takes in a terminal event just after it is published."""
    deadline = time.monotonic() + RECORDER_DEADLINE_S
    while True:
        samples, _families = scrape(client)
        if ready(samples) or time.monotonic() > deadline:
            return samples


def finished(samples: Samples, status: str) -> float:
    return samples.get(("zimage_jobs_finished_total", frozenset({("status", status)})), 0.0)


def first_event(lines: Iterator[str]) -> str:
    """The name of the first event on an SSE stream, read from lines the caller keeps open."""
    kind = ""
    for line in lines:
        if line.startswith("event:"):
            kind = line.partition(":")[2].strip()
        elif line == "" and kind:
            return kind
    raise AssertionError("the stream ended before its first event")


def run_job(client: httpx.Client, **params: Any) -> dict[str, Any]:
    job = submit(client, **params)
    events = follow(client, job["id"])
    assert events[-1].event == "done", events
    state: dict[str, Any] = client.get(f"/api/jobs/{job['id']}").json()
    return state


def test_health_is_ok_and_ready_waits_for_the_model(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        # The model loads with the first job, so a fresh server is up but not ready.
        before = client.get("/ready")
        assert before.status_code == 503
        assert before.json() == {"ready": False, "model": "not loaded", "database": "open"}

        run_job(client, steps=2)
        after = client.get("/ready")
        assert after.status_code == 200
        assert after.json() == {"ready": True, "model": "loaded", "database": "open"}
        assert client.get("/health").json() == {"status": "ok"}


def test_metrics_count_jobs_steps_phases_and_eta_error(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        samples, families = scrape(client)
        for status in ("done", "failed", "cancelled"):
            assert finished(samples, status) == 0
        assert value(samples, "zimage_queue_depth") == 0
        # The metrics recorder subscribes to every event but is not a client.
        assert value(samples, "zimage_sse_subscribers") == 0
        assert value(samples, "zimage_model_loaded", device="cpu") == 0
        # On a CPU there is no GPU sample, and so no GPU series at all.
        assert not {name for name in families if name.startswith("zimage_gpu_")}

        # Two done jobs of one size (the second has a predicted total at its start)...
        first = run_job(client, steps=SMALL_STEPS, seed=1)
        second = run_job(client, steps=SMALL_STEPS, seed=2)
        assert first["step"] == second["step"] == SMALL_STEPS

        # ...and one cancelled after its first step.
        long = submit(client, prompt="cancel me after a step", **LONG_JOB)
        with client.stream("GET", f"/api/jobs/{long['id']}/events") as response:
            seen = read_sse(response, until=lambda e: e.event == "step")
        assert seen[-1].event == "step", seen
        assert client.post(f"/api/jobs/{long['id']}/cancel").status_code == 202
        follow(client, long["id"])
        cancelled = client.get(f"/api/jobs/{long['id']}").json()
        assert cancelled["status"] == "cancelled"
        long_steps = cancelled["step"]
        assert 1 <= long_steps < LONG_JOB["steps"]

        samples = scrape_until(client, lambda s: finished(s, "cancelled") >= 1)
        assert finished(samples, "done") == 2
        assert finished(samples, "cancelled") == 1
        assert finished(samples, "failed") == 0

        assert value(samples, "zimage_job_duration_seconds_count") == 2
        total = first["elapsed_s"] + second["elapsed_s"]
        assert abs(value(samples, "zimage_job_duration_seconds_sum") - total) < 0.01
        assert value(samples, "zimage_job_duration_seconds_bucket", le="+Inf") == 2

        # Every step run, the cancelled job's included, under its size.
        assert value(samples, "zimage_step_duration_seconds_count", size="256x256") == 2 * SMALL_STEPS
        assert value(samples, "zimage_step_duration_seconds_count", size="1024x1024") == long_steps

        for phase in ("encoding", "denoising", "decoding", "saving"):
            assert value(samples, "zimage_phase_duration_seconds_count", phase=phase) == 2
        # Only the first job loaded the model.
        assert value(samples, "zimage_phase_duration_seconds_count", phase="loading") == 1

        assert value(samples, "zimage_eta_abs_error_seconds_count") >= 1
        assert value(samples, "zimage_eta_abs_error_seconds_sum") >= 0

        assert value(samples, "zimage_queue_depth") == 0
        assert value(samples, "zimage_jobs_active", status="queued") == 0
        assert value(samples, "zimage_jobs_active", status="running") == 0
        assert value(samples, "zimage_model_loaded", device="cpu") == 1

        # A dashboard's open stream counts as a subscriber while it is open.
        with client.stream("GET", "/api/events") as stream:
            assert stream.status_code == 200
            # Hold the line iterator: dropping a half-read one makes httpcore close the connection.
            lines = stream.iter_lines()
            assert first_event(lines) == "snapshot"
            samples, _families = scrape(client)
            assert value(samples, "zimage_sse_subscribers") >= 1
