"""What the user sees in a terminal: a job's state as its events describe it, drawn as lines or a bar."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm  # type: ignore[import-untyped]

from ..events import TERMINAL
from ..progress import duration, percent
from .feed import JobEvent

# The events a terminal draws; others (`preview`) are passed over.
SHOWN = frozenset({"snapshot", "queued", "phase", "step", *TERMINAL})


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
        """The server's time-based percent, counted on by the local clock while the job runs."""
        if self.status == "running":
            self.percent = percent(self.elapsed(now), self.remaining(now), floor=self.percent)
        return self.percent

    def queue_text(self, now: float) -> str:
        where = "position ?" if self.position is None else f"position {self.position}"
        if self.position is not None and self.queue_length:
            where += f" of {self.queue_length}"
        start = self.starts_in(now)
        starts = "starts: estimating…" if start is None else f"starts in ~{duration(start, compact=True)}"
        return f"{where} · {starts}"

    def clock_text(self, now: float) -> str:
        elapsed, remaining = self.elapsed(now), self.remaining(now)
        eta = "ETA estimating…" if remaining is None else f"ETA {duration(remaining, compact=True)}"
        return f"elapsed {duration(elapsed or 0.0, compact=True)} · {eta}"

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
            desc, text, shown = "queued: ", view.queue_text(now), 0.0
        else:
            text = f"{view.step_text()} · {view.clock_text(now)}"
            desc, shown = f"{view.phase or view.status}: ", view.progress(now)
        self._bar.set_description_str(desc, refresh=False)
        self._bar.unit = text
        self._bar.n = shown
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
