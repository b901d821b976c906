"""The AUTOMATIC1111 API (/sdapi/v1) through the real `webuiapi` client against real servers: what
Open WebUI, SillyTavern and scripts get back, the Turbo parameter policy, progress and interrupt, bad
input, a fuzz over txt2img bodies, and the access token."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import webuiapi  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zimage_sse.events import TERMINAL

from .conftest import SSE, BusyWorker, Server, follow, read_sse, start_server
from .test_fuzz import FUZZ, JUNK

TOKEN = "a1111-test-token"
ERROR_KEYS = {"error", "detail", "body", "errors"}
# What A1111's `Processed.js()` carries and its clients read (modules/processing.py).
INFO_KEYS = {
    "prompt",
    "all_prompts",
    "negative_prompt",
    "all_negative_prompts",
    "seed",
    "all_seeds",
    "subseed",
    "all_subseeds",
    "width",
    "height",
    "sampler_name",
    "cfg_scale",
    "steps",
    "batch_size",
    "n_iter",
    "sd_model_name",
    "sd_model_hash",
    "infotexts",
    "job_timestamp",
    "clip_skip",
    "restore_faces",
    "styles",
}
# Small limits on the second server keep every accepted job cheap; A1111's CFG scale is honoured there.
LIMITED = {
    "ZIMAGE_SSE_TOKEN": TOKEN,
    "ZIMAGE_SSE_A1111_HONOUR_CFG": "1",
    "ZIMAGE_SSE_A1111_MAX_STEPS": "2",
    "ZIMAGE_SSE_DEFAULT_WIDTH": "128",
    "ZIMAGE_SSE_DEFAULT_HEIGHT": "128",
    "ZIMAGE_SSE_MAX_SIZE": "256",
    "ZIMAGE_SSE_MAX_PIXELS": str(256 * 128),
    "ZIMAGE_SSE_SUBMIT_RATE": "0",
}
FUZZ_SECONDS = 45
JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[tuple[Server, Server]]:
    """Both servers of this module, started side by side (each start mostly waits on imports)."""
    configs = [(tmp_path_factory.mktemp("a1111"), {"ZIMAGE_SSE_SUBMIT_RATE": "0"})]
    configs.append((tmp_path_factory.mktemp("a1111-limited"), LIMITED))
    with ThreadPoolExecutor(2) as pool:
        starts = [pool.submit(start_server, data_dir, models_dir, env=env) for data_dir, env in configs]
    started = [start.result() for start in starts if start.exception() is None]
    try:
        for start in starts:
            start.result()  # raises why a server did not start, after the other one is stopped below
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def plain(servers: tuple[Server, Server]) -> Server:
    """The default settings (guidance ignored, steps ≤ 8), with no rate limit: jobs and the queue are
    this module's alone, so progress and job counts are exact."""
    return servers[0]


@pytest.fixture(scope="module")
def limited(servers: tuple[Server, Server]) -> Server:
    """A token, A1111's CFG scale honoured, and small limits (LIMITED)."""
    return servers[1]


def client_for(server: Server, *, token: bool = False, **kwargs: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    return server.client(headers=headers, **kwargs)


def api_for(server: Server, *, password: str | None = None) -> Any:
    port = int(server.url.rsplit(":", 1)[1])
    if password is None:
        return webuiapi.WebUIApi(host="127.0.0.1", port=port)
    return webuiapi.WebUIApi(host="127.0.0.1", port=port, username="anyone", password=password)


def assert_a1111_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_KEYS, body
    assert isinstance(body["detail"], str) and body["detail"], body
    return body


def job_ids(client: httpx.Client) -> list[str]:
    return [job["id"] for job in client.get("/api/jobs", params={"limit": 500}).json()["jobs"]]


def job_with_prompt(client: httpx.Client, prompt: str, timeout_s: float = 30) -> dict[str, Any]:
    """The job a txt2img call queued (found by its prompt), once it is listed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in client.get("/api/jobs", params={"limit": 50}).json()["jobs"]:
            if job["params"]["prompt"] == prompt:
                found: dict[str, Any] = job
                return found
        time.sleep(0.05)  # polling the job list with a deadline
    raise AssertionError(f"no job with prompt {prompt!r} within {timeout_s} s")


def events_until(client: httpx.Client, job_id: str, stop: Callable[[SSE], bool]) -> list[SSE]:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        return read_sse(response, until=lambda e: stop(e) or e.event in TERMINAL)


# -- txt2img -------------------------------------------------------------------------------------------


def test_txt2img_reports_the_turbo_policy_and_returns_the_stored_png(plain: Server) -> None:
    api = api_for(plain)
    # webuiapi's defaults: sampler "Euler a", CFG scale 7; and a size that is no multiple of 16.
    result = api.txt2img(
        prompt="a lighthouse at dusk", negative_prompt="fog", seed=1234, width=100, height=64, steps=20
    )
    assert result.image.size == (96, 64)  # 100 rounds to the nearest multiple of 16
    info = result.info
    assert set(info) >= INFO_KEYS, INFO_KEYS - set(info)
    assert (info["seed"], info["all_seeds"], info["steps"], info["cfg_scale"]) == (1234, [1234], 8, 0)
    assert (info["width"], info["height"], info["sampler_name"]) == (96, 64, "FlowMatchEuler")
    assert info["extra_generation_params"] == {
        "Steps requested": 20,
        "CFG scale requested": 7,
        "Size requested": "100x64",
    }
    assert re.fullmatch(r"\d{14}", info["job_timestamp"])
    assert info["all_prompts"] == ["a lighthouse at dusk"] and info["all_negative_prompts"] == ["fog"]
    # `parameters` is the request with what was used in place of what the policy changed.
    parameters = result.parameters
    assert (parameters["steps"], parameters["cfg_scale"], parameters["width"]) == (8, 0, 96)
    assert parameters["hr_checkpoint_name"] is None and parameters["enable_hr"] is False
    chunk = result.image.info["parameters"]
    assert chunk == info["infotexts"][0]
    assert "Steps: 8, Sampler: FlowMatchEuler, CFG scale: 0, Seed: 1234, Size: 96x64" in chunk
    assert chunk.startswith("a lighthouse at dusk\nNegative prompt: fog\n")

    encoded = result.json["images"][0]
    assert not encoded.startswith("data:")
    with plain.client() as client:
        stored = client.get(info["images"][0])
        assert stored.status_code == 200
        assert stored.content == base64.b64decode(encoded)  # the very file, not a re-encoding
        job = client.get(f"/api/jobs/{info['job_id']}").json()
    assert job["status"] == "done"
    assert {k: job["params"][k] for k in ("steps", "guidance", "width", "seed")} == {
        "steps": 8,
        "guidance": 0,
        "width": 96,
        "seed": 1234,
    }


def test_batch_size_times_n_iter_images_from_one_seed_and_a_random_seed_is_reported(plain: Server) -> None:
    api = api_for(plain)
    result = api.txt2img(prompt="four foxes", seed=7, width=64, height=64, batch_size=2, n_iter=2)
    assert len(result.images) == 4
    info = result.info
    # worker.py draws the whole batch from one generator seeded once: every image has that seed.
    assert info["all_seeds"] == [7, 7, 7, 7] and info["seed"] == 7
    assert (info["batch_size"], info["n_iter"]) == (4, 1)
    assert info["extra_generation_params"]["Batch requested"] == "2 x 2 iterations"
    assert all("Seed: 7, Size: 64x64, Batch size: 4" in image.info["parameters"] for image in result.images)

    random = api.txt2img(prompt="one fox", seed=-1, width=64, height=64).info
    assert random["seed"] >= 0 and random["all_seeds"] == [random["seed"]]
    assert f"Seed: {random['seed']}," in random["infotexts"][0]


def test_a_client_that_disconnects_does_not_cancel_its_job(plain: Server) -> None:
    prompt = "left behind but made"
    body = {"prompt": prompt, "width": 64, "height": 64}
    with plain.client() as client:
        with BusyWorker(client):  # the job waits, so the client's short timeout runs out first
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{plain.url}/sdapi/v1/txt2img", json=body, timeout=1.0)
            job = job_with_prompt(client, prompt)
            assert job["status"] == "queued"
        events = follow(client, job["id"])
        assert events[-1].event == "done", events[-1]
        assert client.get(f"/api/jobs/{job['id']}").json()["images"]
    assert "Traceback" not in plain.logs()


# -- progress and interrupt ----------------------------------------------------------------------------


def test_progress_reports_the_running_job_and_interrupt_stops_it(plain: Server) -> None:
    api = api_for(plain)
    with plain.client() as client, ThreadPoolExecutor(1) as pool:
        busy = BusyWorker(client)  # 100 steps: cancelled below by /sdapi/v1/interrupt
        try:
            behind: Future[Any] = pool.submit(api.txt2img, prompt="queued behind", width=64, height=64)
            assert job_with_prompt(client, "queued behind")["status"] == "queued"
            seen = {"preview": False, "eta": False}

            def ready(event: SSE) -> bool:
                data = event.json()
                seen["preview"] |= event.event == "preview" or bool(data.get("preview"))
                seen["eta"] |= event.event in ("snapshot", "step") and data.get("eta_s") is not None
                return seen["preview"] and seen["eta"]

            assert events_until(client, busy.job["id"], ready)[-1].event not in TERMINAL
            progress = api.get_progress()
            state = progress["state"]
            assert progress["current_task"] == busy.job["id"]
            assert 0 < progress["progress"] < 1
            assert progress["eta_relative"] > 0
            assert state["job_count"] == 2  # the running job and the one queued behind it
            assert state["sampling_steps"] == 100 and 1 <= state["sampling_step"] < 100
            assert "Denoising: step" in progress["textinfo"]
            preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
            assert preview.width > 0
            skipped = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
            assert skipped["current_image"] is None and skipped["current_task"] == busy.job["id"]

            api.interrupt()
            assert follow(client, busy.job["id"])[-1].event == "cancelled"
            # Interrupt stops what runs; the queued request keeps its place and is answered.
            assert behind.result(timeout=60).image.size == (64, 64)
        finally:
            client.post(f"/api/jobs/{busy.job['id']}/cancel")

        deadline = time.monotonic() + 10
        while (idle := api.get_progress())["state"]["job_count"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the last job's device frees up just after its answer
        assert (idle["progress"], idle["state"]["job_count"], idle["current_task"]) == (0, 0, None)


def test_interrupt_ends_the_running_txt2img_call_cancelled(plain: Server) -> None:
    api = api_for(plain)
    prompt = "interrupted at its first step"
    with plain.client() as client, ThreadPoolExecutor(1) as pool:
        call: Future[Any] = pool.submit(api.txt2img, prompt=prompt, width=1024, height=1024)
        job = job_with_prompt(client, prompt)
        assert events_until(client, job["id"], lambda e: e.event == "step")[-1].event == "step"
        api.interrupt()
        with pytest.raises(RuntimeError) as raised:
            call.result(timeout=60)
        status, text = raised.value.args
        assert status == 409
        assert set(json.loads(text)) == ERROR_KEYS and "interrupted" in json.loads(text)["detail"]
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "cancelled"


# -- the catalogue -------------------------------------------------------------------------------------


def test_model_helpers_and_catalogue_name_the_one_model_and_sampler(plain: Server) -> None:
    api = api_for(plain)
    assert api.util_get_model_names() == ["tiny"]
    assert api.util_get_current_model() == "tiny"
    api.util_set_model("tiny")  # what scripts do first: the same model is accepted
    options = api.get_options()
    assert options["sd_model_checkpoint"] == "tiny" and options["samples_format"] == "png"
    assert options["CLIP_stop_at_last_layers"] == 1
    refused = api.set_options({"sd_model_checkpoint": "sd_xl_base_1.0.safetensors"})
    assert (
        set(refused) == ERROR_KEYS and "serves one model, 'tiny'" in refused["errors"]["sd_model_checkpoint"]
    )
    assert api.util_get_sampler_names() == ["FlowMatchEuler"]
    assert api.util_get_scheduler_names() == ["automatic"]
    assert api.get_sd_models()[0].keys() == {"title", "model_name", "hash", "sha256", "filename", "config"}
    for empty in (api.get_upscalers, api.get_latent_upscale_modes, api.get_sd_vae, api.get_loras):
        assert empty() == []
    assert api.get_prompt_styles() == [] and api.get_scripts() == {"txt2img": [], "img2img": []}

    with plain.client() as client:
        other = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other"})
        assert_a1111_error(other, 422)
        same = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "TINY", "samples_format": "jpg"})
        assert same.status_code == 200 and same.json() is None
        assert client.get("/sdapi/v1/options").json()["samples_format"] == "png"  # accepted, ignored
        # Open WebUI posts the options back with "" for the model when none is chosen.
        round_trip = {**client.get("/sdapi/v1/options").json(), "sd_model_checkpoint": ""}
        assert client.post("/sdapi/v1/options", json=round_trip).status_code == 200
        assert_a1111_error(client.post("/sdapi/v1/img2img", json={}), 404)
        assert_a1111_error(client.get("/sdapi/v1/no-such-thing"), 404)
        wrong_method = assert_a1111_error(client.get("/sdapi/v1/txt2img"), 405)
        assert "POST" in wrong_method["detail"]


def test_png_info_reads_the_parameters_back(plain: Server) -> None:
    api = api_for(plain)
    made = api.txt2img(prompt="a read-back owl", seed=99, width=64, height=80)
    found = api.png_info(made.image)  # webuiapi sends a data: URL
    assert found.info == made.info["infotexts"][0]
    assert found.parameters["Prompt"] == "a read-back owl"
    assert (found.parameters["Seed"], found.parameters["Size-1"], found.parameters["Size-2"]) == (
        "99",
        "64",
        "80",
    )
    assert found.parameters["Sampler"] == "FlowMatchEuler"
    assert json.loads(found.json["items"]["zimage-sse"])["seed"] == 99
    with plain.client() as client:
        plain_b64 = client.post("/sdapi/v1/png-info", json={"image": made.json["images"][0]})
        assert plain_b64.json()["parameters"] == found.parameters
        for bad in ({"image": "not base64 at all"}, {"image": base64.b64encode(b"text").decode()}, {}):
            assert "image" in assert_a1111_error(client.post("/sdapi/v1/png-info", json=bad), 422)["errors"]


# -- bad input, policy settings, fuzz, auth ------------------------------------------------------------


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"width": "512"}, "width", "must be a whole number"),
    ({"steps": 2.5}, "steps", "must be a whole number"),
    ({"seed": "42"}, "seed", "must be a whole number"),
    ({"cfg_scale": "7"}, "cfg_scale", "must be a number"),
    ({"cfg_scale": 25}, "cfg_scale", "must be between 0 and 20"),  # honoured on this server
    ({"cfg_scale": math.inf}, "cfg_scale", "must be a finite number"),
    ({"batch_size": True}, "batch_size", "must be a whole number"),
    ({"n_iter": 0}, "n_iter", "must be at least 1"),
    ({"batch_size": 3, "n_iter": 2}, "batch_size", "batch_size × n_iter must be between 1 and 4 (got 6)"),
    ({"width": 256, "height": 256}, "width", "more than the limit of 32768"),
    ({"width": 10**9, "height": 10**9}, "width", "256×256 is 65536 pixels"),  # clamped, still too many
    ({"prompt": 5}, "prompt", "must be a string"),
]


def test_bad_input_gets_a1111_shaped_4xx_and_queues_nothing(limited: Server) -> None:
    with client_for(limited, token=True) as client:
        before = job_ids(client)
        for change, field, reason in BAD:
            body = {"prompt": "a fox", "width": 64, "height": 64, **change}
            raw = json.dumps(body).encode()  # Infinity included, which httpx's json= refuses
            response = client.post("/sdapi/v1/txt2img", content=raw, headers=JSON_TYPE)
            error = assert_a1111_error(response, 422)
            assert reason in error["errors"][field], (change, error)
            assert reason in error["detail"]
        for raw in (b"{not json", b"", b"[1, 2]", b'"a fox"', b"[" * 3000):
            response = client.post("/sdapi/v1/txt2img", content=raw, headers=JSON_TYPE)
            assert "body" in assert_a1111_error(response, 422)["errors"], raw[:20]
        assert job_ids(client) == before
        # The control: the same server takes a good request, and as A1111 does, one without a prompt.
        good = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64})
        assert good.status_code == 200 and len(good.json()["images"]) == 1
        unprompted = client.post("/sdapi/v1/txt2img", json={"width": 64, "height": 64})
        assert unprompted.status_code == 200 and len(unprompted.json()["images"]) == 1
        assert json.loads(unprompted.json()["info"])["prompt"] == ""


def test_honoured_cfg_and_clamped_steps_and_sizes_are_reported(limited: Server) -> None:
    api = api_for(limited, password=TOKEN)  # HTTP Basic with the token as the password
    result = api.txt2img(prompt="a policy fox", seed=5, cfg_scale=1.5, steps=20, width=10, height=300)
    assert result.image.size == (64, 256)  # clamped into min_size..max_size
    info = result.info
    assert (info["cfg_scale"], info["steps"], info["width"], info["height"]) == (1.5, 2, 64, 256)
    assert info["extra_generation_params"] == {"Steps requested": 20, "Size requested": "10x300"}
    assert "Steps: 2, Sampler: FlowMatchEuler, CFG scale: 1.5" in result.image.info["parameters"]


TXT2IMG_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "negative_prompt": st.one_of(st.text(max_size=8), JUNK),
    "seed": st.one_of(st.sampled_from([-1, 0, 2**63, -5]), st.integers(0, 2**32), JUNK),
    "steps": st.one_of(st.integers(-3, 60), JUNK),
    "width": st.one_of(st.integers(-20, 400), st.sampled_from([512, 10**7]), JUNK),
    "height": st.one_of(st.integers(-20, 200), JUNK),
    "batch_size": st.one_of(st.integers(-1, 4), JUNK),
    "n_iter": st.one_of(st.integers(-1, 3), JUNK),
    "cfg_scale": st.one_of(st.floats(-1, 25), JUNK),
    "sampler_name": st.one_of(st.sampled_from(["Euler a", "DDIM", "DPM++ 2M Karras"]), JUNK),
    "hr_checkpoint_name": st.none(),
}
# What a client would send to this server: every value acceptable (the policy rounds and clamps).
GOOD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "seed": st.one_of(st.just(-1), st.integers(0, 2**32)),
    "steps": st.integers(1, 50),
    "width": st.sampled_from([64, 100, 128, 256]),
    "height": st.sampled_from([64, 100, 128]),
    "batch_size": st.integers(1, 2),
    "n_iter": st.integers(1, 2),
    "cfg_scale": st.floats(0, 7),
    "sampler_name": st.sampled_from(["Euler a", "DDIM"]),
}
TXT2IMG_BODIES = st.one_of(
    st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=12).filter(str.strip)}, optional=GOOD_FIELDS
    ),
    st.builds(
        lambda first, rest, extra: {**first, **rest, **extra},
        st.fixed_dictionaries({"prompt": st.one_of(st.text(min_size=1, max_size=12), JUNK)}),
        st.fixed_dictionaries({}, optional=TXT2IMG_FIELDS),
        st.dictionaries(st.text(min_size=1, max_size=6), JUNK, max_size=2),
    ),
    JUNK,
)


def test_generated_txt2img_bodies_get_no_5xx(limited: Server) -> None:
    answered: dict[str, int] = {"accepted": 0, "refused": 0}
    with client_for(limited, token=True) as client:
        before = len(job_ids(client))
        started = time.monotonic()

        # Accepted jobs are at most 256×128, 2 steps, 4 images: each is answered (done) in well under a
        # second, so nothing is left running to cancel.
        @settings(FUZZ, max_examples=40)
        @given(body=TXT2IMG_BODIES, raw=st.one_of(st.none(), st.none(), st.binary(max_size=24)))
        def requests(body: Any, raw: bytes | None) -> None:
            content = raw if raw is not None else json.dumps(body).encode()  # NaN and Infinity included
            response = client.post("/sdapi/v1/txt2img", content=content, headers=JSON_TYPE)
            assert response.status_code < 500, (body, raw, response.text)
            if response.status_code == 200:
                answer = response.json()
                info = json.loads(answer["info"])
                assert answer["images"] and len(answer["images"]) == info["batch_size"], answer["parameters"]
                assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in answer["images"])
                answered["accepted"] += 1
            else:
                assert 400 <= response.status_code < 500
                assert_a1111_error(response, response.status_code)
                answered["refused"] += 1

        requests()
        elapsed = time.monotonic() - started
        assert len(job_ids(client)) == before + answered["accepted"]  # a refused body queues nothing
    assert answered["accepted"] >= 5 and answered["refused"] >= 5, answered
    assert elapsed < FUZZ_SECONDS, f"the property run took {elapsed:.0f} s"
    assert "Traceback" not in limited.logs()


def test_the_token_works_as_basic_password_or_bearer_and_nothing_else(limited: Server) -> None:
    api = api_for(limited, password=TOKEN)
    assert api.util_get_current_model() == "tiny"
    with client_for(limited, token=True) as bearer:
        assert bearer.get("/sdapi/v1/sd-models").status_code == 200
    with limited.client() as anonymous:
        refused = assert_a1111_error(anonymous.get("/sdapi/v1/options"), 401)
        assert refused["error"] == "Unauthorized"
        assert anonymous.get("/sdapi/v1/options").headers["WWW-Authenticate"].startswith("Basic")
        wrong = anonymous.post("/sdapi/v1/txt2img", json={"prompt": "x"}, auth=("anyone", "wrong"))
        assert_a1111_error(wrong, 401)
    assert api_for(limited, password="wrong").get_options()["error"] == "Unauthorized"
