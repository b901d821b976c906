"""What the ETA engine learns from and what it predicts: a finished job's timings (JobRecord) and a
job's predicted phases (Prediction), with the size arithmetic both use. Pure data, no fitting."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Key = tuple[str, str, str]  # model, device, dtype
Size = tuple[int, int, int]  # width, height, batch

# How many observed steps the prior counts as, by how it was made (a judgement, tuned on the
# demo model with bench/eta_accuracy.py): an exact size is trusted most.
CONFIDENCE = {"size": 6.0, "cost-model": 3.0, "scaled": 1.5}


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
    # The first job of its size on the device since the model was loaded (its decode may be a one-off).
    first_of_size: bool = False

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

    @functools.cached_property
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
    # The device's speed the phases were scaled by (1.0: its usual pace; speed.py).
    speed: float = 1.0

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
