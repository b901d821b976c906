"""The Recorder: writes what a finished job and a model load leave behind, and feeds the ETA engine."""

from __future__ import annotations

import logging
import secrets
import time

from ..db import JobStore
from ..estimate import accuracy_points
from ..eta import EtaModel, JobRecord, Key
from ..messages import Outcome
from .state import JobState

logger = logging.getLogger(__name__)


class Recorder:
    def __init__(self, store: JobStore, eta: EtaModel) -> None:
        self._store = store
        self._eta = eta

    async def finished(
        self,
        state: JobState,
        status: str,
        finished_at: float,
        key: Key | None,
        *,
        error: str | None,
        outcome: Outcome | None,
    ) -> None:
        """One write for the job's end (row, timings, ETA accuracy), then what the engine learns."""
        actual = finished_at - state.started_at if state.started_at is not None else None
        points = None
        if status == "done" and state.live is not None and actual is not None:
            points = accuracy_points(state.live.history, actual)
        await self._store.finish_job(
            state.id,
            status=status,
            finished_at=finished_at,
            error=error,
            images=state.images,
            step_s=state.step_s,
            phases=state.phases,
            warm_up=outcome.warm_up if outcome else None,
            first_of_size=outcome.first_of_size if outcome else None,
            gpu_util_mean=outcome.gpu_util_mean if outcome else None,
            gpu_mem_peak_mb=outcome.gpu_mem_peak_mb if outcome else None,
            eta_points=points,
            actual_total_s=actual,
        )
        if status == "done" and outcome is not None and key is not None:
            model, device, dtype = key
            self._eta.add(
                JobRecord(
                    model=model,
                    device=device,
                    dtype=dtype,
                    width=state.params.width,
                    height=state.params.height,
                    batch=state.params.num_images,
                    step_s=tuple(state.step_s),
                    phases=dict(state.phases),
                    warm_up=bool(outcome.warm_up),
                    first_of_size=outcome.first_of_size,
                    gpu_util=state.live.gpu_util if state.live else None,
                )
            )

    async def model_loaded(self, key: Key, timings: dict[str, float]) -> None:
        if not timings:
            return
        await self._store.record_model_load(secrets.token_hex(8), time.time(), *key, timings)
        self._eta.add_load(key, sum(timings.values()))
        logger.info(
            "model %s loaded on %s in %.2f s: %s",
            key[0],
            key[1],
            sum(timings.values()),
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
