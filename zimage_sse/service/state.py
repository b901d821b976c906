"""One job's in-memory state: what a snapshot shows and every page and feed draws from."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..estimate import LiveEstimate
from ..eta import JobRecord
from ..events import TERMINAL
from ..params import JobParams
from ..progress import percent
from .planner import Placement


@dataclass
class JobState:
    """Everything a client needs to draw a job; `snapshot()` is the `snapshot` event's payload."""

    id: str
    params: JobParams
    status: str
    model: str
    created_at: float
    device: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    phase: str | None = None
    step: int = 0
    step_s: list[float] = field(default_factory=list)
    eta_s: float | None = None
    position: int | None = None
    images: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    # Queue predictions (the device the plan gives it, wall-clock start, seconds of running) and the
    # running job's live estimate.
    planned_device: str | None = None
    predicted_start_at: float | None = None
    predicted_total_s: float | None = None
    live: LiveEstimate | None = None
    preview: dict[str, Any] | None = None  # the latest `preview` event's data
    loading: dict[str, Any] | None = None  # the component being loaded: component, index, count
    model_loading: dict[str, Any] | None = None  # while queued behind a load: the model's status
    # Wall-clock time of the last ETA, so elapsed and the ETA agree on when they were measured.
    eta_at: float | None = None
    # The percent the last estimate had reached when a new one replaced it (the bar never goes back
    # below it); moved by `set_eta` and at the end, never by reading.
    progress_floor: float = 0.0
    # When retention removed the job's images (its row and timings stay); None: not pruned.
    pruned_at: float | None = None
    # The steps whose preview the job keeps for its animation (zimage_sse/frames.py), in order.
    frames: list[int] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def pixels(self) -> int:
        return self.params.width * self.params.height * self.params.num_images

    def elapsed_s(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else (now or time.time())
        return max(0.0, end - self.started_at)

    def remaining_s(self, now: float | None = None) -> float | None:
        """The last ETA, counted down by the time since it was made; None once a job has ended
        without an image, or while nothing predicts it."""
        if self.status == "done":
            return 0.0
        if self.terminal or self.eta_s is None or self.eta_at is None:
            return None
        return max(0.0, self.eta_s - ((now or time.time()) - self.eta_at))

    def percent(self, now: float | None = None) -> float:
        """Time-based progress, elapsed / (elapsed + remaining), so decode does not make the bar jump.

        It never goes back: when a new estimate is longer than the last, the ETA grows and the bar
        waits for time to catch up instead of retreating. Reading it changes nothing; an ended job
        keeps the percent it had reached (100 once done).
        """
        if self.status == "done":
            return 100.0
        if self.terminal:
            return self.progress_floor
        return percent(self.elapsed_s(now), self.remaining_s(now), self.progress_floor)

    def set_eta(self, remaining: float | None, now: float) -> None:
        """A new estimate of the time left, made at `now`. What the old estimate showed until now stays
        the floor, so a longer new estimate makes the bar wait rather than go back below anything a
        page or feed has drawn (reading a snapshot never moves it; this is the only place)."""
        self.progress_floor = self.percent(now)
        self.eta_s, self.eta_at = remaining, now

    def place(self, placement: Placement, now: float, *, name_device: bool) -> None:
        """Where and when the plan (planner.py) has this queued job start, and so when it ends."""
        self.planned_device = placement.device if name_device else None
        self.predicted_total_s = placement.total_s
        start, total = placement.start_s, placement.total_s
        self.predicted_start_at = None if start is None else now + start
        self.eta_s, self.eta_at = (None if start is None or total is None else start + total), now

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        queued = self.status == "queued"
        return {
            "id": self.id,
            "status": self.status,
            "params": self.params.to_dict(),
            "model": self.model,
            "device": self.device,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "position": self.position if queued else None,
            "phase": self.phase,
            "step": self.step,
            "total": self.params.steps,
            "step_s": self.step_s[-1] if self.step_s else None,
            "elapsed_s": seconds(self.elapsed_s(now)),
            "eta_s": seconds(self.remaining_s(now)),
            "percent": round(self.percent(now), 1),
            "images": [image_url(name) for name in self.images],
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "error": self.error,
            "planned_device": self.planned_device if queued else None,
            "predicted_start_s": (
                None
                if not queued or self.predicted_start_at is None
                else seconds(max(0.0, self.predicted_start_at - now))
            ),
            "predicted_total_s": seconds(self.predicted_total_s) if queued or not self.terminal else None,
            "preview": self.preview if self.status == "running" else None,
            "loading": self.loading if self.phase == "loading" else None,
            "model_loading": self.model_loading if queued else None,
            "pruned_at": self.pruned_at,
            "frames": list(self.frames),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobState:
        return cls(
            id=row["id"],
            params=JobParams.from_dict(row),
            status=row["status"],
            model=row["model"],
            created_at=row["created_at"],
            device=row["device"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            images=list(row["images"]),
            error=row["error"],
            step=row["steps"] if row["status"] == "done" else 0,
            pruned_at=row.get("pruned_at"),
        )


def image_url(name: str) -> str:
    return f"/images/{name}"


def seconds(value: float | None) -> float | None:
    """Seconds as events carry them: milliseconds are plenty, and None stays None ("not known")."""
    return None if value is None else round(value, 3)


def parse_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def job_record(row: dict[str, Any]) -> JobRecord:
    """A stored job (with its `step_s` and `phases` attached) as the ETA engine learns from it."""
    return JobRecord(
        model=row["model"],
        device=row["device"],
        dtype=row["dtype"] or "",
        width=row["width"],
        height=row["height"],
        batch=row["num_images"],
        step_s=tuple(row["step_s"]),
        phases=row["phases"],
        warm_up=bool(row["warm_up"]),
        first_of_size=bool(row.get("first_of_size")),
        gpu_util=row["gpu_util_start"],
    )
