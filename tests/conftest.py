"""Shared fixtures: the tiny model built once, and real uvicorn servers on free ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from zimage_sse import pipeline
from zimage_sse.client import SseParser
from zimage_sse.events import TERMINAL

# A real PostgreSQL server and a real Redis server per test run (tests/postgres.py,
# tests/redis_server.py), for the tests that ask for them.
from .postgres import postgres_server, postgres_url  # noqa: F401
from .redis_server import redis_server, redis_url  # noqa: F401

if TYPE_CHECKING:  # imported where used, so the GPU tests run where Playwright is not installed
    from playwright.sync_api import Browser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model, built once per test session through the real build path."""
    directory = tmp_path_factory.mktemp("models")
    pipeline.ensure_embedded("tiny", directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A real `zimage-sse serve` process."""

    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path,
    models_dir: Path,
    model: str = "tiny",
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    device: str = "cpu",
) -> Server:
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    environment = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zimage_sse",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            model,
            "--data-dir",
            str(data_dir),
            "--models-dir",
            str(models_dir),
            "--device",
            device,
        ],
        cwd=ROOT,
        env=environment,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,  # e.g. a resource limit for the server alone (tests/test_reliability.py)
    )
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log)
    try:
        wait_until_serving(server.url, process, server.logs)
    except RuntimeError:
        server.stop()
        raise
    return server


def wait_until_serving(
    url: str, process: subprocess.Popen[bytes], logs: Callable[[], str], timeout_s: float = 90
) -> None:
    """Return once `url`'s /health answers 200; RuntimeError with the logs if `process` exits first
    or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{logs()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling for the port to open; not a stand-in for synchronisation
    raise RuntimeError(f"server did not start within {timeout_s:.0f} s:\n{logs()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    """One tiny-model server shared by tests that only add jobs of their own."""
    srv = start_server(tmp_path_factory.mktemp("server"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path: Path, models_dir: Path) -> Iterator[Callable[..., Server]]:
    """Servers of a test's own, for settings or states other tests must not see."""
    started: list[Server] = []

    def make(**env: str) -> Server:
        srv = start_server(
            tmp_path / f"server{len(started)}",
            models_dir,
            env={f"ZIMAGE_SSE_{k.upper()}": v for k, v in env.items()},
        )
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@dataclass(frozen=True)
class SSE:
    id: str | None
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def read_sse(
    response: httpx.Response | Iterator[str], until: Callable[[SSE], bool] | None = None
) -> list[SSE]:
    """Parse an SSE response (the client's WHATWG parser) until it ends or `until` says stop.

    Pass `response.iter_lines()` instead of the response to go on reading the same open stream later.
    """
    lines = response.iter_lines() if isinstance(response, httpx.Response) else response
    parser = SseParser()
    events: list[SSE] = []
    for line in lines:
        message = parser.feed(line)
        if message is not None:
            item = SSE(message.id, message.event, message.data)
            events.append(item)
            if until is not None and until(item):
                return events
    return events


def submit(client: httpx.Client, **params: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse in a storm", "width": 256, "height": 256, **params}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def follow(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> list[SSE]:
    """Every event of a job's stream, from its first to its terminal one (the server closes it)."""
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_sse(response)


# A job that keeps the tiny model busy for about 10 s on 2 CPU cores: long enough to queue others behind
# it, or to cancel it mid-run.
LONG_JOB: dict[str, Any] = {"width": 1024, "height": 1024, "steps": 100}


class BusyWorker:
    """Keeps the worker on a long job (LONG_JOB), so jobs submitted meanwhile wait in the queue;
    release() cancels it."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client
        self.job = submit(client, prompt="blocker: keeps the worker busy", **LONG_JOB)
        self._released = False
        with client.stream("GET", f"/api/jobs/{self.job['id']}/events") as response:
            seen = read_sse(response, until=lambda e: e.event == "step" or e.event in TERMINAL)
        assert seen and seen[-1].event == "step", f"the blocking job did not start: {seen}"

    def release(self) -> None:
        if not self._released:
            self._released = True
            response = self._client.post(f"/api/jobs/{self.job['id']}/cancel")
            assert response.status_code == 202, f"the blocking job ended on its own: {response.text}"

    def __enter__(self) -> BusyWorker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.release()
        elif not self._released:
            self._client.post(f"/api/jobs/{self.job['id']}/cancel")


CHROMIUM = "/usr/bin/chromium"
# The closed network here refuses Chromium's background connections; these flags keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright (playwright install cannot download browsers here)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh test installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
