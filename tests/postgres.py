"""A real PostgreSQL server for the tests: one per test run, a fresh database per test.

Debian's `postgresql` package (scripts/setup.sh test installs it as root). initdb refuses to run as
root, so as root the cluster belongs to the `postgres` user and runs as it (runuser). The cluster lives
in a throwaway directory, listens on a free loopback port with trust authentication, and runs without
fsync: its data is worth nothing after the run.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PACKAGE = "postgresql"
# Debian installs each major version's programs here (/usr/lib/postgresql/15/bin on Debian 12).
BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
# UTF-8 whatever the environment says (without it initdb may pick SQL_ASCII); C.UTF-8 is the locale a
# bare Debian has. The schema sorts the reports' text by byte (COLLATE "C") whatever the locale.
LOCALE = ("--encoding=UTF8", "--locale=C.UTF-8")
FAST = "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"


@dataclass
class PostgresServer:
    port: int
    directory: Path
    _numbers: Iterator[int]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; returns its URL. It sorts text by an ICU English locale (case
        folded, "a" before "B"), as many real databases do, so a query that sorted differently from
        SQLite's byte order would show."""
        name = f"test_{next(self._numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and the server refuse root; any other user runs them as itself.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if not BIN_DIRS or not (BIN_DIRS[0] / "initdb").exists():
        pytest.fail(
            f"PostgreSQL is not installed: the tests start a real server. Install Debian's `{PACKAGE}`"
            f" package (scripts/setup.sh test does it as root; else: sudo apt-get install {PACKAGE})"
        )
    bin_dir = BIN_DIRS[0]
    # Not under pytest's tmp_path: its parents are private to the user running the tests.
    directory = Path(tempfile.mkdtemp(prefix="zimage-sse-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    subprocess.run(
        _as_postgres(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", *LOCALE]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} {FAST}"
    server = PostgresServer(port, directory, itertools.count(1))
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log")]
    started = subprocess.run(
        _as_postgres([*ctl, "-w", "-t", "60", "-o", options, "start"]), capture_output=True, text=True
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"PostgreSQL did not start: {started.stdout}{started.stderr}\n{server.log()}")
        yield server
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the test run's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
