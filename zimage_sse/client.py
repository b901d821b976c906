"""The terminal client: submit a job, follow its SSE feed with a progress bar, save its images.

Plain httpx and tqdm against the HTTP API, so it works with a remote server and starts in a blink:
nothing here (or on the CLI path to it) imports torch, diffusers or the server's modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

import httpx
from tqdm import tqdm  # type: ignore[import-untyped]

from . import __version__
from .events import TERMINAL

# The events a terminal draws; others (`preview`) are passed over.
SHOWN = frozenset({"snapshot", "queued", "phase", "step", *TERMINAL})
# How long Ctrl-C waits for the server to confirm the cancel: a running job stops at its next step.
CANCEL_WAIT_S = 10.0
# Read timeout of a stream: the server sends a heartbeat comment every 15 s by default, so four
# missed heartbeats mean the connection is dead and we reconnect.
STREAM_READ_TIMEOUT_S = 60.0


class ExitCode(IntEnum):
    """What `zimage-sse generate` and `watch` exit with; distinct so scripts can tell outcomes apart."""

    DONE = 0
    FAILED = 1  # the job failed on the server
    USAGE = 2  # argparse's own code for a bad command line
    INVALID = 3  # the server rejected the parameters (422)
    CANCELLED = 4  # the job was cancelled (by someone else: Ctrl-C is INTERRUPTED)
    UNREACHABLE = 5  # no connection to the server, or the stream was lost for good
    SERVER_ERROR = 6  # any other HTTP error: unknown job, unauthorised, 5xx
    CANNOT_SAVE = 7  # the image could not be written here
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class ClientError(Exception):
    exit_code = ExitCode.SERVER_ERROR


class Unreachable(ClientError):
    exit_code = ExitCode.UNREACHABLE


class StreamLost(Unreachable):
    """The feed dropped and did not come back within the retries."""


class Rejected(ClientError):
    """422: the server names each invalid field and why."""

    exit_code = ExitCode.INVALID

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("the server rejected the request")
        self.errors = errors


class HttpError(ClientError):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def http_error(response: httpx.Response) -> ClientError:
    """The error a non-success answer stands for, with the server's own words where it gave any."""
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 422 and isinstance(body, dict) and isinstance(body.get("errors"), dict):
        return Rejected({str(k): str(v) for k, v in body["errors"].items()})
    if isinstance(body, dict) and "error" in body:
        detail = str(body["error"])
    elif isinstance(body, dict) and isinstance(body.get("errors"), dict):
        detail = "; ".join(f"{k}: {v}" for k, v in body["errors"].items())
    else:
        detail = response.text.strip()[:200] or response.reason_phrase
    return HttpError(
        response.status_code, f"{response.request.url} answered {response.status_code}: {detail}"
    )


# -- connection ----------------------------------------------------------------------------------


def server_url(value: str) -> str:
    """`gpu-box:8000` means `http://gpu-box:8000`; a trailing slash changes nothing."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def connect(server: str, token: str | None = None, **kwargs: Any) -> httpx.Client:
    """An HTTP client for one server; the bearer token goes on every request it makes."""
    headers = {"User-Agent": f"zimage-sse/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(
        base_url=server_url(server),
        headers=headers,
        timeout=httpx.Timeout(30.0, connect=10.0),
        **kwargs,
    )


def _request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise Unreachable(f"cannot reach the server at {client.base_url} ({_describe(exc)})") from exc


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def submit(client: httpx.Client, params: dict[str, Any]) -> dict[str, Any]:
    """POST /api/jobs; the job's snapshot, or Rejected with the server's reasons."""
    response = _request(client, "POST", "/api/jobs", json=params)
    if response.status_code != 201:
        raise http_error(response)
    job: dict[str, Any] = response.json()
    return job


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = _request(client, "GET", f"/api/jobs/{job_id}")
    if response.status_code != 200:
        raise http_error(response)
    job: dict[str, Any] = response.json()
    return job


# -- the event stream ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Lines in, messages out, per WHATWG HTML "Interpreting an event stream" (§9.2.6).

    A message is dispatched only at the blank line that ends it, so one cut off by a dropped
    connection never reaches the caller; the caller resumes from the last id instead.
    """

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> Message | None:
        if line == "":
            message = None
            if self._data:
                message = Message(self._event or "message", "\n".join(self._data), self.last_id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


@dataclass(frozen=True)
class JobEvent:
    kind: str  # snapshot, queued, phase, step, done, failed, cancelled
    data: dict[str, Any]
    id: int | None

    @property
    def status(self) -> str | None:
        if self.kind in TERMINAL:
            return self.kind
        status = self.data.get("status")
        return str(status) if status is not None else None

    @property
    def terminal(self) -> bool:
        # A job that ended before we connected streams only a snapshot showing how it ended.
        return self.status in TERMINAL


class JobFeed:
    """One job's events in order and each once, from its snapshot to its end, across dropped connections.

    After a drop it reconnects with Last-Event-ID (the server replays what was missed) up to
    `retries` times in a row, waiting `backoff_s`, then twice that, and so on; receiving anything
    resets the count. Events at or below the last id are replays we already have and are dropped.
    Iterating again after an interruption (Ctrl-C) resumes where it stopped.
    """

    def __init__(
        self,
        client: httpx.Client,
        job_id: str,
        *,
        last_id: int | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.last_id = last_id
        self.ended: JobEvent | None = None
        self.connections = 0
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._on_retry = on_retry

    def __iter__(self) -> Iterator[JobEvent]:
        return self.events()

    def events(self, deadline: float | None = None) -> Iterator[JobEvent]:
        """The events still to come; with a `deadline` (time.monotonic()) it stops quietly there."""
        failures = 0
        while self.ended is None:
            if deadline is not None and time.monotonic() >= deadline:
                return
            headers = {} if self.last_id is None else {"Last-Event-ID": str(self.last_id)}
            problem = "the stream closed before the job ended"
            self.connections += 1
            try:
                with self.client.stream(
                    "GET",
                    f"/api/jobs/{self.job_id}/events",
                    headers=headers,
                    timeout=self._timeout(deadline),
                ) as response:
                    if response.status_code == 204:
                        # "You have seen the end": we resumed from an id given to us, or the
                        # server restarted and numbers afresh. Either way, read how the job ended.
                        job = get_job(self.client, self.job_id)
                        event = JobEvent("snapshot", job, None)
                        if event.terminal:
                            self.ended = event
                            yield event
                            return
                    elif response.status_code != 200:
                        error = http_error(response)
                        if response.status_code < 500:
                            raise error
                        problem = str(error)
                    else:
                        parser = SseParser()
                        for line in response.iter_lines():
                            if line.startswith(":"):
                                failures = 0  # a heartbeat: the connection is alive
                                continue
                            message = parser.feed(line)
                            if message is None:
                                continue
                            accepted = self._accept(message)
                            if accepted is None:
                                continue
                            failures = 0
                            if accepted.terminal:
                                self.ended = accepted
                            yield accepted
                            if self.ended is not None:
                                return
            except httpx.TransportError as exc:
                problem = _describe(exc)
            except Unreachable as exc:  # from get_job
                problem = str(exc)
            failures += 1
            if failures > self._retries:
                raise StreamLost(
                    f"lost the event stream of job {self.job_id} at {self.client.base_url} "
                    f"({problem}; {self._retries} reconnects failed)"
                )
            delay = min(self._max_backoff_s, self._backoff_s * 2 ** (failures - 1))
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            if self._on_retry is not None:
                self._on_retry(problem, failures, delay)
            self._sleep(delay)

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        read = STREAM_READ_TIMEOUT_S
        if deadline is not None:
            read = max(0.1, min(read, deadline - time.monotonic()))
        return httpx.Timeout(30.0, connect=10.0, read=read)

    def _accept(self, message: Message) -> JobEvent | None:
        event_id = int(message.id) if message.id is not None and message.id.isdigit() else None
        last = self.last_id
        # A snapshot is always taken, even with a lower id: the server's numbering has restarted.
        if message.event != "snapshot" and event_id is not None and last is not None and event_id <= last:
            return None  # replayed: already delivered
        try:
            data = json.loads(message.data)
        except ValueError as exc:
            raise ClientError(f"the server sent an event that is not JSON: {message.data[:80]!r}") from exc
        if event_id is not None:
            self.last_id = event_id
        return JobEvent(message.event, data if isinstance(data, dict) else {"value": data}, event_id)


# -- what the user sees --------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class JobView:
    """A job as its events describe it, counted forward by the local clock between events."""

    job_id: str
    status: str = "queued"
    phase: str | None = None
    step: int = 0
    total: int | None = None
    position: int | None = None
    queue_length: int | None = None
    predicted_start_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None
    percent: float = 0.0
    error: str | None = None
    images: list[str] = field(default_factory=list)
    seen_at: float = field(default_factory=time.monotonic)

    def apply(self, event: JobEvent, now: float | None = None) -> None:
        if event.kind not in SHOWN:
            return  # e.g. `preview`: nothing a terminal draws
        now = time.monotonic() if now is None else now
        data = event.data
        if event.kind == "snapshot":
            self.status = str(data.get("status") or self.status)
            self.phase = data.get("phase")
            self.step = int(data.get("step") or 0)
            self.total = data.get("total", self.total)
            self.position = data.get("position")
            self.predicted_start_s = data.get("predicted_start_s")
            self.eta_s = data.get("eta_s")
            self.elapsed_s = data.get("elapsed_s")
            self.percent = max(self.percent, float(data.get("percent") or 0.0))
            self.error = data.get("error")
            self.images = list(data.get("images") or [])
        elif event.kind == "queued":
            self.position = data.get("position")
            self.queue_length = data.get("queue_length")
            self.predicted_start_s = data.get("predicted_start_s")
            self.eta_s = data.get("eta_s")
        elif event.kind == "phase":
            # A phase event carries no elapsed time: count on from the last one, or from 0 at the start.
            self.elapsed_s = self.elapsed(now) if self.status == "running" else 0.0
            self.status, self.position = "running", None
            self.phase = data.get("phase")
            self.eta_s = data.get("eta_s")
        elif event.kind == "step":
            self.status, self.position = "running", None
            self.step = int(data.get("step") or self.step)
            self.total = data.get("total", self.total)
            # The server's clock, but never behind what we have already shown (network jitter).
            self.elapsed_s = max(data.get("elapsed_s") or 0.0, self.elapsed(now) or 0.0)
            self.eta_s = data.get("eta_s")
            self.percent = max(self.percent, float(data.get("percent") or 0.0))
        elif event.kind in TERMINAL:
            self.status, self.phase, self.eta_s = event.kind, None, 0.0
            self.elapsed_s = data.get("elapsed_s", self.elapsed_s)
            self.error = data.get("error")
            self.images = list(data.get("images") or [])
            if event.kind == "done":
                self.percent = 100.0
        self.seen_at = now

    def elapsed(self, now: float) -> float | None:
        if self.elapsed_s is None:
            return None
        return self.elapsed_s + (now - self.seen_at) if self.status == "running" else self.elapsed_s

    def remaining(self, now: float) -> float | None:
        return None if self.eta_s is None else max(0.0, self.eta_s - (now - self.seen_at))

    def starts_in(self, now: float) -> float | None:
        if self.predicted_start_s is None:
            return None
        return max(0.0, self.predicted_start_s - (now - self.seen_at))

    def progress(self, now: float) -> float:
        """Time-based percent like the server's: elapsed / (elapsed + remaining), never going back."""
        elapsed, remaining = self.elapsed(now), self.remaining(now)
        if self.status == "running" and elapsed is not None and remaining is not None and elapsed + remaining:
            self.percent = max(self.percent, min(99.9, 100.0 * elapsed / (elapsed + remaining)))
        return self.percent

    def queue_text(self, now: float) -> str:
        where = "position ?" if self.position is None else f"position {self.position}"
        if self.position is not None and self.queue_length:
            where += f" of {self.queue_length}"
        start = self.starts_in(now)
        starts = "starts: estimating…" if start is None else f"starts in ~{duration(start)}"
        return f"{where} · {starts}"

    def clock_text(self, now: float) -> str:
        elapsed, remaining = self.elapsed(now), self.remaining(now)
        eta = "ETA estimating…" if remaining is None else f"ETA {duration(remaining)}"
        return f"elapsed {duration(elapsed or 0.0)} · {eta}"

    def step_text(self) -> str:
        return f"step {self.step}/{self.total if self.total is not None else '?'}"


class Display:
    """Shows a job's progress on stderr as its events arrive; the base class prints a line per change.

    That suits logs and pipes. On a terminal, BarDisplay draws a tqdm bar instead.
    """

    def __init__(self, stream: TextIO, job_id: str) -> None:
        self.stream = stream
        self.view = JobView(job_id)
        self._lock = threading.Lock()
        self._shown: tuple[object, ...] | None = None
        self._shown_step = 0

    def update(self, event: JobEvent) -> None:
        with self._lock:
            self.view.apply(event)
            self._draw(event)

    def _draw(self, event: JobEvent) -> None:
        view, now = self.view, time.monotonic()
        if view.status == "queued":
            shown: tuple[object, ...] = ("queued", view.position, view.queue_length)
            if shown != self._shown:
                self._print(f"queued · {view.queue_text(now)}")
        elif view.status == "running":
            shown = ("running", view.phase, view.step)
            if view.step > self._shown_step:
                # Steps only ever go forward: a replayed or re-sent step is never printed twice.
                self._shown_step = view.step
                self._print(f"{view.step_text()} · {view.phase} · {self._progress(now)}")
            elif shown[:2] != (self._shown or ())[:2]:
                self._print(f"{view.phase or 'running'} · {self._progress(now)}")
        else:
            shown = (view.status,)
        self._shown = shown

    def _progress(self, now: float) -> str:
        return f"{self.view.progress(now):.0f}% · {self.view.clock_text(now)}"

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        with self._lock:
            self._print(text)

    def close(self) -> None:
        pass


class BarDisplay(Display):
    """A tqdm bar (time-based percent, step i/N, phase, elapsed, ETA), redrawn twice a second so the
    clock keeps moving between events."""

    def __init__(self, stream: TextIO, job_id: str, interval_s: float = 0.5) -> None:
        super().__init__(stream, job_id)
        # tqdm hands `unit` to bar_format untouched, unlike `postfix` (which it prefixes with ", "),
        # so it carries the text right of the bar.
        self._bar = tqdm(
            total=100,
            file=stream,
            bar_format="{desc}{percentage:3.0f}%|{bar}| {unit}",
            dynamic_ncols=True,
            unit="connecting…",
            desc="job: ",
        )
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                self._redraw()

    def _draw(self, event: JobEvent) -> None:
        self._redraw()

    def _redraw(self) -> None:
        view, now = self.view, time.monotonic()
        if view.status == "queued":
            desc, text, percent = "queued: ", view.queue_text(now), 0.0
        else:
            text = f"{view.step_text()} · {view.clock_text(now)}"
            desc, percent = f"{view.phase or view.status}: ", view.progress(now)
        self._bar.set_description_str(desc, refresh=False)
        self._bar.unit = text
        self._bar.n = percent
        self._bar.refresh()

    def message(self, text: str) -> None:
        with self._lock:
            self._bar.write(text, file=self.stream)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._ticker.join()
        with self._lock:
            self._redraw()
            self._bar.close()


# -- commands ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terminal:
    """Where the commands write: progress and messages to `err`, saved paths (or image URLs) to `out`."""

    out: TextIO
    err: TextIO
    bar: bool

    @classmethod
    def default(cls) -> Terminal:
        return cls(sys.stdout, sys.stderr, sys.stderr.isatty())

    def display(self, job_id: str) -> Display:
        return BarDisplay(self.err, job_id) if self.bar else Display(self.err, job_id)

    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)


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
    took = "" if view.elapsed_s is None else f" in {duration(view.elapsed_s)}"
    if view.status == "done":
        term.say(f"job {job_id} done{took}")
    else:
        term.say(f"zimage-sse: job {job_id} {view.status}{took}: {view.error or 'no reason given'}")


def _cancel(client: httpx.Client, feed: JobFeed, display: Display) -> None:
    """Ask the server to cancel, then give the stream a little while to confirm it."""
    try:
        response = _request(client, "POST", f"/api/jobs/{feed.job_id}/cancel", timeout=5.0)
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


def image_paths(urls: list[str], out: Path | None) -> list[Path]:
    """Where each image goes: the server's names here or in directory `out`; file `out`; or for
    several images FILE-1.png, FILE-2.png …"""
    names = [Path(httpx.URL(url).path).name for url in urls]
    if out is None:
        return [Path(name) for name in names]
    if out.is_dir():
        return [out / name for name in names]
    if len(urls) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{n}{out.suffix or '.png'}") for n in range(1, len(urls) + 1)]


def save_images(client: httpx.Client, urls: list[str], out: Path | None) -> list[Path]:
    paths = image_paths(urls, out)
    for url, path in zip(urls, paths, strict=True):
        response = _request(client, "GET", url)
        if response.status_code != 200:
            raise http_error(response)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed, so an interrupted download never leaves half a PNG under the name.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as file:
            file.write(response.content)
        try:
            os.replace(file.name, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(file.name)
            raise
    return paths
