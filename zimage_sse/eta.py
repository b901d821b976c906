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
- the device's speed now (speed.py): every job's steady step time against its size's shape gives a
  ratio, and the newest ratios say how fast the device runs at the moment, across all sizes. The
  shapes (per-size medians, the cost model) are learned from times divided by the speed each job ran
  at, and every phase predicted is the shape times the speed now, so one job at any size corrects
  the others when another tenant, a CPU hog or a thermal limit changes the pace.
- the first decode at a size after a load can be a one-off (new buffers, kernels picked for the
  shape: 7.0 s against 3.6 s later for 1024² on a 2-core CPU): such decodes are kept out of the
  size's median and their extra is learned apart, as the warm-up is.
- GPU load (utilisation at job start, when pynvml can read it) adjusts step time through the
  relation measured between load and what is left of the step time's deviation once the speed
  around that job is taken out.

While a job runs, `LiveEstimate` (estimate.py) blends the prior step time with the observed steps (first step
excluded, median of recent steps so one slow step does not swing it), the observations gaining
weight as they accumulate, and scales the rest of the job by what it has learned.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .curves import Curve, batch_ratio, fit_curve, per_image_curve
from .curves import nearest as nearest_size
from .progress import median as _median
from .records import CONFIDENCE as CONFIDENCE
from .records import JobRecord as JobRecord
from .records import Key as Key
from .records import Prediction as Prediction
from .records import Size as Size
from .records import size_label as size_label
from .records import steady as steady
from .records import tokens as tokens
from .speed import speeds, spread_over

ACCURACY_POINTS = (0.0, 0.10, 0.25, 0.50)
# Jobs of one size (and as many warm-up jobs of it) learned from: the newest ones. The engine refits on
# the event loop after every job, before the next one starts: over all of 10,000 jobs that took 33-37
# ms on this project's CPU, 0.3-0.9 ms with this window (one to three sizes); with the speed
# (speed.py) 6 ms over 300 jobs of three sizes and 20 ms over 1,000 of ten on a slower day of the same
# machine, where the code before it took 7 and 17 ms. A size's median over 100 jobs of 8 steps is as
# steady as over any more; a change of the device's speed is learned across sizes in two jobs.
HISTORY_PER_SIZE = 100
RECENT_STEPS = 8
# Decode when nothing is known about it: about 0.6 of a step at 1024² on the H200
# (86.7 ms vs 143.9 ms, shared/data/h200-step-profile.json).
DECODE_PER_STEP = 0.6
MIN_LOAD_SAMPLES = 5
# A first decode at a size must be this much (relative) slower than the size's steady decodes, in
# the median of at least FIRST_DECODE_SAMPLES of them, to be predicted as a one-off.
FIRST_DECODE_MARGIN = 0.05
FIRST_DECODE_SAMPLES = 2
# A prior this far (relative) from two or more observed steps has lost half of its confidence.
PRIOR_TOLERANCE = 0.10


@dataclass
class _Fitted:
    """What one (model, device, dtype) has learned; rebuilt when a job is added."""

    step_by_size: dict[Size, float]
    phase_by_size: dict[str, dict[Size, float]]
    step_curve: Curve | None
    phase_curves: dict[str, Curve | None]
    phase_batch: dict[str, dict[int, float]]  # per phase: a batch of n ÷ n single images, by n
    encode_s: float | None
    load_s: float | None
    warmup_s: float
    load_relation: Curve | None
    decode_per_step: float | None
    speed: float = 1.0  # the device's speed now; every shape above is at speed 1.0
    first_decode: float = 0.0  # a first decode at a size takes this much longer (relative)


class EtaModel:
    def __init__(self, records: Iterable[JobRecord] = ()) -> None:
        # Per key, the newest jobs of each size, warm-up ones apart; each group oldest first, each job
        # with its place in the order jobs were added (the speed follows time across sizes).
        self._records: dict[Key, dict[tuple[Size, bool], deque[tuple[int, JobRecord]]]] = {}
        self._added = 0
        self._fitted: dict[Key, _Fitted] = {}
        self._loads: dict[Key, list[float]] = {}
        for record in records:
            self.add(record)

    def add(self, record: JobRecord) -> None:
        groups = self._records.setdefault(record.key, {})
        group = groups.setdefault((record.size, record.warm_up), deque(maxlen=HISTORY_PER_SIZE))
        group.append((self._added, record))
        self._added += 1
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
        """The jobs the engine learns from for `key`, oldest first."""
        added = sorted(item for group in self._records.get(key, {}).values() for item in group)
        return [record for _, record in added]

    def speed(self, key: Key) -> float | None:
        """The device's speed now (1.0: its usual pace), or None with no history."""
        return self._fit(key).speed if key in self._records else None

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
        first_of_size: bool = False,
        gpu_util: float | None = None,
    ) -> Prediction | None:
        """A job's phases on `key` now: the size's shape times the device's speed now.

        `first_of_size`: no job of this size has run on the device since the model was loaded, so
        a learned one-off decode extra applies."""
        if key not in self._records:
            return None
        fitted = self._fit(key)
        size = (width, height, batch)
        shape, source = self._step(fitted, size)
        if shape is None:
            return None
        speed = fitted.speed
        step = shape * speed
        if gpu_util is not None and fitted.load_relation is not None:
            step *= max(0.5, fitted.load_relation(gpu_util))
        decode = self._phase(fitted, "decoding", size, self._decode_fallback(fitted, shape)) * speed
        if first_of_size:
            decode *= 1.0 + fitted.first_decode
        return Prediction(
            steps=steps,
            step_s=step,
            encode_s=(fitted.encode_s or 0.0) * speed,
            decode_s=decode,
            save_s=self._phase(fitted, "saving", size, 0.0) * speed,
            load_s=0.0 if loaded else self.load_estimate(key),
            warmup_s=fitted.warmup_s if warm_up else 0.0,
            source=source,
            speed=speed,
        )

    # Curves are per image: a batch of n costs n times one image (the H200 profile: batch 2 at 1024²
    # is 1.96× one image; on 2 CPU cores 2.0×), while attention grows with each image's own tokens.

    def _step(self, fitted: _Fitted, size: Size) -> tuple[float | None, str]:
        if size in fitted.step_by_size:
            return fitted.step_by_size[size], "size"
        width, height, batch = size
        if fitted.step_curve is not None:
            return batch * max(1e-6, fitted.step_curve(tokens(width, height, 1))), "cost-model"
        nearest = nearest_size(fitted.step_by_size, tokens(width, height, 1), lambda s: tokens(s[0], s[1], 1))
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
            return batch * max(0.0, curve(width * height)) * batch_ratio(fitted.phase_batch[phase], batch)
        nearest = nearest_size(known, width * height, lambda s: s[0] * s[1])
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
        """What `records` (oldest first) teach: shapes at speed 1.0, the speed now, the one-offs."""
        steady_jobs = [r for r in records if not r.warm_up]
        timed = [i for i, r in enumerate(records) if not r.warm_up and r.step_median]
        # GPU load at the start explains part of a job's step time where it has been seen to; the
        # speed is learned from what it leaves unexplained.
        raw: dict[Size, list[float]] = {}
        for i in timed:
            raw.setdefault(records[i].size, []).append(records[i].step_median or 0.0)
        load_relation = self._load_relation(
            [records[i] for i in timed], {size: statistics.median(v) for size, v in raw.items()}
        )

        def explained(record: JobRecord) -> float:
            if load_relation is None or record.gpu_util is None:
                return 1.0
            return max(0.5, load_relation(record.gpu_util))

        found = speeds(
            [(records[i].size, (records[i].step_median or 0.0) / explained(records[i])) for i in timed]
        )
        speed_at = spread_over(len(records), dict(zip(timed, found.local, strict=True)), found.now)
        speed_of = {id(record): speed_at[i] for i, record in enumerate(records)}

        def normal(record: JobRecord, phase: str) -> float:
            return record.phases[phase] / speed_of[id(record)]

        by_size: dict[Size, list[JobRecord]] = {}
        for record in steady_jobs:
            by_size.setdefault(record.size, []).append(record)
        step_by_size = dict(found.shape)
        # A size seen only in a warm-up job: its steps after the first are already steady.
        for record in records:
            if record.warm_up and record.size not in step_by_size and len(record.step_s) > 1:
                step_by_size[record.size] = statistics.median(steady(record.step_s)) / speed_of[id(record)]
        # Decodes: a size's first one since a load apart from its later ones, where there are later ones.
        decodes: dict[Size, float] = {}
        for size, group in by_size.items():
            later = [normal(r, "decoding") for r in group if "decoding" in r.phases and not r.first_of_size]
            if later:
                decodes[size] = statistics.median(later)
        firsts = [
            normal(r, "decoding") / decodes[r.size]
            for r in steady_jobs
            if r.first_of_size and "decoding" in r.phases and decodes.get(r.size)
        ]
        extra = (_median(firsts) or 1.0) - 1.0 if len(firsts) >= FIRST_DECODE_SAMPLES else 0.0
        first_decode = extra if extra > FIRST_DECODE_MARGIN else 0.0
        for size, group in by_size.items():
            if size not in decodes:
                first = _median(normal(r, "decoding") for r in group if "decoding" in r.phases)
                if first is not None:
                    decodes[size] = first / (1.0 + first_decode)
        saves = {
            size: value
            for size, group in by_size.items()
            if (value := _median(normal(r, "saving") for r in group if "saving" in r.phases)) is not None
        }
        phase_by_size = {"decoding": decodes, "saving": saves}
        phase_curves: dict[str, Curve | None] = {}
        phase_batch: dict[str, dict[int, float]] = {}
        for phase, per_size in phase_by_size.items():
            phase_curves[phase], phase_batch[phase] = per_image_curve(
                per_size, {size: len(group) for size, group in by_size.items()}
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
            phase_batch=phase_batch,
            encode_s=_median(normal(r, "encoding") for r in steady_jobs if "encoding" in r.phases)
            or _median(normal(r, "encoding") for r in records if "encoding" in r.phases),
            load_s=_median(r.phases["loading"] for r in records if "loading" in r.phases),
            warmup_s=0.0,
            load_relation=load_relation,
            decode_per_step=_median(steady_ratios or [ratio for _, ratio in ratios]),
            speed=found.now,
            first_decode=first_decode,
        )
        fitted.warmup_s = self._warmup(fitted, [r for r in records if r.warm_up], speed_of)
        return fitted

    def _warmup(self, fitted: _Fitted, warm_jobs: list[JobRecord], speed_of: Mapping[int, float]) -> float:
        """Median extra time of a first generation over what the same job costs once warm (a warm-up
        job is a size's first too, so its decode is expected with that one-off)."""
        extras = []
        for record in warm_jobs:
            step, _ = self._step(fitted, record.size)
            if step is None or fitted.encode_s is None:
                continue
            decode = self._phase(fitted, "decoding", record.size, self._decode_fallback(fitted, step))
            expected = fitted.encode_s + step * len(record.step_s) + decode * (1.0 + fitted.first_decode)
            actual = (
                record.phases.get("encoding", 0.0) + sum(record.step_s) + record.phases.get("decoding", 0.0)
            )
            extras.append(actual - expected * speed_of[id(record)])
        return max(0.0, _median(extras) or 0.0)

    @staticmethod
    def _load_relation(jobs: list[JobRecord], expected: Mapping[Size, float]) -> Curve | None:
        """Step time ÷ its size's median, as a line in GPU utilisation at job start."""
        points = [
            (record.gpu_util, record.step_median / expected[record.size], 1.0)
            for record in jobs
            if record.gpu_util is not None and record.step_median and expected.get(record.size)
        ]
        if len(points) < MIN_LOAD_SAMPLES or max(p[0] for p in points) - min(p[0] for p in points) < 10:
            return None
        return fit_curve(points, quadratic=False)
