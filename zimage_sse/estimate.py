"""A running job's estimate: the prior blended with the steps observed so far, phase by phase, and the
record of how accurate each estimate was (DESIGN.md "ETA model")."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .eta import (
    ACCURACY_POINTS,
    DECODE_PER_STEP,
    PRIOR_TOLERANCE,
    RECENT_STEPS,
    Prediction,
    size_label,
    steady,
)


@dataclass
class LiveEstimate:
    """One running job's estimate, updated on each phase and step event (all times wall-clock)."""

    prior: Prediction | None
    steps: int
    started_at: float
    gpu_util: float | None = None  # at job start, learned with the job's timings
    phase: str | None = None
    phase_at: float = 0.0
    step_s: list[float] = field(default_factory=list)
    last_step_at: float | None = None
    warmup_spent: float = 0.0
    # (elapsed, predicted total) each time the estimate was made, for the accuracy record.
    history: list[tuple[float, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.record(self.started_at)

    def on_phase(self, phase: str, now: float) -> None:
        if self.phase == "encoding":
            self._spend_warmup((now - self.phase_at) - (self.prior.encode_s if self.prior else 0.0))
        self.phase, self.phase_at = phase, now
        if phase == "denoising":
            self.last_step_at = now
        self.record(now)

    def on_step(self, seconds: float, now: float) -> None:
        if not self.step_s and self.prior is not None:
            self._spend_warmup(seconds - self.prior.step_s)
        self.step_s.append(seconds)
        self.last_step_at = now
        self.record(now)

    def _spend_warmup(self, overrun: float) -> None:
        """A warm-up job pays its extra in the encode, the first step and the decode: what has shown up
        as an overrun so far is no longer ahead of it."""
        self.warmup_spent += max(0.0, overrun)

    @property
    def warmup_left(self) -> float:
        return max(0.0, (self.prior.warmup_s if self.prior else 0.0) - self.warmup_spent)

    def record(self, now: float) -> float | None:
        remaining = self.remaining(now)
        elapsed = now - self.started_at
        self.history.append((elapsed, None if remaining is None else elapsed + remaining))
        return remaining

    def step_estimate(self) -> float | None:
        observed = steady(self.step_s) if len(self.step_s) > 1 else []
        prior = self.prior.step_s if self.prior else None
        if not observed:
            return prior
        median = statistics.median(observed[-RECENT_STEPS:])
        if self.prior is None or prior is None:
            return median
        # Every observed step adds weight; only the recent ones set the value (contention changes).
        # Steps within a job vary by about 1.5 % (shared/data/h200-step-profile.json; 1.4 % on the demo
        # model), so once two steady steps agree with each other and not with the prior, the prior
        # was wrong for this run (an unseen size, contention): its confidence fades with the gap.
        confidence = self.prior.confidence
        if len(observed) >= 2:
            gap = abs(median - prior) / prior
            confidence /= 1.0 + (gap / PRIOR_TOLERANCE) ** 2
        weight = len(observed) / (len(observed) + confidence)
        return weight * median + (1 - weight) * prior

    def remaining(self, now: float) -> float | None:
        step = self.step_estimate()
        if step is None:
            return None
        prior = self.prior
        # What the observed steps say about this run's speed carries over to decoding and saving.
        factor = step / prior.step_s if prior and prior.step_s > 0 else 1.0
        decode = prior.decode_s * factor if prior else step * DECODE_PER_STEP
        save = prior.save_s * factor if prior else 0.0
        done = len(self.step_s)
        in_phase = now - self.phase_at
        warm = self.warmup_left
        if self.phase in (None, "loading", "encoding"):
            encode = prior.encode_s if prior else 0.0
            rest = self.steps * step + decode + save
            if self.phase is None:
                return None if prior is None or prior.load_s is None else prior.load_s + encode + warm + rest
            if self.phase == "loading":
                load = prior.load_s if prior else None
                return None if load is None else max(0.0, load - in_phase) + encode + warm + rest
            # An encode running over its prior is spending the warm-up extra, if there is one.
            return max(0.0, encode + warm - in_phase) + rest
        if self.phase == "denoising":
            if done >= self.steps:
                return decode + warm + save
            since = now - (self.last_step_at or now)
            if done == 0:
                # The first step may spend what is left of the warm-up; the rest lands on the decode.
                return max(0.0, step + warm - since) + (self.steps - 1) * step + decode + save
            return max(0.0, step - since) + (self.steps - done - 1) * step + decode + warm + save
        if self.phase == "decoding":
            return max(0.0, decode + warm - in_phase) + save
        return max(0.0, save - in_phase)


def accuracy_points(
    history: Sequence[tuple[float, float | None]], actual: float
) -> dict[float, float | None]:
    """The predicted total at 0 %, 10 %, 25 % and 50 % of the job's actual time: the latest
    prediction made at or before each point (None where there was none yet)."""
    points: dict[float, float | None] = {}
    for point in ACCURACY_POINTS:
        made = [total for elapsed, total in history if elapsed <= point * actual + 1e-9]
        points[point] = made[-1] if made else None
    return points


def accuracy_report(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean absolute percentage error of the predicted total at each point, overall and by size.

    Each row: point, predicted_total_s (None: no estimate yet), actual_total_s, width, height,
    num_images. A point's `jobs` counts the jobs with an estimate there, `none` those without.
    """
    groups: dict[str, dict[float, list[float | None]]] = {}
    for row in rows:
        size = size_label(row["width"], row["height"], row["num_images"])
        actual = float(row["actual_total_s"])
        predicted = row["predicted_total_s"]
        error = None if predicted is None or actual <= 0 else abs(float(predicted) - actual) / actual
        point = float(row["point"])
        for name in ("overall", size):
            groups.setdefault(name, {}).setdefault(point, []).append(error)

    def summary(by_point: dict[float, list[float | None]]) -> dict[str, dict[str, float | int | None]]:
        result: dict[str, dict[str, float | int | None]] = {}
        for point in ACCURACY_POINTS:
            errors = by_point.get(point, [])
            known = [e for e in errors if e is not None]
            result[f"{round(point * 100)}%"] = {
                "mape_percent": round(100 * statistics.fmean(known), 2) if known else None,
                "jobs": len(known),
                "none": len(errors) - len(known),
            }
        return result

    overall = groups.pop("overall", {})
    return {
        "points": [f"{round(p * 100)}%" for p in ACCURACY_POINTS],
        "overall": summary(overall),
        "by_size": {size: summary(by_point) for size, by_point in sorted(groups.items())},
    }
