"""Back-to-back: 20 jobs queued at once; how long the device sits idle between one job and the next.

All jobs are submitted together after a warm-up job, so the queue is never empty until the last one
starts. A listener on `/api/events` records every event with its server timestamp `at`. Two views:

- device: a job's work starts at its first `phase` event (`encoding`) and ends that event's `at`
  plus the phase times the worker measured (encoding + denoising + decoding + saving, in the `done`
  event); idle = next job's start − this job's end. This counts everything the manager does between
  two runs (recording the finished job in SQLite, marking the next one started, queue events).
- records: the `started_at` and `finished_at` the service stores for each job (GET /api/jobs/{id});
  idle = next started_at − this finished_at.

Idle fraction = idle time / (last end − first start). Goal (issue 7): < 1 %.

    .venv/bin/python -m bench.back_to_back [--quick] [--jobs 20] [--size 512] [--steps 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import common

GOAL = 0.01


@dataclass(frozen=True)
class Span:
    start: float
    end: float


class Listener(threading.Thread):
    """Reads /api/events until `count` jobs have ended; `ready` is set once the snapshot arrived."""

    def __init__(self, server: common.ServerProcess, count: int) -> None:
        super().__init__(daemon=True)
        self.server, self.count = server, count
        self.ready = threading.Event()
        self.events: list[common.Message] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._read())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _read(self) -> None:
        reader, writer = await common.open_stream(*self.server.host_port, "/api/events")
        ended = 0
        try:
            async for message in common.messages(reader):
                self.events.append(message)
                self.ready.set()
                if message.event in ("done", "failed", "cancelled"):
                    ended += 1
                    if ended == self.count:
                        return
        finally:
            writer.close()


def device_spans(events: Sequence[common.Message], ids: Sequence[str]) -> list[Span]:
    """Each job's work on the device, from its first phase event and the phase times it reported."""
    first: dict[str, float] = {}
    busy: dict[str, float] = {}
    for message in events:
        data: dict[str, Any] = message.json() if message.event != "snapshot" else {}
        job_id = str(data.get("job_id"))
        if message.event == "phase" and job_id not in first:
            first[job_id] = float(data["at"])
        elif message.event == "done":
            busy[job_id] = sum(data["phases"].values())
    return [Span(first[i], first[i] + busy[i]) for i in ids]


def idle(spans: Sequence[Span]) -> tuple[float, float, float]:
    """Total idle seconds between consecutive spans, the largest gap, and the whole stretch."""
    gaps = [max(0.0, b.start - a.end) for a, b in itertools.pairwise(spans)]
    return sum(gaps), max(gaps, default=0.0), spans[-1].end - spans[0].start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.back_to_back", description=__doc__.splitlines()[0])
    common.add_common_args(parser, model="demo")
    parser.add_argument("--jobs", type=int, default=None, help="queued jobs (default 20; quick 5)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; quick 256)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    if args.quick:
        args.model = "tiny" if args.model == "demo" else args.model
    count = args.jobs or (5 if args.quick else 20)
    size = args.size or (256 if args.quick else 512)
    run = common.Run.begin("Back-to-back (bench/back_to_back.py)", "bench.back_to_back", argv, args.device)
    job = {"prompt": "a lighthouse in a storm", "width": size, "height": size, "steps": args.steps}

    with common.serve_for(args) as server, server.client() as http:
        warm = common.submit(http, {**job, "seed": 0})  # loads the model and pays the warm-up
        common.wait_until(lambda: http.get(f"/api/jobs/{warm}").json()["status"] == "done", "warm-up")
        listener = Listener(server, count)
        listener.start()
        listener.ready.wait(timeout=60)
        if listener.error is not None:
            raise listener.error
        ids = [common.submit(http, {**job, "seed": seed}) for seed in range(1, count + 1)]
        listener.join(timeout=3600)
        if listener.error is not None:
            raise listener.error
        records = [http.get(f"/api/jobs/{i}").json() for i in ids]
    statuses = {r["status"] for r in records}
    if statuses != {"done"}:
        raise RuntimeError(f"jobs ended {statuses}")

    views = {
        "device (events)": device_spans(listener.events, ids),
        "records (started/finished_at)": [Span(r["started_at"], r["finished_at"]) for r in records],
    }
    rows = []
    fractions = {}
    for name, spans in views.items():
        total_idle, worst, stretch = idle(spans)
        fractions[name] = total_idle / stretch
        rows.append(
            [
                name,
                f"{stretch:.2f}",
                f"{total_idle * 1000:.1f}",
                f"{total_idle / (count - 1) * 1000:.1f}",
                f"{worst * 1000:.1f}",
                f"{100 * fractions[name]:.3f} %",
            ]
        )
    ok = all(fraction < GOAL for fraction in fractions.values())
    lines = [
        f"{count} jobs queued at once, {args.model} model on {args.device}, {size}x{size},"
        f" {args.steps} steps",
        *common.table(["view", "total s", "idle ms", "per gap ms", "worst ms", "idle"], rows),
        f"goal: idle < {GOAL:.0%} of the total: {common.verdict(ok)}",
    ]
    common.report(run, args, lines)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
