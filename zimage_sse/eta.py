"""A simple live ETA: remaining steps × recent step time, plus an estimate of decode and save.

The learned engine (priors from history, a cost model across sizes) replaces this in its own issue;
this one is honest about what it does not know: no estimate until a step has been timed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def recent_step_time(step_s: list[float], window: int = 4) -> float | None:
    """Median of the last few steps; the first step (warm-up, see DESIGN.md "Timing truth") only
    counts while it is the only one we have."""
    if not step_s:
        return None
    usable = step_s[1:] if len(step_s) > 1 else step_s
    return statistics.median(usable[-window:])


@dataclass
class FinishTimes:
    """Seconds for decoding and saving per megapixel, from the jobs this process has finished."""

    per_mpx: dict[str, float] = field(default_factory=dict)

    def learn(self, phase: str, seconds: float, pixels: int) -> None:
        if pixels > 0:
            self.per_mpx[phase] = seconds / (pixels / 1e6)

    def estimate(self, pixels: int, step_s: float) -> float:
        known = sum(self.per_mpx.get(p, 0.0) for p in ("decoding", "saving")) * pixels / 1e6
        if "decoding" in self.per_mpx:
            return known
        # Nothing finished yet: on the H200 profile decode costs 0.5-0.6 of a step
        # (shared/data/h200-step-profile.json: 86.7 ms vs 143.9 ms at 1024²); assume one step.
        return step_s + known


def remaining_seconds(
    step_s: list[float], total_steps: int, pixels: int, finish: FinishTimes
) -> float | None:
    per_step = recent_step_time(step_s)
    if per_step is None:
        return None
    return per_step * (total_steps - len(step_s)) + finish.estimate(pixels, per_step)
