"""A real Redis server for the tests: one per test run, emptied (FLUSHDB) before each test.

Debian's `redis-server` package (scripts/setup.sh test installs it as root). The server listens on a
free loopback port, keeps nothing on disk (`--save '' --appendonly no`, so a restart loses every key,
as a Redis without persistence does) and works in a throwaway directory. `RedisServer.restart` kills it
and starts it again on the same port, for the tests of what survives a Redis restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
import redis

PACKAGE = "redis-server"
BINARY = Path("/usr/bin/redis-server")
READY = "Ready to accept connections"


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[str] | None = None
    _drain: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        # No snapshots, no append-only file: nothing on disk; the log goes to stdout (read below).
        options = {"--port": str(self.port), "--bind": "127.0.0.1", "--save": "", "--appendonly": "no"}
        options |= {"--dir": str(self.directory), "--daemonize": "no", "--logfile": ""}
        command = [str(BINARY), *(part for option in options.items() for part in option)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.directory
        )
        assert self.process.stdout is not None
        # The server says when it listens; read its log up to that line (it ends if the server exits).
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if READY in line:
                break
        with (self.directory / "server.log").open("a") as log:
            log.writelines(lines)
        if self.process.poll() is not None or not lines or READY not in lines[-1]:
            self.stop()
            pytest.fail(f"redis-server did not start on port {self.port}:\n{''.join(lines)}")
        # Keep draining its output into the log, so a full pipe never blocks the server.
        self._drain = threading.Thread(target=_copy, args=(self.process.stdout, self.directory), daemon=True)
        self._drain.start()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._drain is not None:
            self._drain.join(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients) and start it again on the same port,
        empty: it keeps nothing on disk."""
        self.stop(signal.SIGKILL)
        self.start()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _copy(stream: IO[str], directory: Path) -> None:
    with (directory / "server.log").open("a") as log:
        for line in stream:
            log.write(line)
            log.flush()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not BINARY.exists():
        pytest.fail(
            f"Redis is not installed: the tests start a real server. Install Debian's `{PACKAGE}`"
            f" package (scripts/setup.sh test does it as root; else: sudo apt-get install {PACKAGE})"
        )
    directory = Path(tempfile.mkdtemp(prefix="zimage-sse-redis-"))
    server = RedisServer(free_port(), directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of an empty database on the test run's server (emptied again after the test)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test that stopped it and failed before starting it again
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    yield redis_server.url
    if redis_server.process is not None:
        with redis.Redis.from_url(redis_server.url) as client:
            client.flushdb()
