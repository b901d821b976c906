"""What a worker tells the service while it runs a job, and what it hands back: typed, plain data.

The worker (torch side) imports this without Starlette; the service turns each message into the
event of the same kind (DESIGN.md "Events").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


class _Fields:
    """The message's fields, as its event's data."""

    def data(self) -> dict[str, Any]:
        fields: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return fields


@dataclass(frozen=True)
class LoadProgress(_Fields):
    """A model component starts loading: `index` of `count`."""

    kind: ClassVar[str] = "loading"
    component: str
    index: int
    count: int


@dataclass(frozen=True)
class PhaseStarted(_Fields):
    kind: ClassVar[str] = "phase"
    phase: str  # loading, encoding, denoising, decoding, saving


@dataclass(frozen=True)
class StepDone(_Fields):
    """A denoising step the device has finished, timed on the device."""

    kind: ClassVar[str] = "step"
    step: int
    total: int
    step_s: float


@dataclass(frozen=True)
class PreviewReady(_Fields):
    kind: ClassVar[str] = "preview"
    step: int
    url: str  # a small data URL
    width: int
    height: int


Message = LoadProgress | PhaseStarted | StepDone | PreviewReady
Emit = Callable[[Message], None]


@dataclass
class Outcome:
    """A finished job: its images, device timings and GPU readings."""

    images: list[str]
    step_s: list[float]
    phases: dict[str, float]
    warm_up: bool
    first_of_size: bool = False  # no job of its size had run on the device since the model loaded
    gpu_util_mean: float | None = None
    gpu_mem_peak_mb: float | None = None
    load_timings: dict[str, float] = field(default_factory=dict)  # per component, when this job loaded
