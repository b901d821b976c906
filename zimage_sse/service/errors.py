"""What the job service refuses with: named, so the routes answer each the same way everywhere."""

from __future__ import annotations


class JobNotFound(Exception):
    pass


class JobFinished(Exception):
    """The job has already ended, so it cannot be cancelled."""


class ShuttingDown(Exception):
    """The server is shutting down and takes no new jobs; it keeps the queue for its restart."""


class QueueFull(Exception):
    """The queue holds `limit` jobs already. `next_slot_s`: predicted seconds until one starts (and a
    place frees up); `drained_s`: until the last queued job has run. None where nothing predicts it."""

    def __init__(self, limit: int, next_slot_s: float | None, drained_s: float | None) -> None:
        super().__init__(f"the queue is full ({limit} jobs waiting)")
        self.limit, self.next_slot_s, self.drained_s = limit, next_slot_s, drained_s
