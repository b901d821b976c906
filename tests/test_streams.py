"""The SSE streams against real servers: what a client following a job (or the whole queue) receives."""

from __future__ import annotations

import io
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from zimage_sse.events import PHASES, TERMINAL

from .conftest import LONG_JOB, SSE, BusyWorker, Server, follow, read_sse, start_server, submit

# A job that keeps the tiny model busy: 1024² steps took about 0.1 s each on 2 CPU cores (measured), so
# 100 steps last about 10 s, while a cancel takes effect at the next step.
# Steps of a few tens of milliseconds (512² on the tiny model): slow enough that a reader keeps up with
# every step event, fast enough to keep the suite quick.
WATCHED_JOB: dict[str, Any] = {"width": 512, "height": 512, "steps": 8}


class Listener(threading.Thread):
    """One SSE stream read on a thread of its own, so the test can act while it is open."""

    def __init__(
        self,
        server: Server,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        stop: Callable[[SSE], bool] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self._server = server
        self._path = path
        self._headers = headers
        self._stop_when = stop
        self._changed = threading.Condition()
        self._events: list[SSE] = []
        self._finished = False
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with (
                self._server.client() as client,
                client.stream("GET", self._path, headers=self._headers) as response,
            ):
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                read_sse(response, until=self._arrived)
        except BaseException as exc:
            self._error = exc
        finally:
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _arrived(self, event: SSE) -> bool:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()
        return self._stop_when is not None and self._stop_when(event)

    def _first(self, predicate: Callable[[SSE], bool]) -> SSE | None:
        return next((event for event in self._events if predicate(event)), None)

    def wait_for(self, predicate: Callable[[SSE], bool], timeout: float = 60) -> SSE:
        """The first event (already received or still to come) that matches `predicate`."""
        with self._changed:
            self._changed.wait_for(lambda: self._first(predicate) is not None or self._finished, timeout)
            found = self._first(predicate)
            seen = list(self._events)
        assert found is not None, f"{self._path}: no such event (error {self._error!r}); got {seen}"
        return found

    def result(self, timeout: float = 120) -> list[SSE]:
        """Every event, once the server has closed the stream (or `stop` said enough)."""
        self.join(timeout)
        assert not self.is_alive(), f"{self._path} still open after {timeout} s: {self._events}"
        if self._error is not None:
            raise self._error
        return self._events


def is_snapshot(event: SSE) -> bool:
    return event.event == "snapshot"


def job_events_path(job_id: str) -> str:
    return f"/api/jobs/{job_id}/events"


def watch(server: Server, client: httpx.Client, **params: Any) -> tuple[dict[str, Any], list[SSE]]:
    """Submit a job while the worker is busy and follow it from its queued snapshot to its end."""
    with BusyWorker(client):
        job = submit(client, **{**WATCHED_JOB, **params})
        listener = Listener(server, job_events_path(job["id"]))
        listener.wait_for(is_snapshot)
    return job, listener.result()


def ids(events: list[SSE]) -> list[int]:
    assert all(e.id is not None and e.id.isdigit() for e in events), events
    return [int(str(e.id)) for e in events]


def script(events: list[SSE]) -> list[str]:
    """A job's events as short words: phase:encoding, step:3/8, done…"""
    words = []
    for event in events:
        data = event.json()
        if event.event == "phase":
            words.append(f"phase:{data['phase']}" + (f":{data['component']}" if "component" in data else ""))
        elif event.event == "step":
            words.append(f"step:{data['step']}/{data['total']}")
        elif event.event == "preview":
            words.append(f"preview:{data['step']}")
        else:
            words.append(event.event)
    return words


def in_step_order(words: list[str]) -> list[str]:
    """`script` words with each preview moved right after its own step. Previews are encoded on a thread
    of their own, so the next step may arrive first; each must still come after its step and before the
    job leaves denoising, which is checked here."""
    steps = {
        word.partition("/")[0].removeprefix("step:"): i for i, word in enumerate(words) if "step:" in word
    }
    later = [i for i, word in enumerate(words) if word.startswith("phase:") and "denoising" not in word]
    end = min([i for i in later if i > max(steps.values(), default=0)], default=len(words))
    ordered = [word for word in words if not word.startswith("preview:")]
    for i, word in enumerate(words):
        if word.startswith("preview:"):
            number = word.removeprefix("preview:")
            assert steps[number] < i < end, f"{word} out of place in {words}"
            ordered.insert(ordered.index(words[steps[number]]) + 1, word)
    return ordered


def expected_script(steps: int, *, loading: bool = False) -> list[str]:
    phases = [f"phase:{p}" for p in PHASES if p != "loading"]
    if loading:  # the load reports each part of the checkpoint as it starts
        phases[:0] = [
            "phase:loading",
            *(f"phase:loading:{part}" for part in ("text_encoder", "transformer", "vae")),
        ]
    before, after = phases[: phases.index("phase:denoising") + 1], phases[phases.index("phase:decoding") :]
    # A preview follows every step (the default preview_every=1).
    denoising = [word for n in range(1, steps + 1) for word in (f"step:{n}/{steps}", f"preview:{n}")]
    return [*before, *denoising, *after, "done"]


def image_files(server: Server, job_id: str) -> list[str]:
    return sorted(path.name for path in (server.data_dir / "images").glob(f"*{job_id}*"))


# -- a job's JSON stream -----------------------------------------------------------------------------


def test_job_stream_runs_snapshot_phases_steps_done_then_closes(server: Server) -> None:
    with server.client() as client:
        job, events = watch(server, client, width=512, height=384, steps=8)

        snapshot = events[0]
        assert snapshot.event == "snapshot"
        assert snapshot.json()["id"] == job["id"]
        assert snapshot.json()["status"] == "queued"
        # The model was loaded by the job ahead of it, so there is no loading phase.
        assert in_step_order(script([e for e in events[1:] if e.event != "queued"])) == expected_script(8)
        first_phase = next(i for i, e in enumerate(events) if e.event == "phase")
        assert all(e.event != "queued" for e in events[first_phase:])
        assert all(e.json()["job_id"] == job["id"] for e in events[1:])
        numbers = ids(events)
        assert all(a < b for a, b in pairwise(numbers)), numbers

        done = events[-1].json()
        assert done["status"] == "done"
        assert done["images"] == [f"/images/{job['id']}-0.png"]
        picture = client.get(done["images"][0])
        assert picture.status_code == 200
        assert picture.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(picture.content)) as image:
            assert image.format == "PNG"
            assert image.size == (512, 384)


def test_two_subscribers_receive_the_same_events(server: Server) -> None:
    with server.client() as client:
        with BusyWorker(client):
            job = submit(client, **WATCHED_JOB)
            listeners = [Listener(server, job_events_path(job["id"])) for _ in range(2)]
            for listener in listeners:
                assert listener.wait_for(is_snapshot).json()["status"] == "queued"
        first, second = (listener.result() for listener in listeners)

    def seen(events: list[SSE]) -> list[tuple[str | None, str, int | None]]:
        return [(e.id, e.event, e.json().get("step")) for e in events[1:]]

    assert seen(first) == seen(second)
    assert in_step_order(script([e for e in first[1:] if e.event != "queued"])) == expected_script(8)


def test_cancelling_a_queued_job_means_it_never_runs(server: Server) -> None:
    with server.client() as client:
        with BusyWorker(client):
            job = submit(client, prompt="cancel me while queued")
            listener = Listener(server, job_events_path(job["id"]))
            assert listener.wait_for(is_snapshot).json()["status"] == "queued"
            response = client.post(f"/api/jobs/{job['id']}/cancel")
            assert response.status_code == 202
            assert response.json()["status"] == "cancelled"
            events = listener.result()

        assert [e.event for e in events if e.event != "queued"] == ["snapshot", "cancelled"]
        # The worker is free again: run a job after it, and the cancelled one still has not run.
        follow(client, submit(client)["id"])
        state = client.get(f"/api/jobs/{job['id']}").json()
        assert state["status"] == "cancelled"
        assert state["started_at"] is None
        assert state["images"] == []
        assert image_files(server, job["id"]) == []
        again = client.post(f"/api/jobs/{job['id']}/cancel")
        assert again.status_code == 409
        assert again.json()["job"]["status"] == "cancelled"


def test_cancelling_a_running_job_stops_it_before_decoding(server: Server) -> None:
    with server.client() as client:
        job = submit(client, prompt="cancel me while running", **LONG_JOB)
        listener = Listener(server, job_events_path(job["id"]))
        listener.wait_for(lambda e: e.event == "step")
        response = client.post(f"/api/jobs/{job['id']}/cancel")
        assert response.status_code == 202
        events = listener.result()

        assert events[-1].event == "cancelled", script(events)
        steps = [e.json()["step"] for e in events if e.event == "step"]
        assert max(steps) < LONG_JOB["steps"]
        assert "phase:decoding" not in script(events)
        assert "done" not in script(events)
        state = client.get(f"/api/jobs/{job['id']}").json()
        assert state["status"] == "cancelled"
        assert state["images"] == []
        assert image_files(server, job["id"]) == []
        assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 409


def test_a_failing_job_does_not_stop_the_next(make_server: Callable[..., Server]) -> None:
    # The validator accepts multiples of 8, the Z-Image pipeline only multiples of 16.
    server = make_server(size_multiple="8")
    with server.client() as client:
        with BusyWorker(client):
            bad = submit(client, width=264, height=256)
            good = submit(client)
            listeners = [Listener(server, job_events_path(job["id"])) for job in (bad, good)]
            for listener in listeners:
                listener.wait_for(is_snapshot)
        bad_events, good_events = (listener.result() for listener in listeners)

        assert bad_events[-1].event == "failed", script(bad_events)
        error = bad_events[-1].json()["error"]
        assert "264" in error and "16" in error, error
        assert "Traceback" not in error
        state = client.get(f"/api/jobs/{bad['id']}").json()
        assert state["status"] == "failed"
        assert state["error"] == error
        assert image_files(server, bad["id"]) == []

        assert good_events[-1].event == "done", script(good_events)
        assert client.get(f"/api/jobs/{good['id']}").json()["status"] == "done"


def test_timings_are_stored_per_step_and_phase(server: Server) -> None:
    with server.client() as client:
        job, events = watch(server, client, steps=6, seed=424242)
        done = events[-1].json()
        assert done["status"] == "done"

        with closing(sqlite3.connect(server.data_dir / "zimage-sse.db")) as db:
            steps = db.execute(
                "SELECT step, seconds FROM step_timings WHERE job_id = ? ORDER BY step", (job["id"],)
            ).fetchall()
            phases = dict(
                db.execute(
                    "SELECT phase, seconds FROM phase_timings WHERE job_id = ?", (job["id"],)
                ).fetchall()
            )
        assert [step for step, _ in steps] == [1, 2, 3, 4, 5, 6]
        assert all(seconds > 0 for _, seconds in steps)
        assert [round(seconds, 4) for _, seconds in steps] == done["step_s"]
        assert set(phases) == {"encoding", "denoising", "decoding", "saving"}
        assert all(seconds > 0 for seconds in phases.values())

        state = client.get(f"/api/jobs/{job['id']}").json()
        assert state["status"] == "done"
        assert state["params"]["seed"] == 424242
        assert state["phases"] == {name: round(seconds, 4) for name, seconds in phases.items()}


def newest_preview_only(events: list[SSE]) -> list[SSE]:
    previews = [e for e in events if e.event == "preview"]
    return [e for e in events if e.event != "preview" or e is previews[-1]]


def test_last_event_id_resumes_without_gaps_or_duplicates(server: Server) -> None:
    with server.client() as client:
        job, live = watch(server, client, steps=6)
        terminal = live[-1]
        assert terminal.event == "done"

        def resume(last_event_id: str) -> list[SSE]:
            """What a reconnecting client gets; 204 (nothing more, stop reconnecting) reads as no events."""
            headers = {"Last-Event-ID": last_event_id}
            with client.stream("GET", job_events_path(job["id"]), headers=headers) as response:
                assert response.status_code in (200, 204), (last_event_id, response.status_code)
                return read_sse(response) if response.status_code == 200 else []

        # From the middle: exactly what came after it, ending with the terminal event; of the previews
        # it missed, only the newest (a backlog of stale previews is of no use).
        middle = next(e for e in live if e.event == "step" and e.json()["step"] == 3)
        after = newest_preview_only([e for e in live if int(str(e.id)) > int(str(middle.id))])
        assert [e.event for e in after].count("preview") == 1
        assert [(e.id, e.event, e.data) for e in resume(str(middle.id))] == [
            (e.id, e.event, e.data) for e in after
        ]

        # From the terminal event, or past it: nothing more, and above all not the terminal event again.
        assert resume(str(terminal.id)) == []
        beyond = resume("999999")
        assert all(e.event == "snapshot" and e.json()["status"] == "done" for e in beyond), beyond

        # From 0 (nothing seen): the whole history, with no gap and one terminal event at its end.
        everything = resume("0")
        snapshot_id = int(str(live[0].id))
        assert [e for e in everything if int(str(e.id)) > snapshot_id and e.event != "preview"] == [
            e for e in live[1:] if e.event != "preview"
        ]
        assert [e.json()["step"] for e in everything if e.event == "step"] == list(range(1, 7))
        assert [e.json()["step"] for e in everything if e.event == "preview"] == [6]
        assert [e.event for e in everything if e.event in TERMINAL] == ["done"]

        # An empty id (as good as none): a fresh snapshot of the finished job, whose id is the last one, so
        # reconnecting again from it cannot repeat the terminal event. A malformed id ("abc", "-1") is a
        # 400 (tests/test_fuzz.py).
        for garbage in ("",):
            fresh = resume(garbage)
            assert [e.event for e in fresh] == ["snapshot"], (garbage, fresh)
            assert fresh[0].id == terminal.id
            assert fresh[0].json()["status"] == "done"
            assert fresh[0].json()["images"] == terminal.json()["images"]


def test_global_stream_carries_queue_and_job_events(make_server: Callable[..., Server]) -> None:
    server = make_server()
    dones: list[SSE] = []

    def second_done(event: SSE) -> bool:
        if event.event == "done":
            dones.append(event)
        return len(dones) == 2

    listener = Listener(server, "/api/events", stop=second_done)
    snapshot = listener.wait_for(is_snapshot)
    assert snapshot.json() == {"running": [], "queued": [], "devices": 1}
    with server.client() as client:
        first = submit(client, **{**WATCHED_JOB, "steps": 4})
        listener.wait_for(lambda e: e.event == "done" and e.json()["job_id"] == first["id"])
        second = submit(client, **{**WATCHED_JOB, "steps": 4})
    events = listener.result()

    assert events[0] == snapshot
    numbers = ids(events)
    assert all(a < b for a, b in pairwise(numbers)), numbers

    def of(job: dict[str, Any]) -> list[SSE]:
        return [e for e in events if e.json().get("job_id") == job["id"]]

    first_events, second_events = of(first), of(second)
    assert first_events[0].event == "queued"
    assert first_events[0].json()["position"] == 1
    # The first job on a fresh server loads the model; the second finds it loaded.
    first_script = script([e for e in first_events if e.event != "queued"])
    assert in_step_order(first_script) == expected_script(4, loading=True)
    assert in_step_order(script([e for e in second_events if e.event != "queued"])) == expected_script(4)
    assert first_events[-1].json()["images"] == [f"/images/{first['id']}-0.png"]

    # Every event says when the server made it (unix seconds), no later than the client got it.
    assert all(0 < e.json()["at"] <= time.time() for e in events[1:])
    queue = [{k: v for k, v in e.json().items() if k != "at"} for e in events if e.event == "queue"]
    assert {"running": [], "devices": {}, "queued": [first["id"]]} in queue
    assert {"running": [first["id"]], "devices": {"cpu": first["id"]}, "queued": []} in queue
    assert {"running": [second["id"]], "devices": {"cpu": second["id"]}, "queued": []} in queue


def test_heartbeat_comments_keep_an_idle_stream_alive(make_server: Callable[..., Server]) -> None:
    server = make_server(heartbeat_s="0.2")
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/api/events") as response,
    ):
        assert response.status_code == 200
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith(":") or len(lines) > 50:
                break
    assert lines[-1].startswith(":"), lines
    assert "event: snapshot" in lines


# -- errors ------------------------------------------------------------------------------------------


def test_unknown_and_malformed_ids_are_404(server: Server) -> None:
    unknown = "0123456789abcdef"
    with server.client() as client:
        for path in (f"/api/jobs/{unknown}", f"/api/jobs/{unknown}/events"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/json"
            assert unknown in response.json()["error"]
        assert client.post(f"/api/jobs/{unknown}/cancel").status_code == 404
        for path in (
            "/api/jobs/..%2Fetc",
            "/api/jobs/..%2F..%2Fetc%2Fpasswd/events",
            "/api/jobs/ZZZZ",
            "/api/jobs/ZZZZ/events",
            "/images/../x",
            "/images/..%2Fzimage-sse.db",
            "/images/%2E%2E%2Fzimage-sse.db",
            f"/images/{unknown}-0.png",
            f"/images/{unknown}-x.png",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert b"SQLite format" not in response.content


def test_html_stream_of_an_unknown_job_is_404(server: Server) -> None:
    with server.client() as client:
        response = client.get("/jobs/0123456789abcdef/stream")
        assert response.status_code == 404
        assert "0123456789abcdef" in response.text


# -- HTML streams for htmx ---------------------------------------------------------------------------


def test_job_fragment_stream_renders_the_panel_then_end(server: Server) -> None:
    with server.client() as client:
        with BusyWorker(client):
            job = submit(client, prompt="a fragment stream", **WATCHED_JOB)
            listener = Listener(server, f"/jobs/{job['id']}/stream")
            listener.wait_for(lambda e: True)
        events = listener.result()

    assert events[-1].event == "end"
    panels = events[:-1]
    assert panels and all(e.event == "message" and "job-panel" in e.data for e in panels), events
    assert 'data-status="queued"' in panels[0].data
    running = [e.data for e in panels if 'data-status="running"' in e.data]
    shown = [int(n) for page in running for n in re.findall(r'class="step">(\d+)/8<', page)]
    assert any(0 < n < 8 for n in shown), shown
    assert shown == sorted(shown)
    assert 'data-status="done"' in panels[-1].data
    assert f'<img class="result" src="/images/{job["id"]}-0.png"' in panels[-1].data
    numbers = ids(panels)
    assert all(a < b for a, b in pairwise(numbers)), numbers


def test_a_page_reconnecting_after_the_end_gets_the_final_panel_and_end_at_once(server: Server) -> None:
    """A page whose connection dropped between the last panel and `end` reconnects with the last panel's
    id: nothing more will happen to the job, so the stream must not wait (tests/test_stress.py found it)."""
    with server.client() as client:
        job = submit(client, prompt="reconnecting after the end", steps=2)
        done = follow(client, job["id"])[-1]
        assert done.event == "done"
        with client.stream(
            "GET", f"/jobs/{job['id']}/stream", headers={"Last-Event-ID": str(done.id)}, timeout=30
        ) as response:
            assert response.status_code == 200
            events = read_sse(response)
    assert [e.event for e in events] == ["message", "end"], events
    assert 'data-status="done"' in events[0].data


def test_queue_stream_starts_with_the_queue(server: Server) -> None:
    with server.client() as client, BusyWorker(client) as busy:
        job = submit(client, prompt="waiting in the queue stream")
        with client.stream("GET", "/queue/stream") as response:
            assert response.status_code == 200
            first = read_sse(response, until=lambda e: True)
        assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202

    assert len(first) == 1 and first[0].event == "message"
    html = first[0].data
    assert 'class="queue"' in html
    assert f'href="/jobs/{busy.job["id"]}"' in html
    assert "blocker: keeps the worker busy" in html
    assert f'href="/jobs/{job["id"]}"' in html
    assert "waiting in the queue stream" in html
    assert "#1" in html


def test_a_job_from_before_a_restart_resumes_to_its_final_state(tmp_path: Path, models_dir: Path) -> None:
    """After a restart a job's events are no longer numbered: a client resuming with an old id gets
    the final snapshot (never a silent end), and resuming from that snapshot's id ends the stream."""
    first = start_server(tmp_path / "data", models_dir)
    try:
        with first.client() as client:
            job = submit(client, steps=4)
            events = follow(client, job["id"])
    finally:
        first.stop()
    assert events[-1].event == "done"
    before_end = next(e for e in events if e.event == "phase" and e.json()["phase"] == "saving")

    second = start_server(tmp_path / "data", models_dir)
    try:
        with second.client() as client:
            resumed = follow(client, job["id"], headers={"Last-Event-ID": str(before_end.id)})
            assert [e.event for e in resumed] == ["snapshot"]
            assert resumed[0].json()["status"] == "done" and resumed[0].json()["images"]
            again = client.get(job_events_path(job["id"]), headers={"Last-Event-ID": str(resumed[0].id)})
            assert again.status_code == 204
    finally:
        second.stop()
