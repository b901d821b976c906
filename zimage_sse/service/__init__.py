"""The job service and its seams (DESIGN.md "Interfaces"): state, queue, bus, planner, dispatchers."""

from ..messages import Emit, Outcome
from .jobs import (
    MAX_ATTEMPTS,
    SHUTDOWN,
    JobFinished,
    JobNotFound,
    JobService,
    QueueFull,
    ShuttingDown,
)
from .runner import Runner
from .state import JobState, image_url, job_record

__all__ = [
    "MAX_ATTEMPTS",
    "SHUTDOWN",
    "Emit",
    "JobFinished",
    "JobNotFound",
    "JobService",
    "JobState",
    "Outcome",
    "QueueFull",
    "Runner",
    "ShuttingDown",
    "image_url",
    "job_record",
]
