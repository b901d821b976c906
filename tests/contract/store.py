"""The JobStore contract (zimage_sse/db.py `Store`): a job's life as every backend must keep it."""

from __future__ import annotations

from typing import Any

from zimage_sse.db import ReportFilter, Store


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
    """Subclass with a `store` fixture giving an empty store of the backend under test."""

    async def test_queued_jobs_come_back_in_the_order_they_were_made(self, store: Store) -> None:
        for n, job_id in enumerate(("c", "a", "b")):
            await store.insert_job(row(job_id, 100.0 + n))
        assert [r["id"] for r in await store.queued_jobs()] == ["c", "a", "b"]

    async def test_a_finished_job_is_one_write_with_its_timings(self, store: Store) -> None:
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
        self, store: Store
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

    async def test_a_job_stopped_by_shutdown_goes_back_without_using_an_attempt(self, store: Store) -> None:
        await store.insert_job(row("a", 100.0))
        await store.mark_started("a", 101.0, "cuda:0", "bfloat16")
        await store.requeue("a")
        job = await store.get_job("a")
        assert job is not None and (job["status"], job["started_at"], job["attempts"]) == ("queued", None, 0)
