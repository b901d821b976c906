"""A worker per device: two CPU workers in one real server (one torch thread each, on the 2 cores
here), jobs on both at once, placement, cancel, SIGTERM and kill -9 with two jobs running, a device
refused at start, and a device whose model will not load while the other serves."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from zimage_sse.broadcaster import Broadcaster
from zimage_sse.config import Settings
from zimage_sse.db import Store
from zimage_sse.params import validate
from zimage_sse.service import JobService
from zimage_sse.worker import Worker

from .conftest import ROOT, SSE, Server, follow, read_sse, start_server, submit
from .test_reliability import EXIT_DEADLINE_S, LONG_JOB, is_step, job_row, wait_exit
from .test_streams import Listener, job_events_path

DEVICES = "cpu:0,cpu:1"
ONE_THREAD = {"ZIMAGE_SSE_CPU_THREADS": "1"}
# About a second on one core of the tiny model: long enough for two to overlap.
MEDIUM: dict[str, Any] = {"width": 512, "height": 512, "steps": 12}


@pytest.fixture
def two_devices(tmp_path: Path, models_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "data", models_dir, env=ONE_THREAD, device=DEVICES)
    yield server
    server.stop()


def start_running(server: Server, client: httpx.Client, prompt: str, count: int = 2) -> list[dict[str, Any]]:
    """`count` long jobs, each submitted once the one before is running, so each has a device of its own."""
    jobs = []
    for n in range(count):
        job = submit(client, prompt=f"{prompt} {n}", **LONG_JOB)
        Listener(server, job_events_path(job["id"])).wait_for(is_step)
        jobs.append(job)
    return jobs


def ended_as(client: httpx.Client, job_id: str) -> str:
    """How a job ended, once it has: its stream's terminal event, or the snapshot of a job that had
    ended before the stream opened (with two devices, a job further back may finish first)."""
    last = follow(client, job_id)[-1]
    return str(last.json()["status"]) if last.event == "snapshot" else last.event


def devices_named(events: list[SSE]) -> set[str]:
    return {e.json()["device"] for e in events if e.event in ("phase", "step", "done")}


def test_two_workers_run_queued_jobs_at_the_same_time_each_once_each_naming_its_device(
    two_devices: Server,
) -> None:
    with two_devices.client() as client:
        status = client.get("/api/status").json()
        assert [d["device"] for d in status["devices"]] == ["cpu:0", "cpu:1"]
        jobs = [submit(client, prompt=f"job {n}", **MEDIUM) for n in range(4)]
        # From id 0: every event each job has had, whether it has ended already or not.
        streams = {job["id"]: follow(client, job["id"], headers={"Last-Event-ID": "0"}) for job in jobs}
        ended = {job["id"]: client.get(f"/api/jobs/{job['id']}").json() for job in jobs}

    for job_id, events in streams.items():
        assert events[-1].event == "done", [e.event for e in events]
        named = devices_named(events)
        assert named == {ended[job_id]["device"]}, named  # every event names the one device that ran it
        steps = [e.json()["step"] for e in events if e.event == "step"]
        assert steps == list(range(1, MEDIUM["steps"] + 1))  # it ran once
    assert {state["device"] for state in ended.values()} == {"cpu:0", "cpu:1"}
    rows = [job_row(two_devices.data_dir, job["id"]) for job in jobs]
    assert all(row["attempts"] == 1 for row in rows)
    intervals = sorted((row["started_at"], row["finished_at"], row["device"]) for row in rows)
    overlapping = [
        (a, b) for i, a in enumerate(intervals) for b in intervals[i + 1 :] if b[0] < a[1] and a[2] != b[2]
    ]
    assert overlapping, f"no two jobs ran at the same time: {intervals}"
    # The home page's queue and the job page say where a job ran.
    with two_devices.client() as client:
        page = client.get(f"/jobs/{jobs[0]['id']}").text
    assert ended[jobs[0]["id"]]["device"] in page


def test_queued_jobs_say_which_device_they_will_start_on_and_when(two_devices: Server) -> None:
    with two_devices.client() as client:
        # Teach both devices the size, so the plan can predict starts.
        for job in [submit(client, prompt=f"warm {n}", **MEDIUM) for n in range(2)]:
            assert ended_as(client, job["id"]) == "done"
        long_ones = start_running(two_devices, client, "long")
        waiting = submit(client, prompt="waits for a device", **MEDIUM)
        state = client.get(f"/api/jobs/{waiting['id']}").json()
        home = client.get("/").text
        job_page = client.get(f"/jobs/{waiting['id']}").text
        for job in long_ones:
            assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
        assert ended_as(client, waiting["id"]) == "done"
        ran_on = client.get(f"/api/jobs/{waiting['id']}").json()["device"]

    assert state["status"] == "queued"
    assert state["planned_device"] in ("cpu:0", "cpu:1")
    assert ran_on in ("cpu:0", "cpu:1")
    assert f"on {state['planned_device']}, starts in about" in home
    assert "planned-device" in job_page
    # Both long jobs run at once, each on its own device, in the home page's queue.
    assert home.count('class="queue-item running"') == 2
    assert "on cpu:0" in home and "on cpu:1" in home


def test_cancel_stops_the_job_on_the_second_device_and_a_queued_one(two_devices: Server) -> None:
    with two_devices.client() as client:
        first = submit(client, prompt="on the first device", **LONG_JOB)
        Listener(two_devices, job_events_path(first["id"])).wait_for(is_step)
        second = submit(client, prompt="on the second device", **LONG_JOB)
        watcher = Listener(two_devices, job_events_path(second["id"]))
        watcher.wait_for(is_step)
        queued = submit(client, prompt="queued behind both", **MEDIUM)
        assert client.get(f"/api/jobs/{second['id']}").json()["device"] == "cpu:1"
        assert client.post(f"/api/jobs/{queued['id']}/cancel").status_code == 202
        assert client.post(f"/api/jobs/{second['id']}/cancel").status_code == 202
        events = watcher.result()
        assert client.get(f"/api/jobs/{first['id']}").json()["status"] == "running"
        assert client.post(f"/api/jobs/{first['id']}/cancel").status_code == 202
        cancelled_queued = client.get(f"/api/jobs/{queued['id']}").json()

    assert events[-1].event == "cancelled"
    assert events[-1].json()["device"] == "cpu:1"
    steps = [e.json()["step"] for e in events if e.event == "step"]
    assert len(steps) < LONG_JOB["steps"]
    # A job cancelled while queued says nothing stale: no place in the queue, no ETA.
    assert cancelled_queued["status"] == "cancelled"
    assert (cancelled_queued["position"], cancelled_queued["eta_s"], cancelled_queued["device"]) == (
        None,
        None,
        None,
    )


def test_sigterm_with_two_jobs_running_queues_both_again_and_they_run_after_the_restart(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    env = {**ONE_THREAD, "ZIMAGE_SSE_SHUTDOWN_GRACE": "0.2"}
    first = start_server(data, models_dir, env=env, device=DEVICES)
    try:
        with first.client() as client:
            running = start_running(first, client, "cut off")
            later = submit(client, prompt="queued behind them", steps=2)
            first.process.send_signal(signal.SIGTERM)
        assert wait_exit(first) in (0, -signal.SIGTERM)
    finally:
        first.stop()
    for job in running:
        row = job_row(data, job["id"])
        assert (row["status"], row["started_at"], row["attempts"]) == ("queued", None, 0)
    assert job_row(data, later["id"])["status"] == "queued"

    second = start_server(data, models_dir, env=ONE_THREAD, device=DEVICES)
    try:
        with second.client() as client:
            for job in [*running, later]:
                assert ended_as(client, job["id"]) == "done"
    finally:
        second.stop()
    starts = [job_row(data, job["id"])["started_at"] for job in running]
    assert max(starts) < job_row(data, later["id"])["started_at"]


def test_kill_9_with_two_jobs_running_queues_both_again_in_order(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data, models_dir, env=ONE_THREAD, device=DEVICES)
    try:
        with first.client() as client:
            running = start_running(first, client, "running when killed")
            queued = submit(client, prompt="queued", steps=2)
        first.process.kill()
        first.process.wait(timeout=EXIT_DEADLINE_S)
    finally:
        first.stop()
    assert [job_row(data, job["id"])["status"] for job in running] == ["running", "running"]

    # One device after the restart, so the order they run in is the queue's order.
    second = start_server(data, models_dir, env=ONE_THREAD, device="cpu:0")
    try:
        with second.client() as client:
            for job in [*running, queued]:
                assert ended_as(client, job["id"]) == "done"
    finally:
        second.stop()
    rows = [job_row(data, job["id"]) for job in [*running, queued]]
    assert [row["attempts"] for row in rows] == [2, 2, 1]
    starts = [row["started_at"] for row in rows]
    assert starts == sorted(starts), "the requeued jobs ran out of their original order"


@pytest.mark.parametrize(
    ("device", "named"),
    [("gpu7", "unknown device 'gpu7'"), ("cuda:5", "device cuda:5 does not exist"), ("cpu,cpu:0", "twice")],
)
def test_a_device_that_does_not_exist_is_refused_at_start(tmp_path: Path, device: str, named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "serve", "--device", device, "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "this machine has" in result.stderr or "twice" in result.stderr
    assert "cpu" in result.stderr


async def test_a_device_whose_model_will_not_load_fails_its_job_and_the_other_serves(
    tmp_path: Path, models_dir: Path
) -> None:
    """Two real workers; the second's checkpoint is broken (a directory with no model in it). Its
    first job fails with the reason, it is shown as failed, and every later job runs on the first."""
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    images = tmp_path / "images"
    images.mkdir()
    store = await Store.open(tmp_path / "test.db")
    good = Worker("tiny", models_dir, images, "cpu:0", cpu_threads=1)
    bad = Worker(str(broken), models_dir, images, "cpu:1", cpu_threads=1)
    service = JobService(store, [good, bad], Broadcaster(256))
    await service.start()
    try:
        settings = Settings()
        jobs = [
            await service.submit(
                validate({"prompt": f"p{n}", "width": 256, "height": 256, "steps": 2}, settings)
            )
            for n in range(4)
        ]
        for job in jobs:
            async with service.follow(job.id) as (first, subscription):
                if subscription is not None and not any(e.terminal for e in first):
                    async for event in subscription:
                        if event.terminal:
                            break
        ended = [await service.get(job.id) for job in jobs]
        status = service.status_snapshot()
    finally:
        await service.stop()
        await store.close()

    failed = [job for job in ended if job.status == "failed"]
    assert len(failed) == 1 and failed[0].device == "cpu:1", [(j.status, j.device) for j in ended]
    assert "could not be loaded" in (failed[0].error or "")
    assert all(job.status == "done" and job.device == "cpu:0" for job in ended if job is not failed[0])
    by_device = {d["device"]: d for d in status["devices"]}
    assert by_device["cpu:1"]["state"] == "failed" and "could not be loaded" in by_device["cpu:1"]["error"]
    assert by_device["cpu:0"]["state"] == "ready"
    assert status["state"] == "ready"


def test_status_lists_every_device_and_metrics_label_them(two_devices: Server) -> None:
    with two_devices.client() as client:
        assert ended_as(client, submit(client, steps=2)["id"]) == "done"
        status = client.get("/api/status").json()
        metrics = client.get("/metrics").text
    assert {d["device"]: d["dtype"] for d in status["devices"]} == {"cpu:0": "float32", "cpu:1": "float32"}
    assert 'zimage_model_loaded{device="cpu:0"}' in metrics
    assert 'zimage_model_loaded{device="cpu:1"}' in metrics
    assert 'zimage_device_busy{device="cpu:1"} 0.0' in metrics


def test_the_queue_stream_names_the_running_job_of_each_device(two_devices: Server) -> None:
    with two_devices.client() as client:
        jobs = start_running(two_devices, client, "long")
        with client.stream("GET", "/api/events") as response:
            (snapshot,) = read_sse(response, until=lambda e: e.event == "snapshot")
        for job in jobs:
            assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
        for job in jobs:
            assert ended_as(client, job["id"]) == "cancelled"
    running = {r["id"]: r["device"] for r in snapshot.json()["running"]}
    assert set(running) == {job["id"] for job in jobs}
    assert set(running.values()) == {"cpu:0", "cpu:1"}
