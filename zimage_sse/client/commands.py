"""The client's commands: `generate` submits a job and follows it, `watch` follows any job; both save
its images, and turn every outcome into an exit code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from ..events import TERMINAL
from ..progress import duration
from .api import (
    ClientError,
    ExitCode,
    Rejected,
    StreamLost,
    Unreachable,
    get_job,
    http_error,
    request,
    save_images,
    submit,
)
from .display import Display, JobView, Terminal
from .feed import JobFeed

# How long Ctrl-C waits for the server to confirm the cancel: a running job stops at its next step.
CANCEL_WAIT_S = 10.0


def report(term: Terminal, error: ClientError) -> ExitCode:
    if isinstance(error, Rejected):
        term.say("zimage-sse: the server rejected the request:")
        for name, reason in error.errors.items():
            term.say(f"  {name}: {reason}")
    else:
        term.say(f"zimage-sse: {error}")
        if type(error) is Unreachable:
            term.say("  is `zimage-sse serve` running there? (--server or ZIMAGE_SSE_SERVER)")
    return error.exit_code


def describe_job(job: dict[str, Any]) -> str:
    params = job.get("params") or {}
    return (
        f"job {job.get('id')} {job.get('status')}: {params.get('width')}×{params.get('height')}, "
        f"{params.get('steps')} steps, seed {params.get('seed')}, {params.get('num_images')} image(s)"
    )


def generate(
    client: httpx.Client,
    params: dict[str, Any],
    *,
    out: Path | None = None,
    term: Terminal | None = None,
    **feed_options: Any,
) -> ExitCode:
    """Submit a job, follow it to its end, and save its images (at `out`, or under the server's names)."""
    term = term or Terminal.default()
    try:
        job = submit(client, params)
    except ClientError as error:
        return report(term, error)
    term.say(describe_job(job))
    return follow(client, str(job["id"]), out=out, save=True, term=term, **feed_options)


def watch(
    client: httpx.Client,
    job_id: str,
    *,
    out: Path | None = None,
    term: Terminal | None = None,
    **feed_options: Any,
) -> ExitCode:
    """Follow any job to its end; save its images if it ends done and `out` is given."""
    term = term or Terminal.default()
    try:
        job = get_job(client, job_id)
    except ClientError as error:
        return report(term, error)
    term.say(describe_job(job))
    return follow(client, job_id, out=out, save=out is not None, term=term, **feed_options)


def follow(
    client: httpx.Client,
    job_id: str,
    *,
    out: Path | None,
    save: bool,
    term: Terminal,
    **feed_options: Any,
) -> ExitCode:
    display = term.display(job_id)

    def retrying(problem: str, attempt: int, delay: float) -> None:
        display.message(f"connection lost ({problem}); reconnecting in {delay:.1f}s (attempt {attempt})")

    feed = JobFeed(client, job_id, on_retry=retrying, **feed_options)
    try:
        for event in feed:
            display.update(event)
    except KeyboardInterrupt:
        display.message(f"interrupted: asking the server to cancel job {job_id}…")
        _cancel(client, feed, display)
        display.close()
        if feed.ended is not None:
            _say_end(term, job_id, display.view)
        return ExitCode.INTERRUPTED
    except ClientError as error:
        display.close()
        code = report(term, error)
        if isinstance(error, StreamLost):
            term.say(f"  the job goes on; follow it again with: zimage-sse watch {job_id} --server …")
        return code
    finally:
        display.close()
    view = display.view
    _say_end(term, job_id, view)
    if view.status == "failed":
        return ExitCode.FAILED
    if view.status == "cancelled":
        return ExitCode.CANCELLED
    if not save:
        for url in view.images:
            print(client.base_url.join(url), file=term.out, flush=True)
        return ExitCode.DONE
    try:
        paths = save_images(client, view.images, out)
    except ClientError as error:
        return report(term, error)
    except OSError as error:
        term.say(f"zimage-sse: cannot save the image: {error}")
        return ExitCode.CANNOT_SAVE
    for path in paths:
        print(path, file=term.out, flush=True)
    return ExitCode.DONE


def _say_end(term: Terminal, job_id: str, view: JobView) -> None:
    took = "" if view.elapsed_s is None else f" in {duration(view.elapsed_s, compact=True)}"
    if view.status == "done":
        term.say(f"job {job_id} done{took}")
    else:
        term.say(f"zimage-sse: job {job_id} {view.status}{took}: {view.error or 'no reason given'}")


def _cancel(client: httpx.Client, feed: JobFeed, display: Display) -> None:
    """Ask the server to cancel, then give the stream a little while to confirm it."""
    try:
        response = request(client, "POST", f"/api/jobs/{feed.job_id}/cancel", timeout=5.0)
        if response.status_code == 409:
            display.message("the job had already ended")
        elif response.status_code != 202:
            display.message(f"could not cancel: {http_error(response)}")
            return
        for event in feed.events(deadline=time.monotonic() + CANCEL_WAIT_S):
            display.update(event)
    except ClientError as error:
        display.message(f"could not cancel: {error}")
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting
    if feed.ended is not None and display.view.status not in TERMINAL:
        display.update(feed.ended)  # the end arrived just as Ctrl-C interrupted drawing it
    if feed.ended is None:
        display.message("the server has not confirmed the cancel yet")
