"""On a CPU device the model's threads run nicer than the event loop that serves pages and streams
(Settings.cpu_worker_nice, zimage_sse/worker.py `thread_started`), checked on a real server's threads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ROOT, Server, follow, submit


def threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread of a process: (niceness, user CPU ticks), from /proc/PID/task/TID/stat."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        # After the name: state is field 3 of stat(5), utime field 14, nice field 19.
        found[int(task.name)] = (int(fields[16]), int(fields[11]))
    return found


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="niceness per thread is Linux's")


@pytest.mark.parametrize("nice", [10, 0])
def test_the_model_computes_on_threads_nicer_than_the_event_loop(
    make_server: Callable[..., Server], nice: int
) -> None:
    server = make_server(cpu_worker_nice=str(nice))
    with server.client() as client:
        job = submit(client, width=512, height=512, steps=4)
        assert follow(client, job["id"])[-1].event == "done"
    pid = server.process.pid
    seen = threads(pid)

    assert seen[pid][0] == 0  # the main thread runs the event loop: every page and stream
    niced = {tid: ticks for tid, (level, ticks) in seen.items() if level == nice and tid != pid}
    assert all(level in (0, nice) for level, _ in seen.values()), seen
    # The job's work (the worker thread, and torch's pool threads it started) ran at that niceness.
    assert sum(niced.values()) > 0, seen


def test_a_niceness_that_would_raise_priority_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "serve", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "ZIMAGE_SSE_CPU_WORKER_NICE": "-5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ZIMAGE_SSE_CPU_WORKER_NICE=-5" in result.stderr and "0 (off) to 19" in result.stderr
