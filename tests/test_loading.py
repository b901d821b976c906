"""Model-load progress, the model's status, preloading, and the load ETA learned from past loads."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from .conftest import SSE, Server, follow, read_sse, start_server, submit

PARTS = ["text_encoder", "transformer", "vae"]


def load_events(events: list[SSE]) -> list[SSE]:
    return [e for e in events if e.event == "phase" and e.json()["phase"] == "loading"]


def model_loads(server: Server) -> list[tuple[str, float]]:
    with closing(sqlite3.connect(server.data_dir / "zimage-sse.db")) as conn:
        return [(row[0], row[1]) for row in conn.execute("SELECT component, seconds FROM model_loads")]


def test_the_first_job_reports_each_part_of_the_load_in_order(tmp_path: Path, models_dir: Path) -> None:
    server = start_server(tmp_path / "data", models_dir)
    try:
        with server.client() as client:
            assert client.get("/api/status").json()["state"] == "unloaded"
            with client.stream("GET", "/api/events") as feed:
                job = submit(client, steps=2)
                seen = read_sse(feed, until=lambda e: e.event == "done")
            status = client.get("/api/status").json()
    finally:
        server.stop()

    loading = load_events([e for e in seen if e.json().get("job_id") == job["id"]])
    assert loading[0].json().get("component") is None  # the phase begins…
    assert [(e.json()["component"], e.json()["index"], e.json()["count"]) for e in loading[1:]] == [
        ("text_encoder", 1, 3),  # …then each part as it starts
        ("transformer", 2, 3),
        ("vae", 3, 3),
    ]
    states = [e.json()["state"] for e in seen if e.event == "status"]
    assert states[0] == "loading" and states[-1] == "ready" and "failed" not in states
    assert status["state"] == "ready" and status["model"] == "tiny"
    timed = model_loads(server)
    assert sorted(name for name, _ in timed) == sorted(PARTS)
    assert all(seconds > 0 for _, seconds in timed)


def test_after_a_restart_the_load_has_an_eta_from_past_loads(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data, models_dir)
    try:
        with first.client() as client:
            assert follow(client, submit(client, steps=2)["id"])[-1].event == "done"
    finally:
        first.stop()

    second = start_server(data, models_dir)
    try:
        with second.client() as client:
            job = submit(client, steps=2)
            # Known before the job starts: it will load the model, and loads of this model were timed.
            assert job["predicted_total_s"] is not None
            events = follow(client, job["id"])
    finally:
        second.stop()
    loading = load_events(events)
    assert loading and all(e.json()["eta_s"] is not None for e in loading)


def test_preload_makes_the_server_ready_before_any_job(make_server: Callable[..., Server]) -> None:
    server = make_server(preload="1")
    with server.client() as client:
        with client.stream("GET", "/api/events") as feed:
            lines = feed.iter_lines()
            read_sse(lines, until=lambda e: e.event == "snapshot")  # subscribed from here on
            if client.get("/api/status").json()["state"] == "loading":
                read_sse(lines, until=lambda e: e.event == "status" and e.json()["state"] != "loading")
        status = client.get("/api/status").json()
        assert status["state"] == "ready", status
        assert client.get("/ready").status_code == 200
        events = follow(client, submit(client, steps=2)["id"])
    assert events[-1].event == "done"
    assert load_events(events) == []  # nothing left to load
    assert sorted(name for name, _ in model_loads(server)) == sorted(PARTS)


def test_an_idle_model_is_unloaded_and_the_next_job_loads_it_again(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(unload_after="0.5")
    with server.client() as client:
        with client.stream("GET", "/api/events") as feed:
            lines = feed.iter_lines()
            read_sse(lines, until=lambda e: e.event == "snapshot")
            first = follow(client, submit(client, steps=2)["id"])
            # No job for half a second: the model goes, and the status says so.
            read_sse(lines, until=lambda e: e.event == "status" and e.json()["state"] == "unloaded")
        assert client.get("/api/status").json()["state"] == "unloaded"
        assert client.get("/ready").status_code == 503
        second = follow(client, submit(client, steps=2)["id"])
    assert load_events(first) and load_events(second)  # both jobs loaded the model
    assert second[-1].event == "done"


def test_a_job_queued_behind_a_load_says_what_it_waits_for(tmp_path: Path) -> None:
    """The job panel as the page and its stream render it for a job waiting on a preload."""
    from zimage_sse.templating import make_templates

    job = {
        "id": "0123456789abcdef",
        "status": "queued",
        "params": {"prompt": "a fox", "width": 512, "height": 512, "steps": 8},
        "position": 1,
        "step": 0,
        "total": 8,
        "percent": 0.0,
        "elapsed_s": None,
        "eta_s": None,
        "step_s": None,
        "predicted_start_s": None,
        "predicted_total_s": None,
        "model_loading": {
            "state": "loading",
            "component": "transformer",
            "index": 2,
            "count": 3,
            "eta_s": 12.4,
        },
    }
    html = make_templates().get_template("_job.html").render(job=job)
    text = " ".join(re.sub(r"<[^>]+>", "", html).split())
    assert "Waiting for the model to load: transformer (2/3), about 12 s left." in text
