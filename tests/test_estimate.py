"""GET /api/estimate and the home page's estimate against a real server: what a job would cost before
it is submitted, from the queue's own planner and ETA engine, and honest where nothing is known."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from zimage_sse.progress import duration

from .conftest import LONG_JOB, BusyWorker, Server, follow, submit

SMALL = {"width": 256, "height": 256, "steps": 4}


def estimate(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/api/estimate", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer: dict[str, Any] = response.json()
    return answer


def preset_text(answer: dict[str, Any]) -> str:
    """What a preset button says for an API answer: its run, or that it is not known."""
    if answer["run_s"] is None:
        return "time unknown"
    return f"{'about' if answer['source'] == 'size' else 'roughly'} {duration(answer['run_s'])}"


def counts(client: httpx.Client) -> tuple[int, int]:
    """Jobs stored, and jobs waiting in the queue."""
    jobs = len(client.get("/api/jobs", params={"limit": 500}).json()["jobs"])
    return jobs, client.get("/api/status").json()["queued"]


def own_run(done: dict[str, Any]) -> float:
    """What a finished job's own timings say one more like it costs once the model is resident and warm:
    its encode, decode and save, and its steady step (the first carries the warm-up) times its steps."""
    phases = done["phases"]
    steady = statistics.median(done["step_s"][1:])
    return float(phases["encoding"] + steady * len(done["step_s"]) + phases["decoding"] + phases["saving"])


def test_estimate_is_unknown_then_learned_then_waits_behind_the_queue(
    make_server: Callable[..., Server],
) -> None:
    srv = make_server()
    with srv.client() as client:
        # Before any job: nothing is known, and it says so rather than a number.
        first = estimate(client, **SMALL)
        assert first["run_s"] is None and first["source"] is None and first["finish_s"] is None
        assert "unknown until the first job" in first["text"]
        assert first["device"] == "cpu"
        assert first["start_s"] == 0.0, "an idle device starts it at once"
        assert first["needs_load"] is True and first["needs_warmup"] is True
        assert first["jobs_ahead"] == 0
        defaults = estimate(client)  # every field left out: the server's defaults
        assert (defaults["width"], defaults["height"], defaults["steps"], defaults["num_images"]) == (
            1024,
            1024,
            8,
            1,
        )

        # One job of a size: that size is known from history, close to what the job itself took.
        done = follow(client, submit(client, **SMALL)["id"])[-1]
        assert done.event == "done", done
        known = estimate(client, **SMALL, num_images=1)
        assert known["source"] == "size"
        assert known["run_s"] is not None and known["run_s"] > 0
        expected = own_run(done.json())
        assert abs(known["run_s"] - expected) <= 0.25 * expected + 0.05, (known, done.json())
        # The model is resident and warm now: no load, no warm-up in it.
        assert known["needs_load"] is False and known["needs_warmup"] is False
        assert known["load_s"] == 0.0 and known["warmup_s"] == 0.0
        assert known["text"] == f"about {duration(known['run_s'])} on cpu, starts now"

        # A size never run: from the cost model or scaled from the nearest size, and it says which.
        unseen = estimate(client, width=512, height=384, steps=6)
        assert unseen["source"] in ("cost-model", "scaled")
        assert unseen["run_s"] is not None and unseen["run_s"] > known["run_s"]
        assert unseen["text"].startswith(f"no history for this size yet: roughly {duration(unseen['run_s'])}")

        # Behind a running job and a growing queue, the start moves later by about each job added.
        before = counts(client)
        with BusyWorker(client):
            behind = [estimate(client, **SMALL)]
            queued = []
            for _ in range(2):
                queued.append(submit(client, prompt="waits in the queue", **LONG_JOB))
                behind.append(estimate(client, **SMALL))
            starts = [answer["start_s"] for answer in behind]
            assert all(start is not None and start > 0 for start in starts), behind
            for answer, job, earlier in zip(behind[1:], queued, behind, strict=False):
                # The queued job's own predicted run, as the queue shows it: the estimate waits for it too.
                total = client.get(f"/api/jobs/{job['id']}").json()["predicted_total_s"]
                assert total is not None and total > 0
                assert answer["start_s"] > earlier["start_s"] + 0.5 * total, (behind, total)
            assert [answer["jobs_ahead"] for answer in behind] == [1, 2, 3]
            assert re.search(r", starts in about \d", behind[-1]["text"]), behind[-1]["text"]
            assert behind[-1]["finish_s"] == pytest.approx(
                behind[-1]["start_s"] + behind[-1]["run_s"], abs=0.002
            )
            # Asking queued nothing: the two jobs above and the blocker are all there is.
            assert counts(client) == (before[0] + 3, 2)
            for job in queued:
                assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ({"width": "17"}, "width", "must be between 64 and 2048 (got 17)"),
        ({"width": "100"}, "width", "must be a multiple of 16 (got 100)"),
        ({"steps": "0"}, "steps", "must be between 1 and 100 (got 0)"),
        ({"num_images": "999"}, "num_images", "must be between 1 and 4 (got 999)"),
        ({"width": "abc"}, "width", "must be a whole number (got 'abc')"),
        ({"size": "1024"}, "size", "unknown field"),
    ],
)
def test_bad_values_are_422_naming_the_field_and_queue_nothing(
    server: Server, query: dict[str, str], field: str, reason: str
) -> None:
    with server.client() as client:
        before = counts(client)
        response = client.get("/api/estimate", params=query)
        assert response.status_code == 422
        assert response.json() == {"errors": {field: reason}}
        assert counts(client) == before


def test_estimate_is_described_for_api_users(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/api/openapi.json").json()
        path = spec["paths"]["/api/estimate"]["get"]
        names = {parameter["name"] for parameter in path["parameters"]}
        assert names == {"width", "height", "steps", "num_images"}
        assert {"200", "422"} <= set(path["responses"])


def test_home_page_shows_the_estimate_and_keeps_it_after_a_refused_form(server: Server) -> None:
    with server.client() as client:
        api = estimate(client)  # the form's defaults
        page = client.get("/").text
        region = re.search(r'<output[^>]*id="estimate"[^>]*>(.*?)</output>', page, re.S)
        assert region is not None
        assert 'aria-live="polite"' in region.group(0)
        assert api["text"] in region.group(1)
        # Each preset carries its own figure, as the API gives it for that preset.
        etas = re.findall(r'<small class="preset-eta" id="preset-eta-(\d)"[^>]*>(.*?)</small>', page)
        assert [index for index, _ in etas] == ["1", "2", "3"]
        assert etas[0][1] == preset_text(estimate(client, width=768, height=768, steps=8))

        # A refused form comes back with the estimate for what was typed.
        response = client.post("/jobs", data={"prompt": "", "width": "512", "height": "512", "steps": "3"})
        assert response.status_code == 422
        wanted = estimate(client, width=512, height=512, steps=3)
        assert wanted["text"] in response.text

        # The fragment htmx fetches: the same text, the presets out of band, a bad value said plainly.
        fragment = client.get(
            "/estimate", params={"width": "512", "height": "512", "steps": "3", "prompt": ""}
        )
        assert fragment.status_code == 200
        assert wanted["text"] in fragment.text
        assert fragment.text.count('hx-swap-oob="true"') == 3
        bad = client.get("/estimate", params={"width": "17"})
        assert bad.status_code == 200
        assert "no estimate until the form is valid: width must be between 64 and 2048 (got 17)" in bad.text


def test_estimate_needs_the_token_where_the_server_has_one(make_server: Callable[..., Server]) -> None:
    srv = make_server(token="estimate-secret")
    with srv.client() as client:
        assert client.get("/api/estimate").status_code == 401
        assert client.get("/estimate").status_code == 401
        allowed = client.get("/api/estimate", headers={"Authorization": "Bearer estimate-secret"})
        assert allowed.status_code == 200
        assert "unknown until the first job" in allowed.json()["text"]
