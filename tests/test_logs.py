"""Structured logs: every line about a job names it, as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

from .conftest import Server, follow, submit


def test_json_logs_name_the_job_on_every_line_about_it(make_server: Callable[..., Server]) -> None:
    server = make_server(log_format="json")
    with server.client() as client:
        done = submit(client, steps=2)
        assert follow(client, done["id"])[-1].event == "done"
        second = submit(client, width=512, height=256, steps=2)
        assert follow(client, second["id"])[-1].event == "done"
    server.stop()

    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert lines, server.logs()[:2000]
    about = {job: [line for line in lines if line["job_id"] == job] for job in (done["id"], second["id"])}
    for entries in about.values():
        messages = [entry["message"] for entry in entries]
        assert any(m.startswith("queued at position") for m in messages), messages
        assert "done" in messages, messages
    # Lines that are about no job say so, rather than borrowing one.
    assert any(line["job_id"] is None and "Uvicorn running" in line["message"] for line in lines)


def test_text_logs_carry_the_job_id(make_server: Callable[..., Server]) -> None:
    server = make_server()
    with server.client() as client:
        job = submit(client, steps=2)
        assert follow(client, job["id"])[-1].event == "done"
    server.stop()
    assert f"[job {job['id']}] done" in server.logs()
