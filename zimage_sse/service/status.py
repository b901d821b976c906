"""The model's status on one device: what GET /api/status and `status` events say about it."""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class ModelState(enum.StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # the load or a job on the device failed; `error` says why


@dataclass(frozen=True)
class ModelStatus:
    model: str
    device: str
    dtype: str
    state: ModelState = ModelState.UNLOADED
    component: str | None = None  # while loading: the component, its index and the count
    index: int | None = None
    count: int | None = None
    error: str | None = None
    since: float = field(default_factory=time.time)  # when `state` last changed

    def to(self, state: ModelState, **changes: Any) -> ModelStatus:
        """The next status: a new state clears the loading progress and the error unless given."""
        if state != self.state:
            changes.setdefault("since", time.time())
        if state != ModelState.LOADING:
            changes = {"component": None, "index": None, "count": None, **changes}
        if state != ModelState.FAILED:
            changes.setdefault("error", None)
        return replace(self, state=state, **changes)

    def to_dict(self, load_estimate_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        """As the API and events carry it, with the expected time left while it loads (None when not
        loading, or when no load was ever timed)."""
        data = asdict(self)
        data["state"] = self.state.value
        eta = None
        if self.state == ModelState.LOADING and load_estimate_s is not None:
            eta = round(max(0.0, load_estimate_s - ((now or time.time()) - self.since)), 3)
        data["eta_s"] = eta
        return data


def overall(states: list[ModelState]) -> ModelState:
    """One word for the service: ready if any device is, else loading if any is, else failed if all
    have failed, else unloaded."""
    for state in (ModelState.READY, ModelState.LOADING):
        if state in states:
            return state
    if states and all(state == ModelState.FAILED for state in states):
        return ModelState.FAILED
    return ModelState.UNLOADED
