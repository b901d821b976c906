"""On a CPU device the model's threads run nicer than the event loop that serves pages and streams
(Settings.cpu_worker_nice, zimage_sse/worker.py `thread_started`), checked on a real server's threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, follow, start_server, submit


def threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread of a process: (niceness, user CPU ticks), from /proc/PID/task/TID/stat."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rpartition(")")[2].split()
        # After the name: state is field 3 of stat(5), utime field 14, nice field 19.
        found[int(task.name)] = (int(fields[16]), int(fields[11]))
    return found


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="niceness per thread is Linux's")


@pytest.mark.parametrize(
    ("server_nice", "setting", "expected"),
    [(0, 10, 10), (0, 0, 0), (5, 10, 15), (15, 10, 19)],  # relative to the server's, at most 19
)
def test_the_model_computes_on_threads_nicer_than_the_event_loop(
    tmp_path: Path, models_dir: Path, server_nice: int, setting: int, expected: int
) -> None:
    def as_if_started_with_nice() -> None:  # `nice -n N zimage-sse serve`
        os.nice(server_nice)

    server = start_server(
        tmp_path / "data",
        models_dir,
        env={"ZIMAGE_SSE_CPU_WORKER_NICE": str(setting)},
        preexec_fn=as_if_started_with_nice,
    )
    try:
        with server.client() as client:
            job = submit(client, width=512, height=512, steps=4)
            assert follow(client, job["id"])[-1].event == "done"
        pid = server.process.pid
        seen = threads(pid)
    finally:
        server.stop()

    assert seen[pid][0] == server_nice  # the main thread runs the event loop: every page and stream
    assert all(level in (server_nice, expected) for level, _ in seen.values()), seen
    # The job's work (the worker thread, and torch's pool threads it started) ran at that niceness.
    assert sum(ticks for tid, (level, ticks) in seen.items() if level == expected and tid != pid) > 0


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
