"""The JobQueue: which jobs wait, in what order, and which device runs which.

Storage of the jobs themselves is the JobStore's; the queue holds ids. The embedded backend keeps
them in this process (the store has every queued job too, so a restart rebuilds it); a backend across
machines (PostgreSQL rows with leases) implements the same methods.
"""

from __future__ import annotations

from typing import Protocol


class JobQueue(Protocol):
    def put(self, job_id: str, *, front: bool = False) -> None:
        """Queue a job at the back, or at the front (a job stopped by shutdown runs first)."""

    def claim(self, job_id: str, device: str) -> bool:
        """Take a waiting job for a free device; False if it is no longer waiting (taken, removed)."""

    def ack(self, job_id: str) -> None:
        """The job has left its device (ended, or stopped to be queued again)."""

    def remove(self, job_id: str) -> bool:
        """Take a waiting job out of the queue (cancelled before it started); False if not waiting."""

    def waiting(self) -> list[str]:
        """The waiting jobs, in the order they will be planned."""

    def running(self) -> dict[str, str]:
        """Device → the job it runs."""


class MemoryQueue:
    """The embedded JobQueue."""

    def __init__(self) -> None:
        self._waiting: list[str] = []
        self._running: dict[str, str] = {}  # device → job

    def put(self, job_id: str, *, front: bool = False) -> None:
        if job_id in self._waiting:
            return
        if front:
            # Behind the other jobs put at the front by the same shutdown, in their order.
            self._waiting.insert(0, job_id)
        else:
            self._waiting.append(job_id)

    def claim(self, job_id: str, device: str) -> bool:
        if job_id not in self._waiting or device in self._running:
            return False
        self._waiting.remove(job_id)
        self._running[device] = job_id
        return True

    def ack(self, job_id: str) -> None:
        for device, running in list(self._running.items()):
            if running == job_id:
                del self._running[device]

    def remove(self, job_id: str) -> bool:
        if job_id not in self._waiting:
            return False
        self._waiting.remove(job_id)
        return True

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def running(self) -> dict[str, str]:
        return dict(self._running)
