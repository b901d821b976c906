"""The drift scenario of bench/eta_accuracy.py: a real competing load during part of the run, and how
the ETAs fare before, during and after it.

The load is another process multiplying matrices on one core (NumPy, one BLAS thread, pinned where
the platform allows), as a CPU hog or a second tenant would. It starts once job CHANGES[0] − 1 has
ended and stops once job CHANGES[1] − 1 has: jobs 31–45 of 60 run beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# The first job run beside the load, and the first one run without it again (1-based).
CHANGES = (31, 46)
WINDOWS = (
    ("before", 2, CHANGES[0] - 1),
    ("during", CHANGES[0], CHANGES[1] - 1),
    ("after", CHANGES[1], 10**9),
)
RECOVERED_BELOW = 10.0  # % error at 0 %: the prediction has caught up with the change
RECOVERY_GOAL = 3  # jobs after a change until the error at 0 % is under RECOVERED_BELOW again
SHOWN_AFTER_CHANGE = 6  # jobs listed after each change

HOG = """
import os, sys
import numpy as np
core = int(sys.argv[1])
if core >= 0 and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {core})
a = np.random.default_rng(0).random((512, 512))
while True:
    a = (a @ a) / 512.0
"""


class Hog:
    """One process doing matrix products on one core until stopped."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def core(self) -> int:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return cores[-1] if cores else -1

    def start(self) -> None:
        if self.process is None:
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            self.process = subprocess.Popen([sys.executable, "-c", HOG, str(self.core)], env=env)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


def schedule(hog: Hog, say: Callable[[str], None]) -> Callable[[int], None]:
    """What runs after job `number` ends: start the load before CHANGES[0], stop it before CHANGES[1]."""

    def after(number: int) -> None:
        if number == CHANGES[0] - 1:
            hog.start()
            say(
                f"-- competing load started on core {hog.core}:"
                f" jobs {CHANGES[0]}–{CHANGES[1] - 1} run beside it"
            )
        elif number == CHANGES[1] - 1:
            hog.stop()
            say("-- competing load stopped")

    return after


@dataclass(frozen=True)
class Recovery:
    change: int  # the first job after the change
    errors: list[float | None]  # ours at 0 %, from that job on
    jobs: int | None  # jobs at or over RECOVERED_BELOW before the first under it; None: never

    @property
    def met(self) -> bool:
        return self.jobs is not None and self.jobs <= RECOVERY_GOAL


def recovery(errors_at_0: Sequence[float | None], change: int) -> Recovery:
    """`errors_at_0`: ours at 0 % per job, index 0 = job 1."""
    after = list(errors_at_0[change - 1 :])
    jobs = next((i for i, e in enumerate(after) if e is not None and e < RECOVERED_BELOW), None)
    return Recovery(change, after[:SHOWN_AFTER_CHANGE], jobs)
