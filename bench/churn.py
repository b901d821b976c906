"""Churn: 10,000 SSE connect/disconnect cycles against one server; its memory before and after.

While a long job runs (so events flow to every open stream), concurrent clients connect, read their
first message (the snapshot), and hang up without reading further; half of them open the running
job's stream, half the global `/api/events` feed. After the cycles the server must have released
every subscription (its `zimage_sse_subscribers` gauge back to 0) and kept no memory for them.
Memory is the server's RSS: before the first cycle, after a warm-up of a few hundred cycles (the
allocator's pools and lazily built objects, paid once), and after the last cycle.
Goal (issue 7): growth < 10 MB.

    .venv/bin/python -m bench.churn [--quick] [--cycles 10000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from . import common

GOAL_MB = 10.0
LONG_STEPS = 100_000  # the job that keeps events flowing; cancelled at the end


async def cycle(host: str, port: int, path: str) -> None:
    reader, writer = await common.open_stream(host, port, path)
    try:
        async for message in common.messages(reader):
            if message.event != "snapshot":
                raise RuntimeError(f"{path}: the first message was {message.event!r}, not a snapshot")
            break
    finally:
        writer.close()  # hang up mid-stream, as a closed tab does


async def churn(host: str, port: int, paths: Sequence[str], cycles: int, concurrency: int) -> float:
    """Run `cycles` connect/read/disconnect cycles, `concurrency` at a time; returns the wall time."""
    started = time.perf_counter()
    counter = iter(range(cycles))

    async def lane() -> None:
        for number in counter:
            await cycle(host, port, paths[number % len(paths)])

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__.splitlines()[0])
    common.add_common_args(parser, model="tiny")
    parser.add_argument("--cycles", type=int, default=None, help="default 10000; quick 1000")
    parser.add_argument("--warm-up", type=int, default=None, help="cycles before the baseline (default 500)")
    parser.add_argument("--concurrency", type=int, default=50, help="connections open at once (default 50)")
    args = parser.parse_args(argv)
    cycles = args.cycles or (1000 if args.quick else 10_000)
    warm_up = args.warm_up if args.warm_up is not None else (100 if args.quick else 500)
    run = common.Run.begin("Churn (bench/churn.py)", "bench.churn", argv, args.device)
    common.raise_open_files(args.concurrency * 2 + 256)

    job = {"prompt": "a lighthouse in a storm", "width": 64, "height": 64, "steps": LONG_STEPS}
    with common.serve_for(args, env={"max_steps": str(LONG_STEPS)}) as server, server.client() as http:
        long_job = common.submit(http, job)
        common.wait_until(lambda: http.get(f"/api/jobs/{long_job}").json()["step"] >= 1, "the job to run")
        host, port = server.host_port
        paths = [f"/api/jobs/{long_job}/events", "/api/events"]
        rss_start = server.rss_bytes()
        asyncio.run(churn(host, port, paths, warm_up, args.concurrency))
        common.wait_until(lambda: common.subscribers(http) == 0, "streams to close after the warm-up")
        rss_warm = server.rss_bytes()
        print(f"{cycles} cycles…", file=sys.stderr, flush=True)
        wall = asyncio.run(churn(host, port, paths, cycles, args.concurrency))
        common.wait_until(lambda: common.subscribers(http) == 0, "streams to close", timeout_s=60)
        rss_end = server.rss_bytes()
        still_running = http.get(f"/api/jobs/{long_job}").json()["status"] == "running"
        http.post(f"/api/jobs/{long_job}/cancel")

    growth = (rss_end - rss_warm) / common.MB
    rows = [
        ["before the first cycle", f"{rss_start / common.MB:.1f}", ""],
        [f"after {warm_up} warm-up cycles", f"{rss_warm / common.MB:.1f}", ""],
        [f"after {cycles} more cycles", f"{rss_end / common.MB:.1f}", f"{growth:+.1f}"],
    ]
    ok = growth < GOAL_MB and still_running
    lines = [
        f"{cycles} cycles ({args.concurrency} at a time, half the job's stream, half /api/events) in"
        f" {wall:.1f} s ({cycles / wall:.0f} a second) while a {args.model}-model job ran"
        + ("" if still_running else " (it ended early: events were not flowing throughout)"),
        *common.table(["server RSS", "MB", "growth"], rows),
        "open streams after the cycles (zimage_sse_subscribers): 0",
        f"goal: growth < {GOAL_MB:.0f} MB: {common.verdict(ok)}",
    ]
    common.report(run, args, lines)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
