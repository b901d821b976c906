"""Fan-out: one job watched by 1, 100 and 1,000 concurrent SSE clients on one server process.

For each client count, a blocker job keeps the worker busy while the clients connect to the measured
job's stream (`/api/jobs/{id}/events`, JSON) and receive its snapshot; then the blocker is cancelled and
the measured job runs with everyone watching. Every event carries the server's `at` (unix seconds when
the job manager made it); each client notes time.time() as the event's last line arrives, on the same
machine, so delay = arrival − `at`: the whole path through the broadcaster, sse-starlette, uvicorn, the
socket and the client's parser. Clients are asyncio raw-socket readers spread over one process per
core (at most 4): here they share the server's cores, and more processes than cores only add context
switches to every write the server makes. Their garbage collector is off for the run, so its pauses
are not counted as the server's delay.

Reported per client count: p50/p99 step-event delay over every (client, step), clients that saw every
step and the terminal event (nothing coalesced, nothing dropped), and server memory per client =
(RSS with N clients connected − RSS just before they connected) / N.
Goal (issue 7): with 1,000 clients p99 < 100 ms and nothing missed. The p99 of each step is printed
too: one slow step is easy to tell from a slow fan-out.

    .venv/bin/python -m bench.fanout [--quick] [--clients 1,100,1000] [--processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import queue
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any

from . import common

GOAL_P99_S = 0.100
GOAL_CLIENTS = 1000
BLOCKER_STEPS = 10_000  # far more than connecting takes; the blocker is cancelled once all are in


@dataclass
class ClientResult:
    """What one client process saw, over all its connections."""

    connections: int = 0
    complete: int = 0  # connections that saw every step and the terminal event, in order
    missed_steps: int = 0
    delays: list[float] = field(default_factory=list)  # step events: arrival − at, seconds
    steps: list[int] = field(default_factory=list)  # the step of each delay
    errors: list[str] = field(default_factory=list)


async def _watch(
    host: str, port: int, path: str, steps: int, ready: asyncio.Event, out: ClientResult
) -> None:
    reader, writer = await common.open_stream(host, port, path)
    seen: list[int] = []
    terminal = None
    try:
        async for message in common.messages(reader):
            if message.event == "snapshot":
                ready.set()
                continue
            data = message.json()
            if message.event == "step":
                seen.append(int(data["step"]))
                out.delays.append(message.received - float(data["at"]))
                out.steps.append(int(data["step"]))
            elif message.event in ("done", "failed", "cancelled"):
                terminal = message.event
                break
    finally:
        writer.close()
    out.missed_steps += steps - len(set(seen))
    if terminal == "done" and seen == list(range(1, steps + 1)):
        out.complete += 1
    elif terminal != "done":
        out.errors.append(f"stream ended with {terminal!r} after steps {seen[-3:]}")


async def _client_process(
    host: str, port: int, path: str, count: int, steps: int, reports: Queue[Any]
) -> ClientResult:
    out = ClientResult(connections=count)
    readies = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(_watch(host, port, path, steps, ready, out)) for ready in readies]
    await asyncio.gather(*(ready.wait() for ready in readies))
    reports.put(("ready", count))
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            out.errors.append(f"{type(result).__name__}: {result}")
    return out


def client_process(host: str, port: int, path: str, count: int, steps: int, reports: Queue[Any]) -> None:
    """One client process: `count` concurrent streams; says "ready" once all have their snapshot."""
    # The clients are the measuring instrument: a pause of their garbage collector (10-30 ms with
    # 250 streams' objects) would count as the server's delay. They live for one job; nothing piles up.
    gc.disable()
    result = asyncio.run(_client_process(host, port, path, count, steps, reports))
    reports.put(("result", result))


@dataclass(frozen=True)
class Round:
    clients: int
    delays: list[float]
    steps: list[int]
    complete: int
    missed_steps: int
    errors: list[str]
    rss_before: int
    rss_with: int

    @property
    def per_client_kb(self) -> float:
        return (self.rss_with - self.rss_before) / self.clients / 1024


def run_round(server: common.ServerProcess, clients: int, processes: int, job: dict[str, Any]) -> Round:
    host, port = server.host_port
    context = multiprocessing.get_context("spawn")
    reports: Queue[Any] = context.Queue()
    with server.client() as http:
        blocker = common.submit(http, {**job, "steps": BLOCKER_STEPS, "width": 256, "height": 256})
        common.wait_until(lambda: http.get(f"/api/jobs/{blocker}").json()["step"] >= 1, "the blocker to run")
        target = common.submit(http, job)
        rss_before = server.rss_bytes()
        shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
        workers = [
            context.Process(
                target=client_process,
                args=(host, port, f"/api/jobs/{target}/events", share, job["steps"], reports),
            )
            for share in shares
            if share
        ]
        for worker in workers:
            worker.start()
        connected = 0
        while connected < clients:
            kind, value = reports.get(timeout=300)
            if kind != "ready":
                raise RuntimeError(f"a client process ended before connecting: {value}")
            connected += value
        rss_with = server.rss_bytes()
        http.post(f"/api/jobs/{blocker}/cancel")
        results: list[ClientResult] = []
        while len(results) < len(workers):
            try:
                kind, value = reports.get(timeout=600)
            except queue.Empty:
                raise RuntimeError("the clients did not finish within 10 minutes") from None
            results.append(value)
        for worker in workers:
            worker.join()
        status = http.get(f"/api/jobs/{target}").json()["status"]
    if status != "done":
        raise RuntimeError(f"the measured job ended {status}")
    return Round(
        clients=clients,
        delays=[d for r in results for d in r.delays],
        steps=[s for r in results for s in r.steps],
        complete=sum(r.complete for r in results),
        missed_steps=sum(r.missed_steps for r in results),
        errors=[e for r in results for e in r.errors],
        rss_before=rss_before,
        rss_with=rss_with,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    common.add_common_args(parser, model="demo")
    parser.add_argument("--clients", default=None, help="client counts (default 1,100,1000; quick 1,10,50)")
    parser.add_argument(
        "--processes",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="client processes (default: one per core, at most 4)",
    )
    parser.add_argument("--size", type=int, default=None, help="image side (default 768; quick 256)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the watched job (default 8)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model = "tiny" if args.model == "demo" else args.model
    counts = [int(c) for c in (args.clients or ("1,10,50" if args.quick else "1,100,1000")).split(",")]
    size = args.size or (256 if args.quick else 768)
    job = {"prompt": "a lighthouse in a storm", "width": size, "height": size, "steps": args.steps or 8}
    run = common.Run.begin("Fan-out (bench/fanout.py)", "bench.fanout", argv, args.device)
    # Each client holds a socket on both ends; the server and the client processes inherit this limit.
    limit = common.raise_open_files(max(counts) * 2 + 256)
    if limit < max(counts) + 64:
        parser.error(f"the open-file limit ({limit}) is too low for {max(counts)} clients")

    rounds = []
    with common.serve_for(args, env={"max_steps": str(BLOCKER_STEPS)}) as server:
        with server.client() as http:  # load the model and warm it up; not measured
            warm = common.submit(http, job)
            common.wait_until(lambda: http.get(f"/api/jobs/{warm}").json()["status"] == "done", "warm-up")
        for clients in counts:
            print(f"{clients} clients…", file=sys.stderr, flush=True)
            rounds.append(run_round(server, clients, min(args.processes, clients), job))

    rows = []
    for r in rounds:
        rows.append(
            [
                str(r.clients),
                f"{common.median(r.delays) * 1000:.1f}",
                f"{common.percentile(r.delays, 0.99) * 1000:.1f}",
                f"{max(r.delays) * 1000:.1f}",
                f"{r.complete}/{r.clients}",
                str(r.missed_steps),
                f"{(r.rss_with - r.rss_before) / common.MB:.1f}",
                f"{r.per_client_kb:.1f}",
            ]
        )
    headers = ["clients", "p50 ms", "p99 ms", "max ms", "saw all", "missed", "RSS +MB", "KB/client"]
    lines = [
        f"{args.model} model on {args.device}, {size}x{size}, {job['steps']} steps,"
        f" previews on (the default), {args.processes} client processes",
        *common.table(headers, rows),
    ]
    for r in rounds:
        lines += [f"  {r.clients} clients: {e}" for e in r.errors[:5]]
    biggest = max(rounds, key=lambda r: r.clients)
    by_step: dict[int, list[float]] = {}
    for step, delay in zip(biggest.steps, biggest.delays, strict=True):
        by_step.setdefault(step, []).append(delay)
    lines.append(
        f"p99 ms by step with {biggest.clients} clients: "
        + ", ".join(f"{s}: {common.percentile(d, 0.99) * 1000:.0f}" for s, d in sorted(by_step.items()))
    )
    ok = (
        biggest.clients >= GOAL_CLIENTS
        and common.percentile(biggest.delays, 0.99) < GOAL_P99_S
        and biggest.complete == biggest.clients
    )
    lines.append(
        f"goal with {GOAL_CLIENTS} clients: p99 < {GOAL_P99_S * 1000:.0f} ms and nothing missed: "
        + (common.verdict(ok) if biggest.clients >= GOAL_CLIENTS else "not measured (fewer clients)")
    )
    common.report(run, args, lines)
    return 0 if ok or biggest.clients < GOAL_CLIENTS else 1


if __name__ == "__main__":
    raise SystemExit(main())
