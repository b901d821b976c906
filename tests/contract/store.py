"""The JobStore contract (zimage_sse/db/base.py `JobStore`): a job's life as every backend must keep
it, with the same rows (keys, values and their types) from SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest

from zimage_sse.db import JobStore, ReportFilter

# Opens another store on the database the test's `store` uses (not yet migrated when it is the first).
Opener = Callable[[], Awaitable[JobStore]]


def row(job_id: str, created_at: float, **overrides: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "created_at": created_at,
        "status": "queued",
        "prompt": "a lighthouse",
        "negative_prompt": "",
        "width": 256,
        "height": 256,
        "steps": 2,
        "guidance": 0.0,
        "seed": 1,
        "num_images": 1,
        "model": "tiny",
        **overrides,
    }


class StoreContract:
    """Subclass with an `opener` fixture (Opener) on an empty database of the backend under test, and
    the backend's constraint error as IntegrityError."""

    IntegrityError: ClassVar[type[Exception]]

    @pytest.fixture
    async def store(self, opener: Opener) -> AsyncIterator[JobStore]:
        store = await opener()
        yield store
        await store.close()

    async def test_queued_jobs_come_back_in_the_order_they_were_made(self, store: JobStore) -> None:
        for n, job_id in enumerate(("c", "a", "b")):
            await store.insert_job(row(job_id, 100.0 + n))
        assert [r["id"] for r in await store.queued_jobs()] == ["c", "a", "b"]

    async def test_a_finished_job_is_one_write_with_its_timings(self, store: JobStore) -> None:
        await store.insert_job(row("a", 100.0))
        await store.mark_started("a", 101.0, "cuda:1", "bfloat16", 42.0)
        await store.finish_job(
            "a",
            status="done",
            finished_at=102.0,
            error=None,
            images=["a-0.png"],
            step_s=[0.2, 0.1],
            phases={"encoding": 0.03, "denoising": 0.3},
            warm_up=True,
            gpu_util_mean=50.0,
            gpu_mem_peak_mb=1000.0,
            eta_points={0.0: 1.5, 0.1: None},
            actual_total_s=1.0,
        )
        job = await store.get_job("a")
        assert job is not None
        assert (job["status"], job["device"], job["dtype"], job["images"]) == (
            "done",
            "cuda:1",
            "bfloat16",
            ["a-0.png"],
        )
        assert await store.step_timings("a") == [0.2, 0.1]
        assert await store.phase_timings("a") == {"encoding": 0.03, "denoising": 0.3}
        (history,) = await store.timing_history()
        assert (history["device"], history["step_s"]) == ("cuda:1", [0.2, 0.1])
        assert [r["device"] for r in await store.report_jobs(ReportFilter(device="cuda:1"))] == ["cuda:1"]
        assert await store.report_jobs(ReportFilter(device="cuda:0")) == []

    async def test_jobs_left_running_are_queued_again_then_failed_after_the_attempts(
        self, store: JobStore
    ) -> None:
        await store.insert_job(row("a", 100.0))
        await store.insert_job(row("b", 101.0))
        await store.mark_started("a", 102.0, "cuda:0", "bfloat16")
        await store.mark_started("b", 102.0, "cuda:1", "bfloat16")
        assert await store.recover_interrupted(200.0, 2, "died") == (["a", "b"], [])
        assert [r["id"] for r in await store.queued_jobs()] == ["a", "b"]
        await store.mark_started("a", 201.0, "cuda:0", "bfloat16")
        requeued, failed = await store.recover_interrupted(300.0, 2, "died twice")
        assert (requeued, failed) == ([], ["a"])
        job = await store.get_job("a")
        assert job is not None and (job["status"], job["error"], job["attempts"]) == (
            "failed",
            "died twice",
            2,
        )

    async def test_a_job_stopped_by_shutdown_goes_back_without_using_an_attempt(
        self, store: JobStore
    ) -> None:
        await store.insert_job(row("a", 100.0))
        await store.mark_started("a", 101.0, "cuda:0", "bfloat16")
        await store.requeue("a")
        job = await store.get_job("a")
        assert job is not None and (job["status"], job["started_at"], job["attempts"]) == ("queued", None, 0)

    # -- the rows every backend gives ----------------------------------------------------------------

    async def test_a_job_row_has_the_same_keys_and_types_on_every_backend(self, store: JobStore) -> None:
        await store.insert_job(row("a", 100.0, seed=2**40 + 1, negative_prompt="fog"))
        await store.mark_started("a", 101.0, "cuda:0", "bfloat16", 10.0)
        await store.finish_job(
            "a",
            status="done",
            finished_at=102.0,
            images=["a-0.png"],
            warm_up=False,
            first_of_size=True,
            gpu_util_mean=50.0,
            gpu_mem_peak_mb=900.0,
        )
        job = await store.get_job("a")
        assert job is not None
        assert {name: type(value) for name, value in job.items()} == JOB_TYPES
        assert (job["seed"], job["warm_up"], job["first_of_size"], job["attempts"]) == (2**40 + 1, 0, 1, 1)
        assert [list(r) for r in await store.list_jobs()] == [list(job)]
        assert await store.get_job("missing") is None

    async def test_a_failed_finish_writes_nothing_and_the_job_can_still_end(self, store: JobStore) -> None:
        await store.insert_job(row("a", 100.0))
        await store.mark_started("a", 101.0, "cpu", "float32")
        # SQLite stores NaN as NULL, which NOT NULL refuses; every backend refuses it the same way.
        with pytest.raises(self.IntegrityError):
            await store.finish_job("a", status="done", finished_at=102.0, step_s=[0.2, math.nan])
        job = await store.get_job("a")
        assert job is not None and (job["status"], job["finished_at"]) == ("running", None)
        assert await store.step_timings("a") == []
        await store.finish_job("a", status="failed", finished_at=103.0, error="could not save")
        job = await store.get_job("a")
        assert job is not None and (job["status"], job["error"]) == ("failed", "could not save")

    # -- history: search, filters, paging ----------------------------------------------------------

    async def test_search_is_literal_and_ignores_the_case_of_ascii_letters_only(
        self, store: JobStore
    ) -> None:
        prompts = {
            "pct": "100% sure",
            "plain": "100 sure",
            "under": "snake_case",
            "x": "snakeXcase",
            "mixed": "A LightHouse",
            "upper": "ÉCOLE",
            "lower": "école",
            "slash": "back\\slash",
            "sharp": "Straße",
        }
        for n, (job_id, prompt) in enumerate(prompts.items()):
            await store.insert_job(row(job_id, 100.0 + n, prompt=prompt))

        async def found(text: str) -> set[str]:
            ids = {r["id"] for r in await store.list_jobs(search=text)}
            assert await store.count_jobs(search=text) == len(ids)
            return ids

        assert await found("100%") == await found("%") == {"pct"}
        assert await found("_") == {"under"}
        assert await found("lighthouse") == await found("LIGHTHOUSE") == {"mixed"}
        # SQLite's LIKE folds ASCII letters only: É and é are different letters to it, and so to all.
        assert await found("école") == {"lower"}
        assert await found("ÉCOLE") == {"upper"}
        assert await found("COLE") == await found("cole") == {"upper", "lower"}
        assert await found("\\") == {"slash"}
        assert await found("STRAßE") == {"sharp"}
        assert await found("strasse") == set()

    async def test_history_pages_newest_first_with_its_filters(self, store: JobStore) -> None:
        jobs: list[tuple[str, float, dict[str, Any]]] = [
            ("a", 100.0, {}),
            ("b", 101.0, {"width": 512}),
            ("c", 102.0, {"status": "done"}),
            ("d", 102.0, {"width": 512, "status": "done"}),  # a tie: made after c, so listed before it
            ("e", 103.0, {"prompt": "a red boat"}),
        ]
        for job_id, created_at, overrides in jobs:
            await store.insert_job(row(job_id, created_at, **overrides))

        async def ids(**filters: Any) -> list[str]:
            return [r["id"] for r in await store.list_jobs(**filters)]

        assert await ids() == ["e", "d", "c", "b", "a"]
        assert await ids(limit=2) == ["e", "d"]
        assert await ids(limit=2, offset=2) == ["c", "b"]
        assert await ids(limit=2, offset=4) == ["a"]
        assert await ids(status="done") == ["d", "c"]
        assert await ids(size=(512, 256)) == ["d", "b"]
        assert await ids(status="done", size=(512, 256)) == ["d"]
        assert await ids(search="boat", status="queued") == ["e"]
        assert await ids(status="cancelled") == []
        assert await store.count_jobs() == 5
        assert await store.count_jobs(status="done") == 2
        assert await store.count_jobs(size=(512, 256), status="queued") == 1
        assert await store.job_sizes() == [(256, 256), (512, 256)]

    async def test_retention_prunes_images_and_deletes_only_ended_jobs(self, store: JobStore) -> None:
        for n, status in enumerate(("done", "failed", "queued", "running", "cancelled")):
            await store.insert_job(row(f"j{n}", 100.0 + n, status=status))
        await store.finish_job("j0", status="done", finished_at=110.0, images=["j0-0.png"], step_s=[0.1])

        ended = await store.ended_jobs()
        assert [(r["id"], r["status"]) for r in ended] == [
            ("j4", "cancelled"),
            ("j1", "failed"),
            ("j0", "done"),
        ]
        assert ended[2] == {
            "id": "j0",
            "created_at": 100.0,
            "status": "done",
            "images": ["j0-0.png"],
            "pruned_at": None,
        }

        await store.mark_pruned(["j0"], 500.0)
        job = await store.get_job("j0")
        assert job is not None and (job["images"], job["pruned_at"]) == ([], 500.0)
        assert await store.step_timings("j0") == [0.1]  # the timings stay for the ETA and the reports

        assert await store.delete_jobs(["j0", "j1", "j2", "j3", "missing"]) == 2
        assert await store.delete_jobs([]) == 0
        assert await store.get_job("j0") is None and await store.step_timings("j0") == []
        assert sorted(r["id"] for r in await store.list_jobs()) == ["j2", "j3", "j4"]

    # -- what the ETA engine and the reports read --------------------------------------------------

    async def test_eta_and_report_queries_give_the_same_rows(self, store: JobStore) -> None:
        for job_id, finished_at, model, device in (
            ("a", 200.0, "B-model", "cuda:0"),
            ("b", 300.0, "a-model", "cpu"),
            ("c", 400.0, "a-model", "cpu"),
        ):
            await store.insert_job(row(job_id, finished_at - 10, model=model))
            await store.mark_started(job_id, finished_at - 5, device, "float32", None)
            await store.finish_job(
                job_id,
                status="failed" if job_id == "c" else "done",
                finished_at=finished_at,
                step_s=[0.5, 0.25],
                phases={"denoising": 0.75, "decoding": 0.5},
                warm_up=job_id == "a",
                eta_points={0.0: 2.0, 0.5: None},
                actual_total_s=1.5,
            )
        await store.record_model_load(
            "l1", 150.0, "B-model", "cuda:0", "float32", {"vae": 0.5, "transformer": 2.0}
        )
        await store.record_model_load("l2", 250.0, "a-model", "cpu", "float32", {"transformer": 3.0})

        assert await store.eta_accuracy_rows() == [
            {**prediction, "job_id": job_id, "finished_at": finished_at}
            for job_id, finished_at in (("a", 200.0), ("b", 300.0), ("c", 400.0))
            for prediction in PREDICTIONS
        ]
        assert await store.report_eta_predictions(ReportFilter(since=300.0, before=400.0)) == [
            {**prediction, "job_id": "b", "finished_at": 300.0} for prediction in PREDICTIONS
        ]
        # Byte order, as SQLite sorts: "B" before "a", whatever the database's locale.
        assert await store.report_model_devices() == [("B-model", "cuda:0"), ("a-model", "cpu")]

        reported = await store.report_jobs(ReportFilter(model="a-model"))
        assert [(r["id"], r["status"], r["device"], r["warm_up"]) for r in reported] == [
            ("b", "done", "cpu", 0),
            ("c", "failed", "cpu", 0),
        ]
        assert set(reported[0]) == REPORT_JOB_KEYS
        steps, phases = await store.report_timings(ReportFilter())
        assert steps == {"a": [0.5, 0.25], "b": [0.5, 0.25]}  # done jobs only
        assert phases == {
            "a": {"decoding": 0.5, "denoising": 0.75},
            "b": {"decoding": 0.5, "denoising": 0.75},
        }
        assert list(phases["a"]) == ["decoding", "denoising"]
        assert await store.phase_timings("a") == {"decoding": 0.5, "denoising": 0.75}

        assert await store.report_model_loads(ReportFilter(before=200.0)) == [
            {
                "load_id": "l1",
                "model": "B-model",
                "device": "cuda:0",
                "dtype": "float32",
                "component": c,
                "seconds": s,
            }
            for c, s in (("transformer", 2.0), ("vae", 0.5))
        ]
        assert await store.model_load_totals() == [
            {"model": "B-model", "device": "cuda:0", "dtype": "float32", "seconds": 2.5, "loaded_at": 150.0},
            {"model": "a-model", "device": "cpu", "dtype": "float32", "seconds": 3.0, "loaded_at": 250.0},
        ]
        assert await store.model_load_totals(limit=1) == [
            {"model": "a-model", "device": "cpu", "dtype": "float32", "seconds": 3.0, "loaded_at": 250.0}
        ]
        history = await store.timing_history()
        assert [(h["id"], h["step_s"], h["phases"]) for h in history] == [
            ("a", [0.5, 0.25], {"decoding": 0.5, "denoising": 0.75}),
            ("b", [0.5, 0.25], {"decoding": 0.5, "denoising": 0.75}),
        ]
        assert [h["id"] for h in await store.timing_history(limit=1)] == ["b"]

    # -- migrations --------------------------------------------------------------------------------

    async def test_migrating_again_changes_nothing(self, store: JobStore) -> None:
        version = await store.schema_version()
        assert version >= 1
        await store.insert_job(row("a", 100.0))
        assert await store.migrate() == version
        assert await store.schema_version() == version
        assert [r["id"] for r in await store.list_jobs()] == ["a"]

    async def test_two_stores_opening_at_once_migrate_once(self, opener: Opener) -> None:
        first, second = await asyncio.gather(opener(), opener())
        try:
            assert await first.schema_version() == await second.schema_version() >= 1
            await first.insert_job(row("a", 100.0))
            assert [r["id"] for r in await second.queued_jobs()] == ["a"]
        finally:
            await first.close()
            await second.close()


JOB_TYPES: dict[str, type] = {
    **dict.fromkeys(("id", "status", "prompt", "negative_prompt", "model", "device", "dtype"), str),
    **dict.fromkeys(("created_at", "started_at", "finished_at", "guidance"), float),
    **dict.fromkeys(("gpu_util_start", "gpu_util_mean", "gpu_mem_peak_mb"), float),
    **dict.fromkeys(("width", "height", "steps", "seed", "num_images", "warm_up", "attempts"), int),
    "first_of_size": int,
    "error": type(None),
    "pruned_at": type(None),
    "images": list,
}
PREDICTIONS: list[dict[str, Any]] = [
    {
        "point": 0.0,
        "predicted_total_s": 2.0,
        "actual_total_s": 1.5,
        "width": 256,
        "height": 256,
        "num_images": 1,
    },
    {
        "point": 0.5,
        "predicted_total_s": None,
        "actual_total_s": 1.5,
        "width": 256,
        "height": 256,
        "num_images": 1,
    },
]
REPORT_JOB_KEYS = {
    "id",
    "status",
    "finished_at",
    "model",
    "device",
    "dtype",
    "width",
    "height",
    "num_images",
    "warm_up",
    "gpu_util_start",
    "gpu_util_mean",
    "gpu_mem_peak_mb",
}
