"""Overload against real servers: the queue limit and the per-client submission rate limit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import httpx

from zimage_sse.answers import UNKNOWN_WAIT_RETRY_S, queue_full_answer
from zimage_sse.security import TokenBucket
from zimage_sse.service import QueueFull

from .conftest import BusyWorker, Server, read_sse, submit
from .test_pages import Page, job_count

HTML = {"Accept": "text/html"}
SMALL = {"width": 256, "height": 256, "steps": 3}  # the ETA learns step times from the second on


def test_a_full_queue_answers_429_with_the_predicted_wait(make_server: Callable[..., Server]) -> None:
    server = make_server(max_queue="2", submit_rate="0")
    with server.client() as client:
        # A finished 256² job teaches the server what the queued ones will cost.
        submit(client, prompt="history", **SMALL)
        with BusyWorker(client) as busy:
            # Wait until the running job has an ETA, so the queue has a predicted start.
            with client.stream("GET", f"/api/jobs/{busy.job['id']}/events") as response:
                read_sse(response, until=lambda e: e.event == "step" and e.json()["eta_s"] is not None)
            queued = [submit(client, prompt=f"queued {n}", **SMALL) for n in range(2)]
            before = job_count(client)

            refused = client.post("/api/jobs", json={"prompt": "one too many", **SMALL})
            assert refused.status_code == 429
            body = refused.json()
            assert body["max_queue"] == 2
            assert body["predicted_wait_s"] is not None and body["predicted_wait_s"] > 0
            assert refused.headers["retry-after"] == str(max(1, math.ceil(body["predicted_wait_s"])))
            assert body["queue_drained_s"] >= body["predicted_wait_s"]
            assert "The queue is full (2 jobs waiting)" in body["error"]

            form = client.post("/jobs", data={"prompt": "typed on the form", "width": "256"}, headers=HTML)
            assert form.status_code == 429
            assert form.headers["retry-after"].isdigit()
            page = Page(form.text)
            assert "The queue is full" in page.text  # on the form, not a JSON body
            assert page.find("textarea", name="prompt")
            assert "typed on the form" in form.text  # what was typed is kept
            assert job_count(client) == before

            # A place frees up: the next submission is taken.
            assert client.post(f"/api/jobs/{queued[0]['id']}/cancel").status_code == 202
            assert submit(client, prompt="now there is room", **SMALL)["status"] == "queued"


def test_the_wait_is_unknown_rather_than_invented_without_a_prediction() -> None:
    message, body, headers = queue_full_answer(QueueFull(5, None, None))
    assert body["predicted_wait_s"] is None and body["queue_drained_s"] is None
    assert "unknown" in message
    assert headers["Retry-After"] == str(UNKNOWN_WAIT_RETRY_S)


def test_a_client_past_its_rate_gets_429_and_others_do_not(make_server: Callable[..., Server]) -> None:
    server = make_server(submit_rate="60", submit_burst="3")
    with server.client() as client:
        for n in range(3):
            # Rejected submissions queue nothing and give their token back.
            assert client.post("/api/jobs", json={"prompt": ""}).status_code == 422
            submit(client, prompt=f"burst {n}", **SMALL)
        limited = client.post("/api/jobs", json={"prompt": "fourth", **SMALL})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"  # 60 a minute: a token a second
        assert "Too many submissions" in limited.json()["error"]
        form = client.post("/jobs", data={"prompt": "fourth by form"}, headers=HTML)
        assert form.status_code == 429
        assert "Too many submissions" in Page(form.text).text
        assert client.get("/api/jobs").status_code == 200  # reading is not limited
        assert job_count(client) == 3

        # Another address has its own bucket (Linux routes all of 127/8 to the loopback device).
        other = httpx.Client(
            base_url=server.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60
        )
        with other:
            assert submit(other, prompt="from another address", **SMALL)["status"] == "queued"

        # The bucket refills at the configured rate: within about a second the first client may submit.
        started = time.monotonic()
        body = {"prompt": "after the refill", **SMALL}
        while (response := client.post("/api/jobs", json=body)).status_code == 429:
            assert time.monotonic() - started < 3, "the bucket did not refill"
            time.sleep(0.1)  # polling the refill, whose timing is what is under test
        assert response.status_code == 201


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_s=0.5, burst=2, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(2)] == [0.0, 0.0]
    assert bucket.take("a") == 2.0  # one token takes 2 s at 0.5/s
    assert bucket.take("b") == 0.0  # another client
    now[0] = 1.0
    assert bucket.take("a") == 1.0
    now[0] = 2.0
    assert bucket.take("a") == 0.0
    now[0] = 100.0
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 2.0]  # a long pause refills only the burst
    bucket.give_back("a")  # the last request was not a submission after all
    assert bucket.take("a") == 0.0
    assert bucket.take("a") == 2.0
