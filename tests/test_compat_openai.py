"""The OpenAI images API (/v1) against real servers, through the real `openai` SDK as its users call it."""

from __future__ import annotations

import base64
import io
import json
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import ImagesResponse
from PIL import Image

from zimage_sse.events import TERMINAL
from zimage_sse.routes.openai_request import QUALITIES

from .conftest import BusyWorker, Server, start_server
from .test_fuzz import FUZZ, JUNK
from .test_pages import job_count
from .test_reliability import job_row, limit_file_size, poll, wait_exit

FAST = {"num_inference_steps": 2}  # the tiny model at 128² and 2 steps: a fraction of a second
TOKEN = "s3cret-token"
ERROR_KEYS = {"message", "type", "param", "code"}


def sdk(server: Server, key: str = "anything", **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, **options)


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """The error of an answer, checked to be in OpenAI's shape."""
    body = response.json()
    assert set(body) == {"error"}, response.text
    error: dict[str, Any] = body["error"]
    assert set(error) == ERROR_KEYS and isinstance(error["message"], str) and error["message"], response.text
    return error


def job_of(client: httpx.Client, prompt: str) -> dict[str, Any]:
    """The job a generation queued, found by its (unique) prompt once it is listed."""
    [job] = poll(
        lambda: client.get("/api/jobs", params={"q": prompt}).json()["jobs"], f"a job for {prompt!r}"
    )
    found: dict[str, Any] = job
    return found


def ended(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def state() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        return job if job["status"] in TERMINAL else None

    found: dict[str, Any] = poll(state, f"job {job_id} to end", deadline_s=60)
    return found


# -- generations ---------------------------------------------------------------------------------------


def test_b64_json_is_the_stored_png_of_a_job_like_any_other(server: Server) -> None:
    raw = sdk(server).images.with_raw_response.generate(
        model="z-image-turbo", prompt="a lighthouse, by the sdk", size="128x128", n=1, extra_body=FAST
    )
    result = raw.parse()
    assert (result.size, result.output_format, result.quality) == ("128x128", "png", "auto")
    assert result.data is not None and len(result.data) == 1 and result.data[0].b64_json
    png = base64.b64decode(result.data[0].b64_json)
    assert (picture(png).format, picture(png).size) == ("PNG", (128, 128))
    assert result.usage is not None and result.usage.output_tokens == 8 * 8  # 16×16 pixels a token

    job_id = raw.headers["x-job-id"]
    with server.client() as client:
        assert client.get(f"/images/{job_id}-0.png").content == png
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "done" and job["params"]["prompt"] == "a lighthouse, by the sdk"
        assert job_id in [listed["id"] for listed in client.get("/api/jobs").json()["jobs"]]


def test_urls_and_formats_serve_what_was_asked(server: Server) -> None:
    client = sdk(server)
    as_url = client.images.generate(prompt="a url", size="128x128", response_format="url", extra_body=FAST)
    assert as_url.data is not None and as_url.data[0].url is not None
    url = as_url.data[0].url
    assert url.startswith(f"{server.url}/images/") and url.endswith("-0.png")
    with server.client() as http:
        assert picture(http.get(url).content).format == "PNG"

        webp = client.images.generate(prompt="a webp", size="128x128", output_format="webp", extra_body=FAST)
        assert webp.output_format == "webp" and webp.data is not None and webp.data[0].b64_json
        assert picture(base64.b64decode(webp.data[0].b64_json)).format == "WEBP"

        two = client.images.generate(
            prompt="two jpegs",
            size="128x64",
            n=2,
            output_format="jpeg",
            output_compression=90,
            response_format="url",
            extra_body=FAST,
        )
        assert two.data is not None and len(two.data) == 2
        urls = [item.url for item in two.data if item.url]
        assert len(set(urls)) == 2
        for url in urls:
            served = http.get(url)
            assert served.headers["content-type"] == "image/jpeg"
            assert "immutable" in served.headers["cache-control"]
            assert (picture(served.content).format, picture(served.content).size) == ("JPEG", (128, 64))
        # The compression is the JPEG quality: less of it, fewer bytes.
        rough = http.get(urls[0].replace("-q90.jpeg", "-q5.jpeg"))
        assert rough.status_code == 200 and len(rough.content) < len(http.get(urls[0]).content)

        stem = urls[0].rsplit("/", 1)[1].split("-q")[0]
        for name in (
            "0123456789abcdef-0-q90.jpeg",
            f"{stem}-q101.jpeg",
            f"{stem}-q090.jpeg",
            f"{stem}-q90.gif",
            f"{stem}.png",
        ):
            missing = http.get(f"/v1/images/files/{name}")
            assert missing.status_code == 404, name
            assert openai_error(missing)["type"] == "not_found_error"


def test_the_generation_extensions_are_honoured(server: Server) -> None:
    client = sdk(server)
    extra = {"seed": 7, "num_inference_steps": 2, "negative_prompt": "blurry", "guidance_scale": 1.5}
    runs = [
        client.images.with_raw_response.generate(prompt="the same seed", size="64x64", extra_body=extra)
        for _ in range(2)
    ]
    with server.client() as http:
        for raw in runs:
            params = http.get(f"/api/jobs/{raw.headers['x-job-id']}").json()["params"]
            assert (params["seed"], params["steps"], params["negative_prompt"], params["guidance"]) == (
                7,
                2,
                "blurry",
                1.5,
            )
    first, second = (raw.parse().data for raw in runs)
    assert first and second and first[0].b64_json and second[0].b64_json
    image = picture(base64.b64decode(first[0].b64_json))
    assert "Seed: 7" in image.info["parameters"] and "Negative prompt: blurry" in image.info["parameters"]
    assert image.tobytes() == picture(base64.b64decode(second[0].b64_json)).tobytes()


def test_a_stream_sends_partial_images_then_the_image(server: Server) -> None:
    client = sdk(server)
    raw = client.images.with_raw_response.generate(
        prompt="streamed",
        size="128x128",
        stream=True,
        partial_images=2,
        extra_body={"num_inference_steps": 6},
    )
    events = list(raw.parse())
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials, done = events[:2], events[2]
    assert [getattr(event, "partial_image_index", None) for event in partials] == [0, 1]
    for event in events:
        image = picture(base64.b64decode(event.b64_json))
        assert (image.format, image.size) == ("PNG", (128, 128))
        assert (event.size, event.output_format, event.background) == ("128x128", "png", "opaque")
    assert done.type == "image_generation.completed" and done.usage.output_tokens == 64
    with server.client() as http:
        assert base64.b64decode(done.b64_json) == http.get(f"/images/{raw.headers['x-job-id']}-0.png").content

    # Partials come in the format asked for too.
    jpeg = list(
        client.images.generate(
            prompt="streamed jpeg",
            size="64x64",
            stream=True,
            partial_images=1,
            output_format="jpeg",
            extra_body=FAST,
        )
    )
    assert [event.type for event in jpeg] == ["image_generation.partial_image", "image_generation.completed"]
    assert all(picture(base64.b64decode(event.b64_json)).format == "JPEG" for event in jpeg)


def test_models_are_listed_and_others_are_not_found(server: Server) -> None:
    client = sdk(server)
    [card] = client.models.list().data
    assert (card.id, card.object, card.owned_by) == ("tiny", "model", "zimage-sse")
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-image-1")
    assert (missing.value.param, missing.value.code) == ("model", "model_not_found")


# -- bad requests --------------------------------------------------------------------------------------

BAD_BODIES: list[tuple[dict[str, Any], str, str]] = [
    ({"size": "100x128"}, "size", "width must be a multiple of 16"),
    ({"size": "128x4096"}, "size", "height must be between 64 and 2048"),
    ({"size": "big"}, "size", "must be WIDTHxHEIGHT"),
    ({"size": 128}, "size", "must be WIDTHxHEIGHT"),
    ({"n": 5}, "n", "must be between 1 and 4"),
    ({"n": "2"}, "n", "must be a whole number"),
    ({"n": 2, "stream": True}, "n", "must be 1 with stream"),
    ({"prompt": 5}, "prompt", "must be a string"),
    ({"prompt": "  "}, "prompt", "must not be empty"),
    ({"model": ["m"]}, "model", "must be a string"),
    ({"quality": "ultra"}, "quality", "must be one of"),
    ({"response_format": "png"}, "response_format", "must be one of"),
    ({"output_format": "gif"}, "output_format", "must be one of png, jpeg, webp"),
    ({"output_compression": 101}, "output_compression", "from 0 to 100"),
    ({"stream": "yes"}, "stream", "must be true or false"),
    ({"partial_images": 4}, "partial_images", "from 0 to 3"),
    ({"style": 1}, "style", "must be a string"),
    ({"seed": -1}, "seed", "must be between 0 and"),
    ({"num_inference_steps": 0}, "num_inference_steps", "must be between 1 and 100"),
    ({"guidance_scale": "1"}, "guidance_scale", "must be a number"),
    ({"sampler": "euler"}, "sampler", "unrecognized request argument"),
]


def test_bad_requests_get_400_in_openais_shape_and_queue_nothing(server: Server) -> None:
    client = sdk(server, max_retries=0)
    with server.client() as http:
        before = job_count(http)
        calls: list[tuple[Callable[[], object], str]] = [
            (lambda: client.images.generate(prompt="bad size", size="100x100"), "size"),
            (lambda: client.images.generate(prompt="too many", n=9), "n"),
            (
                lambda: client.post("/images/generations", body={"model": "m"}, cast_to=ImagesResponse),
                "prompt",
            ),
        ]
        for call, param in calls:
            with pytest.raises(openai.BadRequestError) as refused:
                call()
            assert (refused.value.param, refused.value.type) == (param, "invalid_request_error")

        for change, param, reason in BAD_BODIES:
            response = http.post("/v1/images/generations", json={"prompt": "a fox", **change})
            assert response.status_code == 400, (change, response.text)
            error = openai_error(response)
            assert (error["param"], error["type"]) == (param, "invalid_request_error"), (change, error)
            assert reason in error["message"], (change, error)
        missing = openai_error(http.post("/v1/images/generations", json={"size": "100x100"}))
        assert missing["param"] == "prompt" and "'size' width" in missing["message"]  # every problem said
        for raw in (b"{not json", b"", b"[1]", b'"a fox"'):
            response = http.post(
                "/v1/images/generations", content=raw, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, raw
            assert openai_error(response)["param"] is None, raw
        assert job_count(http) == before

        for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/images/generations", 405)):
            response = http.request(method, path)
            assert response.status_code == status, path
            openai_error(response)


# -- a guarded server: token, a queue of one, a disk too small for a 1024² image ------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    env = {"ZIMAGE_SSE_TOKEN": TOKEN, "ZIMAGE_SSE_MAX_QUEUE": "1", "ZIMAGE_SSE_SUBMIT_RATE": "0"}
    server = start_server(tmp_path_factory.mktemp("guarded"), models_dir, env=env, preexec_fn=limit_file_size)
    yield server
    server.stop()


def authorised(server: Server) -> httpx.Client:
    return server.client(headers={"Authorization": f"Bearer {TOKEN}"})


def test_the_token_is_needed(guarded: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(guarded, key="wrong").models.list()
    assert refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(guarded, key="wrong").images.generate(prompt="no entry", size="64x64")
    result = sdk(guarded, key=TOKEN).images.generate(prompt="let in", size="64x64", extra_body=FAST)
    assert result.data is not None and len(result.data) == 1


def test_a_full_queue_is_429_with_retry_after_and_a_gone_client_does_not_cancel(guarded: Server) -> None:
    client = sdk(guarded, key=TOKEN, max_retries=0)
    with authorised(guarded) as http, BusyWorker(http) as busy:
        waiting = http.post("/api/jobs", json={"prompt": "fills the queue", "width": 64, "height": 64})
        assert waiting.status_code == 201, waiting.text
        before = job_count(http)
        with pytest.raises(openai.RateLimitError) as refused:
            client.images.generate(prompt="one too many", size="64x64")
        assert refused.value.response.headers["retry-after"].isdigit()
        assert "The queue is full" in refused.value.message and refused.value.code == "rate_limit_exceeded"
        assert job_count(http) == before
        assert http.post(f"/api/jobs/{waiting.json()['id']}/cancel").status_code == 202

        # A client that gives up waiting leaves its job queued; it runs once the worker is free.
        with pytest.raises(openai.APITimeoutError):
            client.images.generate(prompt="impatient", size="64x64", extra_body=FAST, timeout=1)
        job = job_of(http, "impatient")
        assert job["status"] == "queued"
        busy.release()
        assert ended(http, job["id"])["status"] == "done"


def test_a_cancelled_or_failed_job_is_an_error_and_not_run_again(guarded: Server) -> None:
    client = sdk(guarded, key=TOKEN)  # the SDK's own retries on: the server must turn them off
    with authorised(guarded) as http, ThreadPoolExecutor(1) as pool:
        with BusyWorker(http):
            pending: Future[ImagesResponse] = pool.submit(
                client.images.generate, prompt="to be cancelled", size="64x64"
            )
            job = job_of(http, "to be cancelled")
            assert http.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
            with pytest.raises(openai.ConflictError) as cancelled:
                pending.result(timeout=30)
            assert cancelled.value.code == "job_cancelled" and "Cancelled" in cancelled.value.message
            assert cancelled.value.response.headers["x-job-id"] == job["id"]

            stream = client.images.generate(prompt="stream cancelled", size="64x64", stream=True)
            job = job_of(http, "stream cancelled")
            assert http.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
            with pytest.raises(openai.APIError, match="No image was made"):
                list(stream)

        # A 1024² PNG of noise is larger than this server's disk allows: the job fails while saving.
        with pytest.raises(openai.InternalServerError) as failed:
            client.images.generate(
                prompt="too big to save", size="1024x1024", extra_body={"num_inference_steps": 1}
            )
        assert "Disk full" in failed.value.message and failed.value.type == "server_error"
        for prompt in ("to be cancelled", "stream cancelled", "too big to save"):
            assert len(http.get("/api/jobs", params={"q": prompt}).json()["jobs"]) == 1, prompt


def test_a_shutdown_refuses_new_generations_and_keeps_the_waiting_ones_queued(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(shutdown_grace="1", submit_rate="0")
    client = sdk(server)  # the SDK's own retries on: the job stays queued, so the server turns them off
    with server.client() as http, ThreadPoolExecutor(1) as pool:
        BusyWorker(http)  # runs past the grace, so the shutdown stops it and queues it again
        pending = pool.submit(client.images.generate, prompt="waits across the shutdown", size="64x64")
        job = job_of(http, "waits across the shutdown")
        server.process.send_signal(signal.SIGTERM)

        def refused() -> httpx.Response | None:
            body = {"prompt": "after the signal", "size": "64x64", "stream": True}  # answers at once
            with http.stream("POST", "/v1/images/generations", json=body) as response:
                if response.status_code != 503:
                    return None  # queued before the signal was taken in: leave its stream
                response.read()
                return response

        late = poll(refused, "generations to be refused")
        assert "shutting down" in openai_error(late)["message"] and late.headers["retry-after"].isdigit()
        with pytest.raises(openai.InternalServerError) as stopped:
            pending.result(timeout=30)
    assert stopped.value.status_code == 503 and stopped.value.response.headers["x-job-id"] == job["id"]
    assert "keeps its place in the queue" in stopped.value.message
    assert wait_exit(server) in (0, -signal.SIGTERM)
    assert job_row(server.data_dir, job["id"])["status"] == "queued"


# -- generated requests --------------------------------------------------------------------------------

# Small limits keep accepted jobs cheap; every limit has both sides within reach of the generator.
LIMITS = {
    "max_prompt_chars": "40",
    "default_width": "64",
    "default_height": "64",
    "min_size": "64",
    "max_size": "128",
    "max_pixels": str(128 * 64),
    "default_steps": "1",
    "max_steps": "2",
    "max_images": "2",
    "max_queue": "0",
    "submit_rate": "0",
}
FUZZ_SECONDS = 60


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(values, values, JUNK)


SIZES = st.one_of(
    st.sampled_from(["64x64", "128x64", "64x128", "128x128", "auto", "80x64", "63x64", "64X64", "x64"]),
    st.builds("{}x{}".format, st.integers(0, 200), st.integers(0, 200)),
)
GENERATION = st.fixed_dictionaries(
    {},
    optional={
        "prompt": maybe(st.text(max_size=42)),
        "model": maybe(st.sampled_from(["z-image-turbo", "gpt-image-1", ""])),
        "n": maybe(st.integers(0, 3)),
        "size": maybe(SIZES),
        "quality": maybe(st.sampled_from([*QUALITIES, "ultra"])),
        "response_format": maybe(st.sampled_from(["url", "b64_json", "png"])),
        "output_format": maybe(st.sampled_from(["png", "jpeg", "webp", "gif"])),
        "output_compression": maybe(st.integers(-5, 105)),
        "stream": maybe(st.booleans()),
        "partial_images": maybe(st.integers(-1, 4)),
        "negative_prompt": maybe(st.text(max_size=42)),
        "num_inference_steps": maybe(st.integers(0, 3)),
        "guidance_scale": maybe(st.floats(-1, 21)),
        "seed": maybe(st.integers(-2, 2**64)),
        "background": maybe(st.sampled_from(["transparent", "opaque", "auto"])),
        "user": maybe(st.text(max_size=8)),
    },
)
VALID = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=40).filter(str.strip)},
    optional={
        "model": st.text(max_size=12),
        "n": st.integers(1, 2),
        "size": st.sampled_from(["64x64", "128x64", "64x128", "auto"]),
        "response_format": st.sampled_from(["url", "b64_json"]),
        "output_format": st.sampled_from(["png", "jpeg", "webp"]),
        "output_compression": st.integers(0, 100),
        "partial_images": st.integers(0, 3),
        "num_inference_steps": st.integers(1, 2),
        "seed": st.integers(0, 2**63 - 1),
        "style": st.sampled_from(["vivid", "natural"]),
    },
)
BODIES = st.one_of(
    VALID,
    VALID.map(lambda body: {**body, "n": 1, "stream": True}),
    GENERATION,
    GENERATION,
    st.builds(
        lambda a, b: {**a, **b},
        GENERATION,
        st.dictionaries(st.text(min_size=1, max_size=6), JUNK, max_size=1),
    ),
    JUNK,
)


def test_generated_bodies_get_no_5xx_and_every_refusal_is_in_openais_shape(
    make_server: Callable[..., Server],
) -> None:
    fuzzed = make_server(**LIMITS)
    accepted: list[str] = []
    started = time.monotonic()
    with fuzzed.client() as http:

        @settings(FUZZ, max_examples=30)
        @given(body=BODIES, raw=st.one_of(st.none(), st.binary(max_size=32)))
        def generations(body: Any, raw: bytes | None) -> None:
            content = raw if raw is not None else json.dumps(body).encode()  # NaN and Infinity included
            request = http.build_request(
                "POST",
                "/v1/images/generations",
                content=content,
                headers={"Content-Type": "application/json"},
            )
            response = http.send(request, stream=True)
            try:
                response.read()
            finally:
                response.close()
            assert response.status_code in (200, 400), (body, raw, response.text)
            if response.status_code == 400:
                error = openai_error(response)
                sent = body if raw is None and isinstance(body, dict) else {}
                assert error["param"] is None or error["param"] in sent or error["param"] == "prompt", error
                return
            accepted.append(response.headers["x-job-id"])
            if response.headers["content-type"].startswith("text/event-stream"):
                assert "image_generation.completed" in response.text, response.text
            else:
                answer = response.json()
                assert len(answer["data"]) == (body.get("n") or 1), answer.keys()

        before = job_count(http)
        generations()
        assert job_count(http) == before + len(accepted)
    assert len(accepted) >= 5, "the generator should reach valid bodies too"
    assert time.monotonic() - started < FUZZ_SECONDS
    assert "Traceback" not in fuzzed.logs()
