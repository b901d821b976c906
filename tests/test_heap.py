"""zimage_sse/heap.py without a model: jobs that overlap (one per device) and a collection already paid."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from zimage_sse import heap


@pytest.fixture
def full_collections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every full collection from here on (one entry each), with any job's deferral counted as slow."""
    monkeypatch.setattr(heap, "DEFER_FROM_S", 0.0)
    seen: list[int] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(watch)
    yield seen
    gc.callbacks.remove(watch)


def test_overlapping_jobs_put_the_collector_back_only_when_the_last_ends(full_collections: list[int]) -> None:
    before = gc.get_threshold()
    first, second = heap.deferred_full_collections(), heap.deferred_full_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # jobs on two devices need not end in the order they began
    still_deferred = gc.get_threshold()
    heap.collect_between_jobs()  # the other job still runs: not yet
    collected_meanwhile = len(full_collections)
    second.__exit__(None, None, None)

    assert still_deferred[:2] == before[:2] and still_deferred[2] > 10**9
    assert collected_meanwhile == 0
    assert gc.get_threshold() == before
    heap.collect_between_jobs()
    assert len(full_collections) == 1


def test_a_full_collection_after_the_job_pays_what_it_owed(full_collections: list[int]) -> None:
    with heap.deferred_full_collections():
        pass
    gc.collect()  # as the worker frees memory after a failed job
    heap.collect_between_jobs()

    assert len(full_collections) == 1
