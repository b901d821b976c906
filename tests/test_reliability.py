"""Restarts, shutdown and faults against real server processes: SIGTERM, kill -9, a broken checkpoint,
a full disk and a GPU out of memory. Each test breaks something for real and checks what a user sees."""

from __future__ import annotations

import resource
import shutil
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from zimage_sse.events import JobFailed
from zimage_sse.params import JobParams
from zimage_sse.worker import Worker, describe_error

from .conftest import SSE, Server, follow, start_server, submit
from .test_streams import Listener, job_events_path

# Tens of milliseconds a step at 512² on the tiny model on 2 idle CPU cores, several times that on a busy
# machine: long enough to act while the job runs, short enough to run it to its end.
MEDIUM_JOB: dict[str, Any] = {"width": 512, "height": 512, "steps": 30}
# For a job that must still be running when a signal sent at its first step lands: MEDIUM_JOB's steps
# take ~9 ms once the collector no longer walks the model (zimage_sse/heap.py), so it can end first.
LONG_JOB: dict[str, Any] = {"width": 768, "height": 768, "steps": 100}
# From the moment nothing is left to wait for (the running job ended or was stopped) to the exit.
EXIT_DEADLINE_S = 30.0
POLL_S = 0.05  # polling a condition with a deadline, never a stand-in for synchronisation


def is_step(event: SSE) -> bool:
    return event.event == "step"


def rows(server_or_dir: Server | Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    data_dir = server_or_dir.data_dir if isinstance(server_or_dir, Server) else server_or_dir
    with closing(sqlite3.connect(data_dir / "zimage-sse.db")) as db:
        return list(db.execute(sql, args).fetchall())


def job_row(data_dir: Path, job_id: str) -> dict[str, Any]:
    with closing(sqlite3.connect(data_dir / "zimage-sse.db")) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert row is not None, job_id
    return dict(row)


def integrity(data_dir: Path) -> str:
    return str(rows(data_dir, "PRAGMA integrity_check")[0][0])


def wait_exit(server: Server, deadline_s: float = EXIT_DEADLINE_S) -> int:
    """The server process's exit status, once it has exited (a signal's death counts as exiting)."""
    returncode = server.process.wait(timeout=deadline_s)
    return int(returncode)


def poll(condition: Callable[[], Any], what: str, deadline_s: float = 30.0) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


def images_of(data_dir: Path, job_id: str) -> list[str]:
    """Every file of a job in the images directory, temporary ones included."""
    return sorted(path.name for path in (data_dir / "images").glob(f"*{job_id}*"))


# -- SIGTERM -------------------------------------------------------------------------------------------


def test_sigterm_refuses_new_jobs_lets_the_running_one_finish_and_says_goodbye(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(shutdown_grace="120")
    with server.client() as client:
        running = submit(client, prompt="finishes during the shutdown", **MEDIUM_JOB)
        waiting = submit(client, prompt="stays queued across the shutdown")
        watcher = Listener(server, job_events_path(running["id"]))
        waiter = Listener(server, job_events_path(waiting["id"]))
        dashboard = Listener(server, "/api/events")
        page = Listener(server, f"/jobs/{running['id']}/stream")
        watcher.wait_for(is_step)
        for listener in (waiter, dashboard, page):
            listener.wait_for(lambda e: True)
        server.process.send_signal(signal.SIGTERM)

        # While the running job finishes, the server still answers, but takes no new job.
        answers: dict[str, int] = {}

        def submit_late() -> httpx.Response | None:
            prompt = f"submitted after SIGTERM {len(answers)}"
            response = client.post("/api/jobs", json={"prompt": prompt})
            answers[prompt] = response.status_code  # 201 until the server has taken in the signal
            return response if response.status_code == 503 else None

        refused = poll(submit_late, "submissions to be refused")
        assert "shutting down" in refused.json()["error"], refused.text
        assert refused.headers["retry-after"].isdigit()
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["shutting_down"] is True, ready.text

    # Watchers of the running job see it end; every other stream ends with the `shutdown` event.
    job_events = watcher.result()
    ended = time.monotonic()
    assert job_events[-1].event == "done", [e.event for e in job_events]
    steps = [e.json()["step"] for e in job_events if e.event == "step"]
    assert steps == list(range(steps[0], MEDIUM_JOB["steps"] + 1))
    assert page.result()[-1].event == "end"
    for listener in (waiter, dashboard):
        events = listener.result()
        assert events[-1].event == "shutdown", [e.event for e in events]
        assert "reconnect" in events[-1].json()["reason"]
        # It carries no id, so a client's Last-Event-ID stays that of the last real event.
        assert events[-1].id == events[-2].id
    dashboard_done = [e.json()["job_id"] for e in dashboard.result() if e.event == "done"]
    assert dashboard_done == [running["id"]]

    assert wait_exit(server) in (0, -signal.SIGTERM)
    assert time.monotonic() - ended < EXIT_DEADLINE_S
    assert job_row(server.data_dir, running["id"])["status"] == "done"
    assert job_row(server.data_dir, waiting["id"])["status"] == "queued"
    stored = {prompt: status for prompt, status in rows(server, "SELECT prompt, status FROM jobs")}
    for prompt, code in answers.items():
        assert stored.get(prompt) == ("queued" if code == 201 else None), (prompt, code)
    assert integrity(server.data_dir) == "ok"


def test_sigterm_past_the_grace_queues_the_running_job_again_to_run_first(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    first = start_server(data, models_dir, env={"ZIMAGE_SSE_SHUTDOWN_GRACE": "0.2"})
    try:
        with first.client() as client:
            cut = submit(client, prompt="cut off by the shutdown", **LONG_JOB)
            later = submit(client, prompt="queued behind it")
            watcher = Listener(first, job_events_path(cut["id"]))
            watcher.wait_for(is_step)
            sent = time.monotonic()
            first.process.send_signal(signal.SIGTERM)
            events = watcher.result()
        assert wait_exit(first) in (0, -signal.SIGTERM)
        # The grace, one step, and the exit; not the job's remaining seconds of steps.
        took = time.monotonic() - sent
    finally:
        first.stop()

    assert events[-1].event == "shutdown", [e.event for e in events]
    assert not [e for e in events if e.event in ("done", "failed", "cancelled")]
    last_seen = events[-1].id
    assert last_seen is not None
    assert took < EXIT_DEADLINE_S
    row = job_row(data, cut["id"])
    assert (row["status"], row["started_at"], row["attempts"]) == ("queued", None, 0)
    assert images_of(data, cut["id"]) == []
    assert job_row(data, later["id"])["status"] == "queued"
    assert integrity(data) == "ok"

    second = start_server(data, models_dir)
    try:
        with second.client() as client:
            # Resuming with an id from the last process: a fresh snapshot, then the rerun to its end.
            resumed = follow(client, cut["id"], headers={"Last-Event-ID": last_seen})
            assert resumed[0].event == "snapshot", resumed[0]
            assert resumed[-1].event == "done", [e.event for e in resumed]
            steps = [e.json()["step"] for e in resumed if e.event == "step"]
            assert steps == list(range(1, LONG_JOB["steps"] + 1))
            assert follow(client, later["id"])[-1].event == "done"
    finally:
        second.stop()
    assert job_row(data, cut["id"])["started_at"] < job_row(data, later["id"])["started_at"]
    assert job_row(data, cut["id"])["attempts"] == 1


# -- kill -9 -------------------------------------------------------------------------------------------


def kill_mid_job(server: Server, job_id: str) -> None:
    """SIGKILL once the job has timed a step: the process gets no chance to tidy anything."""
    listener = Listener(server, job_events_path(job_id))
    listener.wait_for(is_step)
    server.process.kill()
    server.process.wait(timeout=EXIT_DEADLINE_S)


def test_kill_9_requeues_the_running_job_once_then_fails_it_and_keeps_the_queue_order(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    first = start_server(data, models_dir)
    try:
        with first.client() as client:
            doomed = submit(client, prompt="running when the server dies", **LONG_JOB)
            queued = [submit(client, prompt=f"queued {n}", steps=2) for n in range(3)]
            kill_mid_job(first, doomed["id"])
    finally:
        first.stop()
    assert integrity(data) == "ok"
    assert job_row(data, doomed["id"])["status"] == "running"  # as the killed process left it
    # What a kill during an image write leaves behind: a temporary file, never a visible image.
    stale = data / "images" / f".{doomed['id']}-0.png.partial"
    stale.write_bytes(b"\x89PNG half an image")

    second = start_server(data, models_dir)
    try:
        assert not stale.exists()
        with second.client() as client:
            # Queued again once, and first: it runs before the jobs that were queued behind it.
            assert client.get(f"/api/jobs/{doomed['id']}").json()["status"] in ("queued", "running")
            kill_mid_job(second, doomed["id"])
    finally:
        second.stop()
    assert integrity(data) == "ok"
    assert job_row(data, doomed["id"])["attempts"] == 2
    assert all(job_row(data, job["id"])["status"] == "queued" for job in queued)

    third = start_server(data, models_dir)
    try:
        with third.client() as client:
            state = client.get(f"/api/jobs/{doomed['id']}").json()
            assert state["status"] == "failed"
            assert "2 times" in state["error"] and "not retried" in state["error"], state["error"]
            assert state["images"] == []
            for job in queued:
                assert follow(client, job["id"])[-1].event == "done"
    finally:
        third.stop()
    starts = [job_row(data, job["id"])["started_at"] for job in queued]
    assert starts == sorted(starts), "queued jobs ran out of their original order"
    assert images_of(data, doomed["id"]) == []
    assert all(images_of(data, job["id"]) == [f"{job['id']}-0.png"] for job in queued)
    assert integrity(data) == "ok"


# -- faults --------------------------------------------------------------------------------------------


def test_a_model_that_fails_to_load_is_reported_and_retried_without_a_restart(
    tmp_path: Path, models_dir: Path
) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(next(models_dir.glob("tiny-v*")), checkpoint)
    weights = checkpoint / "transformer" / "diffusion_pytorch_model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 3])  # a download cut short

    server = start_server(tmp_path / "data", models_dir, model=str(checkpoint))
    try:
        with server.client() as client:
            job = submit(client, steps=2)
            events = follow(client, job["id"])
            assert events[-1].event == "failed", [e.event for e in events]
            error = events[-1].json()["error"]
            assert "could not be loaded" in error and "diffusion_pytorch_model.safetensors" in error, error
            assert "Traceback" not in error

            ready = client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["model"].startswith("failed: The model could not be loaded"), ready.text
            assert client.get("/api/status").json()["state"] == "failed"
            assert client.get("/health").status_code == 200
            assert server.process.poll() is None  # up, not crash-looping

            weights.write_bytes(intact)  # the checkpoint is fixed; no restart
            again = follow(client, submit(client, steps=2)["id"])
            assert again[-1].event == "done", [e.event for e in again]
            assert client.get("/ready").status_code == 200
    finally:
        server.stop()


# A file-size limit on the server process alone makes every write past it fail with EFBIG, as a full
# disk does with ENOSPC: unprivileged, here and in CI. 2 MB holds the database, its WAL and the log of
# a few jobs and a 256² PNG (~0.2 MB), but not a 1024² PNG of the tiny model's noise (~3 MB).
FILE_SIZE_LIMIT = 2 * 1024 * 1024


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_full_disk_while_saving_fails_the_job_cleanly_and_the_next_one_runs(
    tmp_path: Path, models_dir: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(data, models_dir, preexec_fn=limit_file_size)
    try:
        with server.client() as client:
            big = submit(client, width=1024, height=1024, steps=2)
            events = follow(client, big["id"])
            assert events[-1].event == "failed", [e.event for e in events]
            error = events[-1].json()["error"]
            assert error.startswith("Disk full while saving the image"), error
            state = client.get(f"/api/jobs/{big['id']}").json()
            assert (state["status"], state["images"], state["error"]) == ("failed", [], error)
            assert images_of(data, big["id"]) == []  # not even a temporary file

            small = submit(client, steps=2)
            done = follow(client, small["id"])
            assert done[-1].event == "done", [e.event for e in done]
            picture = client.get(done[-1].json()["images"][0])
            assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    finally:
        server.stop()
    assert integrity(data) == "ok"


def test_out_of_memory_reads_as_advice() -> None:
    reason = describe_error(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 18.00 GiB"))
    assert reason == "The GPU ran out of memory for this job; try a smaller size or fewer images."


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_job_out_of_gpu_memory_fails_frees_its_memory_and_the_next_runs(
    tmp_path: Path, models_dir: Path
) -> None:
    worker = Worker("tiny", models_dir, tmp_path / "images", device="cuda")

    def params(size: int, images: int) -> JobParams:
        return JobParams(
            prompt="out of memory",
            negative_prompt="",
            width=size,
            height=size,
            steps=2,
            guidance=0.0,
            seed=1,
            num_images=images,
        )

    def run(job_id: str, job: JobParams) -> Any:
        return worker.run(job_id, job, lambda _message: None, threading.Event())

    run("0" * 16, params(256, 1))  # loads the model
    resident = torch.cuda.memory_allocated()
    # Room for the model and a small job, far too little for four 2048² images.
    torch.cuda.set_per_process_memory_fraction(
        (resident + 2 * 1024**3) / torch.cuda.get_device_properties(0).total_memory
    )
    try:
        with pytest.raises(JobFailed) as failure:
            run("1" * 16, params(2048, 4))
        assert "ran out of memory" in failure.value.reason
        assert torch.cuda.memory_allocated() <= resident + 64 * 1024**2  # the failed job's tensors are gone
        assert run("2" * 16, params(256, 1)).images == ["2222222222222222-0.png"]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
