"""GPU load through NVML (pynvml from nvidia-ml-py); absent on machines without an NVIDIA driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    util: float  # percent of time a kernel ran over the last sample period
    mem_used_mb: float
    mem_total_mb: float


class GpuMonitor:
    """Samples one CUDA device's utilisation and memory; every call answers None where NVML is missing."""

    def __init__(self, device: str) -> None:
        self._handle: Any = None
        self._nvml: Any = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int(device.partition(":")[2] or 0)
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as exc:  # no driver, no library, or a device NVML does not know
            logger.info("GPU load is not sampled (%s)", exc)

    def sample(self) -> GpuSample | None:
        if self._handle is None:
            return None
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except Exception:
            logger.exception("reading GPU load failed")
            return None
        return GpuSample(float(util.gpu), memory.used / 2**20, memory.total / 2**20)
