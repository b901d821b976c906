"""The terminal client (`zimage-sse generate` / `watch`) against real tiny-model servers.

The CLI runs as a subprocess, exactly as a user starts it; the reconnect logic runs in-process on a
real server's streams, cut short by a transport that drops connections mid-message.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from zimage_sse.cli import build_parser
from zimage_sse.client import (
    ExitCode,
    JobEvent,
    JobFeed,
    SseParser,
    StreamLost,
    Terminal,
    connect,
    generate,
)

from .conftest import Server, follow, free_port, submit

# 512² steps take tens of milliseconds on the tiny model: slow enough that the server sends every step
# (it coalesces steps only for a reader that falls behind), fast enough to keep the suite quick.
WATCHED: dict[str, Any] = {"width": 512, "height": 384, "steps": 6}
# 1024² steps took about 0.1 s each on 2 CPU cores (tests/test_streams.py), so 100 of them leave plenty
# of time to act after the first step is seen; a cancel takes effect at the next step.
LONG = ["--width", "1024", "--height", "1024", "--steps", "100"]
WATCHED_ARGS = ["--width", "512", "--height", "384", "--steps", "6"]
SMALL = ["--width", "256", "--height", "256", "--steps", "2"]
HEAVY_MODULES = ("torch", "diffusers", "transformers", "starlette", "uvicorn")


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ZIMAGE_SSE_SERVER", "ZIMAGE_SSE_TOKEN")}
    return {**env, **extra}


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zimage_sse", *args],
        cwd=cwd,
        env=env or client_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _default_sigint() -> None:
    # A child inherits an ignored SIGINT (background jobs of a non-interactive shell), and Python
    # then never raises KeyboardInterrupt; Ctrl-C at a terminal always arrives.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Running:
    """The CLI as a subprocess whose stderr the test reads line by line while it runs."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zimage_sse", *args],
            cwd=cwd,
            env=client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []

    def wait_for(self, predicate: Callable[[str], bool]) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if predicate(line):
                return line
        raise AssertionError(f"the client ended before that line: {self.lines}")

    def finish(self) -> tuple[int, str, str]:
        """Exit status, stdout and the whole of stderr once the client has exited."""
        assert self.process.stderr is not None and self.process.stdout is not None
        # Read through the same file objects: lines already buffered there would be lost otherwise.
        self.lines += self.process.stderr.read().splitlines()
        out = self.process.stdout.read()
        return self.process.wait(timeout=60), out, "\n".join(self.lines)


def job_id_in(stderr: str) -> str:
    found = re.search(r"^job ([0-9a-f]{16}) ", stderr, re.MULTILINE)
    assert found, stderr
    return found.group(1)


def printed_steps(stderr: str, total: int) -> list[int]:
    return [int(n) for n in re.findall(rf"^step (\d+)/{total} · ", stderr, re.MULTILINE)]


def pngs(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.png"))


# -- generate ------------------------------------------------------------------------------------


def test_generate_shows_each_step_once_and_saves_the_png_at_the_requested_size(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "lighthouse.png"
    result = cli(
        "generate",
        "a lighthouse in a storm",
        "--server",
        server.url,
        "--width",
        "512",
        "--height",
        "384",
        "--steps",
        "6",
        "--seed",
        "42",
        "--guidance",
        "0",
        "--negative-prompt",
        "fog",
        "--out",
        str(out),
        cwd=tmp_path,
    )

    assert result.returncode == ExitCode.DONE, result.stderr
    assert printed_steps(result.stderr, 6) == [1, 2, 3, 4, 5, 6]
    assert re.search(r"^step 6/6 · denoising · \d+% · elapsed [\d.]+s · ETA ", result.stderr, re.MULTILINE)
    for phase in ("encoding", "decoding", "saving"):
        assert re.search(rf"^{phase} · ", result.stderr, re.MULTILINE), result.stderr
    job_id = job_id_in(result.stderr)
    assert f"job {job_id} done in " in result.stderr
    assert result.stdout.splitlines() == [str(out)]
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (512, 384)
    with server.client() as api:
        job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "done"
    assert job["params"]["seed"] == 42
    assert job["params"]["steps"] == 6
    assert job["params"]["negative_prompt"] == "fog"
    assert out.read_bytes() == (server.data_dir / "images" / f"{job_id}-0.png").read_bytes()


def test_generate_names_several_images_file_1_file_2(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "pair.png"
    result = cli(
        "generate",
        "two boats",
        "--server",
        server.url,
        "--width",
        "256",
        "--height",
        "256",
        "--steps",
        "2",
        "--num-images",
        "2",
        "--out",
        str(out),
        cwd=tmp_path,
    )

    assert result.returncode == ExitCode.DONE, result.stderr
    job_id = job_id_in(result.stderr)
    saved = [tmp_path / "pair-1.png", tmp_path / "pair-2.png"]
    assert result.stdout.splitlines() == [str(path) for path in saved]
    for n, path in enumerate(saved):
        assert path.read_bytes() == (server.data_dir / "images" / f"{job_id}-{n}.png").read_bytes()
    assert pngs(tmp_path) == ["pair-1.png", "pair-2.png"]


def test_generate_saves_under_the_servers_name_here_without_importing_torch(
    server: Server, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "zimage_sse",
            "generate",
            "harbour",
            "--server",
            server.url,
            *SMALL,
        ],
        cwd=tmp_path,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == ExitCode.DONE, result.stderr
    job_id = job_id_in(result.stderr)
    assert result.stdout.splitlines() == [f"{job_id}-0.png"]
    assert pngs(tmp_path) == [f"{job_id}-0.png"]
    imported = re.findall(r"^import time:.*\|\s*([\w.]+)$", result.stderr, re.MULTILINE)
    assert "httpx" in imported and "tqdm" in imported  # -X importtime did report the imports
    heavy = [name for name in imported if name.split(".")[0] in HEAVY_MODULES]
    assert heavy == [], heavy


def test_a_failed_job_exits_1_with_the_servers_error(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    # The server accepts multiples of 8, the pipeline wants multiples of 16: the job fails when it runs.
    srv = make_server(size_multiple="8")
    result = cli(
        "generate",
        "x",
        "--server",
        srv.url,
        "--width",
        "264",
        "--height",
        "256",
        "--steps",
        "2",
        cwd=tmp_path,
    )

    assert result.returncode == ExitCode.FAILED, result.stderr
    job_id = job_id_in(result.stderr)
    with srv.client() as api:
        job = api.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]
    assert f"job {job_id} failed" in result.stderr
    assert job["error"] in result.stderr
    assert result.stdout == ""
    assert pngs(tmp_path) == []

    # Watching it afterwards tells the same story.
    watched = cli("watch", job_id, "--server", srv.url, "--out", str(tmp_path / "x.png"), cwd=tmp_path)
    assert watched.returncode == ExitCode.FAILED, watched.stderr
    assert job["error"] in watched.stderr
    assert pngs(tmp_path) == []


def test_invalid_parameters_exit_3_naming_each_field_and_reason(server: Server, tmp_path: Path) -> None:
    with server.client() as api:
        expected = api.post("/api/jobs", json={"prompt": "x", "width": 100, "steps": 0}).json()["errors"]
    assert {"width", "steps"} <= set(expected)

    result = cli("generate", "x", "--server", server.url, "--width", "100", "--steps", "0", cwd=tmp_path)

    assert result.returncode == ExitCode.INVALID, result.stderr
    for name, reason in expected.items():
        assert f"  {name}: {reason}" in result.stderr.splitlines()
    assert result.stdout == ""


def test_a_job_cancelled_by_someone_else_exits_4(server: Server, tmp_path: Path) -> None:
    running = Running("generate", "a long one", "--server", server.url, *LONG, cwd=tmp_path)
    job_id = job_id_in(running.wait_for(lambda line: line.startswith("job ")))
    running.wait_for(lambda line: line.startswith("step "))
    with server.client() as api:
        assert api.post(f"/api/jobs/{job_id}/cancel").status_code == 202

    code, out, err = running.finish()

    assert code == ExitCode.CANCELLED, err
    assert f"job {job_id} cancelled" in err
    assert out == ""
    assert pngs(tmp_path) == []


def test_ctrl_c_cancels_the_job_on_the_server(server: Server, tmp_path: Path) -> None:
    running = Running("generate", "a long one", "--server", server.url, *LONG, cwd=tmp_path)
    job_id = job_id_in(running.wait_for(lambda line: line.startswith("job ")))
    running.wait_for(lambda line: line.startswith("step "))
    running.process.send_signal(signal.SIGINT)

    code, out, err = running.finish()

    assert code == ExitCode.INTERRUPTED, err
    assert f"asking the server to cancel job {job_id}" in err
    # It waited for the stream to confirm: the terminal event arrived before it exited.
    assert f"job {job_id} cancelled" in err
    with server.client() as api:
        assert api.get(f"/api/jobs/{job_id}").json()["status"] == "cancelled"
    assert out == ""
    assert "Traceback" not in err


def test_an_unreachable_server_exits_5(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["generate", "x"], ["watch", "0123456789abcdef"]):
        result = cli(*command, "--server", url, cwd=tmp_path)
        assert result.returncode == ExitCode.UNREACHABLE, result.stderr
        assert f"cannot reach the server at {url}" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_progress_bar_on_a_terminal(server: Server, tmp_path: Path) -> None:
    """On a terminal the client draws a tqdm bar with step i/N, the phase, elapsed and ETA."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 140, 0, 0))
    out = tmp_path / "bar.png"
    command = ["generate", "a lighthouse", "--server", server.url, *WATCHED_ARGS, "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-m", "zimage_sse", *command],
        cwd=tmp_path,
        env=client_env(),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the client has exited and closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)

    assert process.wait(timeout=60) == ExitCode.DONE
    frames = screen.decode().replace("\r\n", "\n").replace("\r", "\n").splitlines()
    bars = [frame for frame in frames if re.search(r"^\w+: +\d+%\|", frame)]
    assert any(re.search(r"^denoising: +\d+%\|.*\| step [1-6]/6 · elapsed [\d.]+s · ETA ", f) for f in bars)
    assert re.search(r"^done: 100%\|█+\| step 6/6 · elapsed [\d.]+s · ETA 0.0s$", bars[-1]), bars[-1]
    assert frames[-1] == str(out)
    with Image.open(out) as image:
        assert image.size == (512, 384)


# -- watch ---------------------------------------------------------------------------------------


def test_watch_a_finished_job_saves_it_with_out_and_prints_its_url_without(
    server: Server, tmp_path: Path
) -> None:
    with server.client() as api:
        job = submit(api, width=256, height=256, steps=2)
        assert follow(api, job["id"])[-1].event == "done"
    out = tmp_path / "watched.png"

    saved = cli("watch", job["id"], "--server", server.url, "--out", str(out), cwd=tmp_path)

    assert saved.returncode == ExitCode.DONE, saved.stderr
    assert saved.stdout.splitlines() == [str(out)]
    assert out.read_bytes() == (server.data_dir / "images" / f"{job['id']}-0.png").read_bytes()

    # The server from the environment, no --out: the image's URL, nothing written.
    here = tmp_path / "elsewhere"
    here.mkdir()
    shown = cli("watch", job["id"], cwd=here, env=client_env(ZIMAGE_SSE_SERVER=server.url))
    assert shown.returncode == ExitCode.DONE, shown.stderr
    assert shown.stdout.splitlines() == [f"{server.url}/images/{job['id']}-0.png"]
    assert list(here.iterdir()) == []


def test_watch_an_unknown_job_exits_6(server: Server, tmp_path: Path) -> None:
    result = cli("watch", "0123456789abcdef", "--server", server.url, cwd=tmp_path)
    assert result.returncode == ExitCode.SERVER_ERROR
    assert "no job with id 0123456789abcdef" in result.stderr


# -- server and token ----------------------------------------------------------------------------


class Recording(httpx.BaseTransport):
    """Real HTTP, with every request kept for the test to look at."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_the_bearer_token_goes_on_every_request(server: Server, tmp_path: Path) -> None:
    transport = Recording()
    messages = io.StringIO()
    term = Terminal(io.StringIO(), messages, bar=False)
    with connect(server.url, "s3cret", transport=transport) as http:
        code = generate(
            http, {"prompt": "x", "width": 256, "height": 256, "steps": 2}, out=tmp_path / "t.png", term=term
        )

    assert code == ExitCode.DONE, messages.getvalue()
    paths = [(request.method, request.url.path) for request in transport.requests]
    job_id = paths[1][1].split("/")[3]
    assert paths == [
        ("POST", "/api/jobs"),
        ("GET", f"/api/jobs/{job_id}/events"),
        ("GET", f"/images/{job_id}-0.png"),
    ]
    assert [r.headers.get("authorization") for r in transport.requests] == ["Bearer s3cret"] * 3


def test_server_and_token_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZIMAGE_SSE_SERVER", raising=False)
    monkeypatch.delenv("ZIMAGE_SSE_TOKEN", raising=False)
    args = build_parser().parse_args(["generate", "x"])
    assert (args.server, args.token) == ("http://127.0.0.1:8000", None)

    monkeypatch.setenv("ZIMAGE_SSE_SERVER", "http://gpu-box:9000")
    monkeypatch.setenv("ZIMAGE_SSE_TOKEN", "from-env")
    args = build_parser().parse_args(["watch", "abc"])
    assert (args.server, args.token) == ("http://gpu-box:9000", "from-env")
    args = build_parser().parse_args(["generate", "x", "--server", "http://other:1", "--token", "given"])
    assert (args.server, args.token) == ("http://other:1", "given")


# -- the feed: SSE parsing and reconnecting ---------------------------------------------------------


def test_sse_messages_are_dispatched_only_at_a_blank_line() -> None:
    parser = SseParser()
    lines = [": ping", "id: 7", "event: step", 'data: {"a":', "data: 1}", "", "data: cut off"]
    messages = [m for m in map(parser.feed, lines) if m is not None]
    assert [(m.id, m.event, m.data) for m in messages] == [("7", "step", '{"a":\n1}')]
    # The id persists; a message without an event name is a "message"; data without a space after the colon.
    parser = SseParser()
    messages = [m for m in map(parser.feed, ["id: 3", "", "data:x", ""]) if m is not None]
    assert [(m.id, m.event, m.data) for m in messages] == [("3", "message", "x")]


class CutStream(httpx.SyncByteStream):
    """Passes `keep` whole SSE messages, then half of the next, then drops: with an error like a reset
    connection, or a clean end as a proxy that gives up would."""

    def __init__(self, inner: httpx.SyncByteStream, keep: int, fail: bool) -> None:
        self.inner, self.keep, self.fail = inner, keep, fail

    def __iter__(self) -> Iterator[bytes]:
        buffer = b""
        for chunk in self.inner:
            buffer += chunk
            ends = [m.end() for m in re.finditer(rb"\r\n\r\n|\n\n|\r\r", buffer)]
            if len(ends) > self.keep:
                start = ends[self.keep - 1] if self.keep else 0
                yield buffer[: start + (ends[self.keep] - start) // 2]
                if self.fail:
                    raise httpx.RemoteProtocolError("the test cut the connection")
                return
        yield buffer  # the server closed the stream itself, after the terminal event

    def close(self) -> None:
        self.inner.close()


class Cutting(httpx.BaseTransport):
    """Real HTTP to the real server, but every event stream drops in the middle of a message.

    `rewind` makes each reconnect ask for events from that many ids earlier, so the server replays
    events the client already has.
    """

    def __init__(self, keep: int, rewind: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.keep, self.rewind = keep, rewind
        self.asked: list[str | None] = []  # Last-Event-ID of each stream request, as the client sent it
        self.replayed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/events"):
            return self.inner.handle_request(request)
        last = request.headers.get("last-event-id")
        self.asked.append(last)
        if last is not None and self.rewind:
            earlier = max(0, int(last) - self.rewind)
            self.replayed += int(last) - earlier
            request.headers["Last-Event-ID"] = str(earlier)
        response = self.inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=CutStream(response.stream, self.keep, fail=len(self.asked) % 2 == 1),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


def check_whole(server: Server, events: list[JobEvent], steps: int) -> None:
    """A snapshot, then each later event once and in order up to `done`, none missing.

    "None missing" is checked against the job's whole history as the server replays it from id 0 once
    the job has ended. Only `preview` events may be absent: the server keeps just the newest preview
    for a reader that is behind, by design.
    """
    assert events[0].kind == "snapshot"
    assert events[-1].kind == "done" and events[-1].terminal
    ids = [event.id for event in events if event.id is not None]
    assert len(ids) == len(events)
    assert ids == sorted(set(ids)), ids  # rising: nothing twice
    with server.client() as api:
        history = follow(api, events[0].data["id"], headers={"Last-Event-ID": "0"})
    expected = [
        (int(str(e.id)), e.event) for e in history if int(str(e.id)) > ids[0] and e.event != "preview"
    ]
    assert [(e.id, e.kind) for e in events[1:] if e.kind != "preview"] == expected
    assert [e.data["step"] for e in events if e.kind == "step"] == list(range(1, steps + 1))
    assert all(e.data["job_id"] == events[0].data["id"] for e in events[1:])


def test_the_feed_resumes_after_drops_without_repeating_or_missing_an_event(server: Server) -> None:
    transport = Cutting(keep=1)
    with server.client() as api:
        job = submit(api, **WATCHED)
    with connect(server.url, transport=transport) as http:
        feed = JobFeed(http, job["id"], backoff_s=0)
        events = list(feed)

    check_whole(server, events, WATCHED["steps"])
    assert feed.ended is events[-1]
    # One event per connection, each reconnect asking for what follows the last one received.
    assert len(transport.asked) == len(events) >= 10
    assert transport.asked == [None, *(str(event.id) for event in events[:-1])]


def test_the_feed_drops_events_the_server_replays_twice(server: Server) -> None:
    transport = Cutting(keep=4, rewind=3)
    with server.client() as api:
        job = submit(api, **WATCHED)
    with connect(server.url, transport=transport) as http:
        events = list(JobFeed(http, job["id"], backoff_s=0))

    check_whole(server, events, WATCHED["steps"])
    assert transport.replayed >= 10  # the server did send events again, and none came through twice


def test_the_feed_reads_the_end_when_the_server_says_it_was_seen(server: Server) -> None:
    with server.client() as api:
        job = submit(api, width=256, height=256, steps=2)
        last = follow(api, job["id"])[-1]
    assert last.event == "done" and last.id is not None

    # The server answers 204 to a resume from the terminal event's id; the feed asks for the job.
    with connect(server.url) as http:
        events = list(JobFeed(http, job["id"], last_id=int(last.id)))

    assert [(e.kind, e.data["status"], e.terminal) for e in events] == [("snapshot", "done", True)]
    assert events[0].data["images"] == [f"/images/{job['id']}-0.png"]


def test_the_feed_gives_up_after_its_retries_with_doubling_waits() -> None:
    waits: list[float] = []
    with connect(f"http://127.0.0.1:{free_port()}") as http:
        feed = JobFeed(http, "0123456789abcdef", retries=3, backoff_s=0.25, sleep=waits.append)
        with pytest.raises(StreamLost, match="3 reconnects failed"):
            list(feed)
    assert waits == [0.25, 0.5, 1.0]
    assert feed.connections == 4
