"""When CPython's cyclic garbage collector may stop the server, so that it never stops a job's stream.

A full collection walks every tracked object that is not frozen, holding the GIL, so the event loop
and every stream wait for it. Two kinds of objects made those pauses long (bench/RESULTS.md "Fan-out"):

- torch, diffusers, transformers and a loaded model's modules: about 420,000 objects, 190 ms a pass
  on our 2-core machine. They live as long as the process or the model, so they are frozen (left out
  of every collection) once the model is loaded and again after its first run, which imports and
  caches more (torch's operator overloads, diffusers' lazy modules).
- each open stream's objects (about 300: coroutines of the middleware chain, sse-starlette's task
  group): 1,000 open streams made a full pass take 160 ms. CPython starts one whenever the objects
  promoted since the last have grown by a quarter, which happened about once a job with 1,000
  watchers, at a random step. Automatic full collections are therefore off while a job runs, and the
  worker makes one after each job, once its end has been sent. The young generations are collected
  as always, and an idle server collects as CPython would, so what churning connections leave in
  cycles never waits for longer than a job.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Gen-1 collections before an automatic full one: never reached (about 7,000 allocations make one).
_NEVER = 2**31 - 1


def freeze() -> None:
    """Collect, then leave everything alive now out of later collections (gc.freeze)."""
    gc.collect()
    gc.freeze()


def unfreeze() -> None:
    """Let collections see frozen objects again (a model being unloaded may leave cycles)."""
    gc.unfreeze()


def collect_between_jobs() -> None:
    """The full collection CPython would have made at some point during the job."""
    gc.collect()


@contextmanager
def young_collections_only() -> Iterator[None]:
    """While a job runs, automatic collections stop at the young generations."""
    saved = gc.get_threshold()
    gc.set_threshold(saved[0], saved[1], _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*saved)
