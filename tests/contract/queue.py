"""The JobQueue contract (zimage_sse/service/queue.py): what every backend's test class inherits."""

from __future__ import annotations

from zimage_sse.service.queue import JobQueue


class QueueContract:
    """Subclass with a `queue` fixture giving an empty queue of the backend under test."""

    def test_jobs_wait_in_the_order_they_were_put(self, queue: JobQueue) -> None:
        for job in ("a", "b", "c"):
            queue.put(job)
        assert queue.waiting() == ["a", "b", "c"]

    def test_a_requeued_job_goes_to_the_front(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.put("b")
        queue.put("stopped", front=True)
        assert queue.waiting() == ["stopped", "a", "b"]

    def test_putting_a_waiting_job_again_changes_nothing(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.put("b")
        queue.put("a")
        assert queue.waiting() == ["a", "b"]

    def test_a_claimed_job_runs_on_its_device_until_acked(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.put("b")
        assert queue.claim("b", "cuda:1")
        assert queue.waiting() == ["a"]
        assert queue.running() == {"cuda:1": "b"}
        queue.ack("b")
        assert queue.running() == {}
        assert queue.waiting() == ["a"]

    def test_a_job_is_claimed_once_and_a_busy_device_claims_nothing(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.put("b")
        assert queue.claim("a", "cuda:0")
        assert not queue.claim("a", "cuda:1")  # already taken
        assert not queue.claim("b", "cuda:0")  # that device runs a job
        assert queue.claim("b", "cuda:1")
        assert queue.running() == {"cuda:0": "a", "cuda:1": "b"}

    def test_remove_takes_a_waiting_job_out_but_not_a_running_one(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.put("b")
        assert queue.claim("a", "cuda:0")
        assert not queue.remove("a")
        assert queue.remove("b")
        assert not queue.remove("b")
        assert not queue.claim("b", "cuda:1")
        assert queue.waiting() == []
        assert queue.running() == {"cuda:0": "a"}

    def test_waiting_and_running_are_copies(self, queue: JobQueue) -> None:
        queue.put("a")
        queue.waiting().clear()
        queue.running()["cuda:0"] = "a"
        assert queue.waiting() == ["a"]
        assert queue.running() == {}
