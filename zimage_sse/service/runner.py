"""The Runner: one device with the model on it (zimage_sse.worker.Worker), seen without torch."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from ..messages import Emit, Outcome
from ..params import JobParams


class Runner(Protocol):
    """One device: load, run, unload, status. Called from one executor thread of its own."""

    model: str
    device: str

    @property
    def dtype_name(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def warm(self) -> bool: ...

    @property
    def load_timings(self) -> dict[str, float]: ...

    def ran(self, params: JobParams) -> bool: ...

    def gpu_sample(self) -> Any: ...

    def thread_started(self) -> None: ...

    def between_jobs(self) -> None: ...

    def load(self, emit: Emit | None = None) -> Any: ...

    def unload(self) -> None: ...

    def run(self, job_id: str, params: JobParams, emit: Emit, cancel: threading.Event) -> Outcome: ...
