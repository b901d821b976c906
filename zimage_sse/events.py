"""The event vocabulary shared by the worker, the broadcaster and the streams (see DESIGN.md "Events").

Plain data only: the worker imports this without Starlette, the routes without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

PHASES = ("loading", "encoding", "denoising", "decoding", "saving")
TERMINAL = frozenset({"done", "failed", "cancelled"})
STATUSES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class Event:
    kind: str  # snapshot, queued, phase, step, done, failed, cancelled, queue
    data: dict[str, Any]
    job_id: str | None = None  # None for queue-wide events
    seq: int = 0  # per-job sequence number: the SSE id on a job's stream
    gseq: int = 0  # process-wide sequence number: the SSE id on /api/events
    created: float = field(default_factory=time.monotonic)
    # The event as a JSON feed sends it, keyed by the kind of id (job or global), encoded once for every
    # client that receives it (routes/streams.py `wire`).
    encoded: dict[bool, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL


class Cancelled(Exception):
    """The job was cancelled; raised inside the step callback so no further step or decode runs."""


class JobFailed(Exception):
    """The worker's report of a failed job, with a reason a person can act on. `device_fault`: the
    device is at fault (the model would not load, it ran out of memory, its thread crashed), not the
    job (a full disk, say), so it is shown as failed and other devices take the work meanwhile."""

    def __init__(self, reason: str, *, device_fault: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.device_fault = device_fault
