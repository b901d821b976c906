"""When CPython's cyclic garbage collector may stop the server, so that it does not stop a job's stream.

A full collection walks every tracked object that is not frozen, holding the GIL, so the event loop
and every stream wait for it. Two kinds of objects made those pauses long (bench/RESULTS.md "Fan-out"):

- torch, diffusers, transformers and a loaded model's modules: about 420,000 objects, 190 ms a pass
  on our 2-core machine. They live as long as the process or the model, so they are frozen (left out
  of every collection) when the worker starts, once the model is loaded, and again after its first
  run, which imports and caches more (torch's operator overloads, diffusers' lazy modules).
- each open stream's objects (about 300: coroutines of the middleware chain, sse-starlette's task
  group): with 1,000 open streams a full pass took 160 ms. CPython starts one whenever the objects
  promoted since the last have grown by a quarter, which with 1,000 watchers happened about once a
  job, at a random step. So once a full collection has taken `DEFER_FROM_S` or more, the next job
  runs with automatic full collections off, and the worker makes one after it, once its end has been
  sent. Cheap ones are left alone: with few streams open they cost a few milliseconds, and deferring
  them would let what churning connections leave in cycles pile up for a whole job (bench/churn.py).
  The young generations are collected as always.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# A full collection this long is a hitch every open stream shows (a step at 1024² on an H200 is 145 ms).
DEFER_FROM_S = 0.020
# Gen-1 collections before an automatic full one: never reached (about 7,000 allocations make one).
_NEVER = 2**31 - 1


class _FullCollections:
    """How long the last full collection took, whether jobs are deferring them, and whether one is
    owed. Jobs on several devices may overlap: the first to defer sets the threshold, the last to end
    puts it back. `watch` runs inside collections (gc.callbacks), so it never takes the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.began = 0.0
        self.last_s = 0.0
        self.deferring = 0  # jobs running with automatic full collections off
        self.saved = gc.get_threshold()
        self.owed = False

    def watch(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self.began = time.perf_counter()
            return
        self.last_s = time.perf_counter() - self.began
        if not self.deferring:
            self.owed = False  # any full collection once no job defers (after a failure, say) pays it


_full = _FullCollections()
gc.callbacks.append(_full.watch)


def freeze() -> None:
    """Collect, then leave everything alive now out of later collections (gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.collect()  # nearly nothing to walk now: what a full collection costs from here on


def unfreeze() -> None:
    """Let collections see frozen objects again (a model being unloaded may leave cycles)."""
    gc.unfreeze()


@contextmanager
def deferred_full_collections() -> Iterator[None]:
    """Around a job: automatic collections stop at the young generations if a full one is slow."""
    if _full.last_s < DEFER_FROM_S:
        yield
        return
    with _full.lock:
        if not _full.deferring:
            _full.saved = gc.get_threshold()
            gc.set_threshold(_full.saved[0], _full.saved[1], _NEVER)
        _full.deferring += 1
        _full.owed = True
    try:
        yield
    finally:
        with _full.lock:
            _full.deferring -= 1
            if not _full.deferring:
                gc.set_threshold(*_full.saved)


def collect_between_jobs() -> None:
    """The full collection the jobs put off, if it is still owed (its time is measured too)."""
    if _full.owed and not _full.deferring:
        gc.collect()  # `watch` marks it paid
