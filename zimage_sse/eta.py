"""The ETA engine: priors learned from history, a cost model across sizes, and live blending.

DESIGN.md "ETA model". Per (model, device, dtype) it keeps the step and phase times of the newest
`HISTORY_PER_SIZE` finished jobs of each size (all the history there is, for most) and predicts a new
job's phases before it starts:

- a size seen before: robust medians of that size's steady-state steps and phases;
- a size never seen: step time from a cost model `a + b·T + c·T²` in image tokens
  T = (W/16)·(H/16)·batch fitted on the per-size medians (the attention term shows above 2 MP in
  shared/data/h200-step-profile.json), decode and save linear in pixels; with too few sizes to fit,
  the nearest known size scaled by T; with no history at all, nothing ("estimating").
- the first generation after a model load (warm-up, about 2.2 s extra on the H200) is learned and
  predicted apart, and never enters the steady-state figures.
- GPU load (utilisation at job start, when pynvml can read it) adjusts step time through the
  relation measured between load and the step time's deviation from the cost model.

While a job runs, `LiveEstimate` (estimate.py) blends the prior step time with the observed steps (first step
excluded, median of recent steps so one slow step does not swing it), the observations gaining
weight as they accumulate, and scales the rest of the job by what it has learned.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .curves import Curve, fit_curve
from .progress import median as _median

Key = tuple[str, str, str]  # model, device, dtype
Size = tuple[int, int, int]  # width, height, batch

ACCURACY_POINTS = (0.0, 0.10, 0.25, 0.50)
# Jobs of one size (and as many warm-up jobs of it) learned from: the newest ones. The engine refits on
# the event loop after every job, before the next one starts: over all of 10,000 jobs that took 33-37
# ms on this project's CPU, 0.3-0.9 ms with this window (one to three sizes). A size's median over 100
# jobs of 8 steps is as steady as over any more, and a device that gets faster (a driver, a new
# torch) is learned within about 50 jobs of each size, not after as many jobs as came before.
HISTORY_PER_SIZE = 100
# How many observed steps the prior counts as, by how it was made (a judgement, tuned on the
# demo model with bench/eta_accuracy.py): an exact size is trusted most.
CONFIDENCE = {"size": 6.0, "cost-model": 3.0, "scaled": 1.5}
RECENT_STEPS = 8
# Decode when nothing is known about it: about 0.6 of a step at 1024² on the H200
# (86.7 ms vs 143.9 ms, shared/data/h200-step-profile.json).
DECODE_PER_STEP = 0.6
MIN_LOAD_SAMPLES = 5
# A prior this far (relative) from two or more observed steps has lost half of its confidence.
PRIOR_TOLERANCE = 0.10


def tokens(width: int, height: int, batch: int) -> int:
    return (width // 16) * (height // 16) * batch


def size_label(width: int, height: int, batch: int) -> str:
    """768x768, or 768x768x2 for a batch of two: how reports and the accuracy record name a size."""
    return f"{width}x{height}" + (f"x{batch}" if batch != 1 else "")


def steady(step_s: Sequence[float]) -> list[float]:
    """Step times without the first step, which carries set-up costs (DESIGN.md "Timing truth")."""
    return list(step_s[1:]) if len(step_s) > 1 else list(step_s)


@dataclass(frozen=True)
class JobRecord:
    """One finished job's timings, as the ETA engine learns from them."""

    model: str
    device: str
    dtype: str
    width: int
    height: int
    batch: int
    step_s: tuple[float, ...]
    phases: Mapping[str, float]
    warm_up: bool = False
    gpu_util: float | None = None

    @property
    def key(self) -> Key:
        return (self.model, self.device, self.dtype)

    @property
    def size(self) -> Size:
        return (self.width, self.height, self.batch)

    @property
    def tokens(self) -> int:
        return tokens(self.width, self.height, self.batch)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.batch

    @property
    def step_median(self) -> float | None:
        values = steady(self.step_s)
        return statistics.median(values) if values else None


@dataclass(frozen=True)
class Prediction:
    """A job's predicted phases in seconds; `load_s` is None when a load is needed but never timed."""

    steps: int
    step_s: float
    encode_s: float
    decode_s: float
    save_s: float
    load_s: float | None = 0.0
    warmup_s: float = 0.0
    source: str = "size"

    @property
    def confidence(self) -> float:
        return CONFIDENCE.get(self.source, 1.0)

    @property
    def total_s(self) -> float | None:
        if self.load_s is None:
            return None
        return (
            self.load_s
            + self.warmup_s
            + self.encode_s
            + self.steps * self.step_s
            + self.decode_s
            + self.save_s
        )


@dataclass
class _Fitted:
    """What one (model, device, dtype) has learned; rebuilt when a job is added."""

    step_by_size: dict[Size, float]
    phase_by_size: dict[str, dict[Size, float]]
    step_curve: Curve | None
    phase_curves: dict[str, Curve | None]
    encode_s: float | None
    load_s: float | None
    warmup_s: float
    load_relation: Curve | None
    decode_per_step: float | None


class EtaModel:
    def __init__(self, records: Iterable[JobRecord] = ()) -> None:
        # Per key, the newest jobs of each size, warm-up ones apart; each group oldest first.
        self._records: dict[Key, dict[tuple[Size, bool], deque[JobRecord]]] = {}
        self._fitted: dict[Key, _Fitted] = {}
        self._loads: dict[Key, list[float]] = {}
        for record in records:
            self.add(record)

    def add(self, record: JobRecord) -> None:
        groups = self._records.setdefault(record.key, {})
        group = groups.setdefault((record.size, record.warm_up), deque(maxlen=HISTORY_PER_SIZE))
        group.append(record)
        self._fitted.pop(record.key, None)

    def add_load(self, key: Key, seconds: float) -> None:
        """A whole-model load, timed component by component (a preload as well as a job's own)."""
        self._loads.setdefault(key, []).append(seconds)
        self._fitted.pop(key, None)

    def load_estimate(self, key: Key) -> float | None:
        loads = self._loads.get(key)
        if loads:
            return statistics.median(loads)
        return self._fit(key).load_s if key in self._records else None

    def records(self, key: Key) -> list[JobRecord]:
        """The jobs the engine learns from for `key`, grouped by size."""
        return [record for group in self._records.get(key, {}).values() for record in group]

    def step_curve(self, key: Key) -> Curve | None:
        return self._fit(key).step_curve if key in self._records else None

    def predict(
        self,
        key: Key,
        width: int,
        height: int,
        batch: int,
        steps: int,
        *,
        loaded: bool = True,
        warm_up: bool = False,
        gpu_util: float | None = None,
    ) -> Prediction | None:
        if key not in self._records:
            return None
        fitted = self._fit(key)
        size = (width, height, batch)
        step, source = self._step(fitted, size)
        if step is None:
            return None
        if gpu_util is not None and fitted.load_relation is not None:
            step *= max(0.5, fitted.load_relation(gpu_util))
        return Prediction(
            steps=steps,
            step_s=step,
            encode_s=fitted.encode_s or 0.0,
            decode_s=self._phase(fitted, "decoding", size, self._decode_fallback(fitted, step)),
            save_s=self._phase(fitted, "saving", size, 0.0),
            load_s=0.0 if loaded else self.load_estimate(key),
            warmup_s=fitted.warmup_s if warm_up else 0.0,
            source=source,
        )

    # Curves are per image: a batch of n costs n times one image (the H200 profile: batch 2 at 1024²
    # is 1.96× one image; on 2 CPU cores 2.0×), while attention grows with each image's own tokens.

    def _step(self, fitted: _Fitted, size: Size) -> tuple[float | None, str]:
        if size in fitted.step_by_size:
            return fitted.step_by_size[size], "size"
        width, height, batch = size
        if fitted.step_curve is not None:
            return batch * max(1e-6, fitted.step_curve(tokens(width, height, 1))), "cost-model"
        nearest = _nearest(fitted.step_by_size, tokens(width, height, 1), lambda s: tokens(s[0], s[1], 1))
        if nearest is None:
            return None, "none"
        return fitted.step_by_size[nearest] * tokens(*size) / tokens(*nearest), "scaled"

    @staticmethod
    def _phase(fitted: _Fitted, phase: str, size: Size, fallback: float) -> float:
        known = fitted.phase_by_size.get(phase, {})
        if size in known:
            return known[size]
        width, height, batch = size
        curve = fitted.phase_curves.get(phase)
        if curve is not None:
            return batch * max(0.0, curve(width * height))
        nearest = _nearest(known, width * height, lambda s: s[0] * s[1])
        if nearest is None:
            return fallback
        return known[nearest] * width * height * batch / (nearest[0] * nearest[1] * nearest[2])

    @staticmethod
    def _decode_fallback(fitted: _Fitted, step: float) -> float:
        return step * (fitted.decode_per_step or DECODE_PER_STEP)

    def _fit(self, key: Key) -> _Fitted:
        fitted = self._fitted.get(key)
        if fitted is None:
            fitted = self._fitted[key] = self._build(self.records(key))
        return fitted

    def _build(self, records: list[JobRecord]) -> _Fitted:
        steady_jobs = [r for r in records if not r.warm_up]
        by_size: dict[Size, list[JobRecord]] = {}
        for record in steady_jobs:
            by_size.setdefault(record.size, []).append(record)
        step_by_size: dict[Size, float] = {}
        for size, group in by_size.items():
            median = _median(s for r in group for s in steady(r.step_s))
            if median is not None:
                step_by_size[size] = median
        # A size seen only in a warm-up job: its steps after the first are already steady.
        for record in records:
            if record.warm_up and record.size not in step_by_size and len(record.step_s) > 1:
                step_by_size[record.size] = statistics.median(steady(record.step_s))
        phase_by_size: dict[str, dict[Size, float]] = {}
        phase_curves: dict[str, Curve | None] = {}
        for phase in ("decoding", "saving"):
            per_size = {}
            for size, group in by_size.items():
                median = _median(r.phases[phase] for r in group if phase in r.phases)
                if median is not None:
                    per_size[size] = median
            phase_by_size[phase] = per_size
            phase_curves[phase] = fit_curve(
                [(s[0] * s[1], v / s[2], len(by_size[s])) for s, v in per_size.items()], quadratic=False
            )
        step_curve = fit_curve(
            [(tokens(s[0], s[1], 1), v / s[2], len(by_size.get(s, ())) or 1) for s, v in step_by_size.items()]
        )
        # Decode in steps, for sizes nothing is known about: from this device's own jobs, warm-up ones
        # too when there is nothing else (their steps after the first are steady).
        ratios = [
            (r.warm_up, r.phases["decoding"] / r.step_median)
            for r in records
            if "decoding" in r.phases and r.step_median and len(r.step_s) > 1
        ]
        steady_ratios = [ratio for warm, ratio in ratios if not warm]
        fitted = _Fitted(
            step_by_size=step_by_size,
            phase_by_size=phase_by_size,
            step_curve=step_curve,
            phase_curves=phase_curves,
            encode_s=_median(r.phases["encoding"] for r in steady_jobs if "encoding" in r.phases)
            or _median(r.phases["encoding"] for r in records if "encoding" in r.phases),
            load_s=_median(r.phases["loading"] for r in records if "loading" in r.phases),
            warmup_s=0.0,
            load_relation=None,
            decode_per_step=_median(steady_ratios or [ratio for _, ratio in ratios]),
        )
        fitted.warmup_s = self._warmup(fitted, [r for r in records if r.warm_up])
        fitted.load_relation = self._load_relation(fitted, steady_jobs)
        return fitted

    def _warmup(self, fitted: _Fitted, warm_jobs: list[JobRecord]) -> float:
        """Median extra time of a first generation over what the same job costs once warm."""
        extras = []
        for record in warm_jobs:
            step, _ = self._step(fitted, record.size)
            if step is None or fitted.encode_s is None:
                continue
            decode = self._phase(fitted, "decoding", record.size, self._decode_fallback(fitted, step))
            actual = (
                record.phases.get("encoding", 0.0) + sum(record.step_s) + record.phases.get("decoding", 0.0)
            )
            extras.append(actual - (fitted.encode_s + step * len(record.step_s) + decode))
        return max(0.0, _median(extras) or 0.0)

    def _load_relation(self, fitted: _Fitted, jobs: list[JobRecord]) -> Curve | None:
        """Step time ÷ the unloaded expectation, as a line in GPU utilisation at job start."""
        points = []
        for record in jobs:
            median = record.step_median
            if record.gpu_util is None or median is None:
                continue
            expected, _ = self._step(fitted, record.size)
            if expected:
                points.append((record.gpu_util, median / expected, 1.0))
        if len(points) < MIN_LOAD_SAMPLES or max(p[0] for p in points) - min(p[0] for p in points) < 10:
            return None
        return fit_curve(points, quadratic=False)


def _nearest(known: Mapping[Size, float], target: int, measure: Callable[[Size], int]) -> Size | None:
    if not known:
        return None
    return min(known, key=lambda s: abs(math.log(measure(s) / target)))
