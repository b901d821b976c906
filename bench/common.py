"""What the service benchmarks share: a real `zimage-sse serve` process, SSE reading over raw sockets,
the server's memory, tables, and refreshing a benchmark's section of bench/RESULTS.md.

The service benchmarks measure the service as users run it: a separate server process on a free port,
reached over HTTP, so the client side never shares the server's event loop or its GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from zimage_sse import progress
from zimage_sse.client import SseParser

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
MB = 1024 * 1024


def add_common_args(parser: argparse.ArgumentParser, *, model: str) -> None:
    """The options every service benchmark takes."""
    parser.add_argument("--quick", action="store_true", help="small numbers: a check that runs in seconds")
    parser.add_argument(
        "--model", default=model, help=f"tiny, demo, a checkpoint or a hub id (default {model})"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (passed to serve)")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="where embedded models are built (default: a temp dir)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="refresh this benchmark's section of FILE (default bench/RESULTS.md; not with --quick)",
    )


def results_path(args: argparse.Namespace) -> Path | None:
    """Quick runs are checks, not measurements: they write RESULTS.md only when asked to."""
    if args.results is not None:
        return Path(args.results)
    return None if args.quick else RESULTS


# -- the server process --------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A real `zimage-sse serve` process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").partition(":")
        return host, int(port)

    def rss_bytes(self) -> int:
        return rss_bytes(self.process.pid)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    data_dir: Path,
    models_dir: Path,
    *,
    model: str,
    device: str,
    env: dict[str, str] | None = None,
    root: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start `zimage-sse serve` on a free port (settings in `env` as ZIMAGE_SSE_* names), stop it after.
    `root`: another checkout to serve from (its own code, this environment's packages)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    command = [sys.executable, "-m", "zimage_sse", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model", model, "--device", device, "--data-dir", str(data_dir)]
    command += ["--models-dir", str(models_dir), "--log-level", "warning"]
    # No submission rate limit: the benchmarks submit faster than a person would, on purpose.
    settings = {"submit_rate": "0", **(env or {})}
    environment = {**os.environ, **{f"ZIMAGE_SSE_{k.upper()}": v for k, v in settings.items()}}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=root or ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.logs()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{server.logs()}")
            time.sleep(0.1)  # waiting for the port to open
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def serve_for(
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
    *,
    device: str | None = None,
    root: Path | None = None,
) -> Iterator[ServerProcess]:
    """A server for a benchmark's `--model` and `--device` (or `device`), with its data in a temporary
    directory; `root`: another checkout to serve from."""
    with tempfile.TemporaryDirectory(prefix="zimage-bench-") as scratch:
        models_dir = args.models_dir or Path(scratch) / "models"
        with serve(
            Path(scratch) / "data",
            models_dir,
            model=args.model,
            device=device or args.device,
            env=env,
            root=root,
        ) as server:
            yield server


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc), as `ps` shows it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_open_files(needed: int) -> int:
    """Raise this process's open-file limit (inherited by the server and client processes) to `needed`
    or the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def submit(client: httpx.Client, params: dict[str, Any]) -> str:
    response = client.post("/api/jobs", json=params)
    if response.status_code != 201:
        raise RuntimeError(f"submit failed: {response.status_code} {response.text}")
    job_id: str = response.json()["id"]
    return job_id


def wait_until(condition: Any, what: str, timeout_s: float = 600, every_s: float = 0.05) -> None:
    """Poll `condition()` until it is true (the server's state is only observable by asking)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every_s)


def subscribers(client: httpx.Client) -> int:
    """Open event streams, from the server's own /metrics gauge."""
    match = re.search(r"^zimage_sse_subscribers (\S+)$", client.get("/metrics").text, re.MULTILINE)
    if match is None:
        raise RuntimeError("/metrics has no zimage_sse_subscribers gauge")
    return int(float(match.group(1)))


# -- SSE over raw sockets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    event: str
    id: str | None
    data: str
    received: float  # time.time() when its last line arrived

    def json(self) -> Any:
        return json.loads(self.data)


async def open_stream(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """GET `path` as an event stream and read past the response headers (200 expected)."""
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status:
        writer.close()
        raise RuntimeError(f"GET {path}: {status.decode(errors='replace')}")
    if b"chunked" not in head.lower():
        writer.close()
        raise RuntimeError(f"GET {path}: expected a chunked event stream")
    return reader, writer


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[Message]:
    """SSE messages from a chunked HTTP/1.1 body (uvicorn sends each message as one or more chunks)."""
    buffer = b""
    parser = SseParser()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            return
        buffer += (await reader.readexactly(size + 2))[:-2]
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            message = parser.feed(raw.decode().removesuffix("\r"))
            if message is not None:
                yield Message(message.event, message.id, message.data, time.time())


# -- reporting ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 1,000 samples is the 990th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    """zimage_sse.progress.median as a table cell wants it: NaN (printed `nan`) when there is nothing."""
    found = progress.median(values)
    return float("nan") if found is None else found


def machine(device: str) -> str:
    """One line saying what ran the numbers, so results from different machines are not compared."""
    import torch

    line = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, Python "
    line += platform.python_version()
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f", {torch.cuda.get_device_name(torch.device(device))}"
    return f"{line}; load average {os.getloadavg()[0]:.1f} at the start"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table with right-aligned numbers, for the terminal and a fenced block in Markdown."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return lines


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([".venv/bin/python", "-m", module, *args])


def refresh_section(path: Path, heading: str, body: Sequence[str]) -> None:
    """Replace the `## heading` section of a Markdown file (up to the next `## `), or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = "\n".join([f"## {heading}", "", *body]).rstrip() + "\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


@dataclass(frozen=True)
class Run:
    """What a benchmark's report says about the run itself; made when the benchmark starts."""

    heading: str  # its section in RESULTS.md
    command: str
    machine: str
    started: str

    @classmethod
    def begin(cls, heading: str, module: str, argv: Sequence[str] | None, device: str) -> Run:
        return cls(heading, command_line(module, argv), machine(device), time.strftime("%Y-%m-%d %H:%M"))


def report(run: Run, args: argparse.Namespace, lines: Sequence[str], notes: Sequence[str] = ()) -> None:
    """Print the result lines, and refresh the benchmark's section of RESULTS.md (not in quick mode)."""
    print("\n".join(lines))
    path = results_path(args)
    if path is None:
        return
    body = [
        f"- Run: {run.started}, `{run.command}`",
        f"- Machine: {run.machine}",
        *notes,
        "",
        "```",
        *lines,
        "```",
    ]
    refresh_section(path, run.heading, body)
    print(f"(written to {path})")
