"""Reproducibility against real servers: what the PNGs carry, `zimage-sse info`, reading a PNG back
into the form, and running a job again on the tiny model on the CPU."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import diffusers
import httpx
import torch
from PIL import Image
from PIL.PngImagePlugin import PngImageFile, PngInfo
from playwright.sync_api import Browser

import zimage_sse
from zimage_sse import pipeline
from zimage_sse.repro import parse_a1111

from .conftest import ROOT, Server, follow, submit
from .test_pages import Page

PARAMS = {
    "prompt": "repro: a lighthouse, at night\nsecond line",
    "negative_prompt": "blurry, low quality",
    "width": 128,
    "height": 96,
    "steps": 3,
    "guidance": 1.5,
    "seed": 987654321,
    "num_images": 2,
}
# A1111 1.10's own text for an SD 1.5 image: quoted values, keys it has and we do not.
A1111_TEXT = (
    "a cat in a hat, masterpiece\nsitting on a mat\nNegative prompt: lowres, bad anatomy\nextra line\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54, x: 1", '
    "Version: v1.10.1"
)


def run_job(client: httpx.Client, **params: Any) -> dict[str, Any]:
    job = submit(client, **params)
    events = follow(client, job["id"])
    assert events[-1].event == "done", events[-1]
    done: dict[str, Any] = client.get(f"/api/jobs/{job['id']}").json()
    return done


def image_path(server: Server, job: dict[str, Any], index: int = 0) -> Path:
    return server.data_dir / "images" / f"{job['id']}-{index}.png"


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file as (type, data), in file order."""
    data = path.read_bytes()
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def test_pngs_carry_both_chunks_with_every_field(server: Server) -> None:
    with server.client() as client:
        job = run_job(client, **PARAMS)
    expected_text = (
        f"{PARAMS['prompt']}\nNegative prompt: {PARAMS['negative_prompt']}\n"
        "Steps: 3, Sampler: FlowMatchEuler, CFG scale: 1.5, Seed: 987654321, Size: 128x96, Batch size: 2, "
        "Model: tiny"
    )
    for index in range(2):
        with Image.open(image_path(server, job, index)) as image:
            assert image.size == (128, 96)
            assert isinstance(image, PngImageFile)
            text = dict(image.text)
        assert text["parameters"] == expected_text
        meta = json.loads(text["zimage-sse"])
        assert meta == {
            **PARAMS,
            "model": "tiny",
            "model_revision": f"tiny-v{pipeline.EMBEDDED_VERSION}-seed{pipeline.EMBEDDED_SEED}",
            "device": "cpu",
            "device_name": "cpu",
            "dtype": "float32",
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "zimage_sse": zimage_sse.__version__,
            "job_id": job["id"],
            "index": index,
        }
        # The A1111 text alone gives every job parameter back.
        params, rest = parse_a1111(text["parameters"])
        assert params == PARAMS
        assert rest == {"sampler": "FlowMatchEuler", "model": "tiny"}


def test_info_prints_the_parameters_without_torch(server: Server, tmp_path: Path) -> None:
    with server.client() as client:
        job = run_job(client, **{**PARAMS, "num_images": 1})
        answer = client.post(
            "/api/jobs/from-png",
            content=image_path(server, job).read_bytes(),
            headers={"content-type": "image/png"},
        ).json()
    path = str(image_path(server, job))
    text = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "info", path],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    for line in (
        "seed: 987654321",
        "width: 128",
        "height: 96",
        "steps: 3",
        "guidance: 1.5",
        "negative_prompt: blurry, low quality",
        "model: tiny",
        f"model_revision: tiny-v{pipeline.EMBEDDED_VERSION}-seed{pipeline.EMBEDDED_SEED}",
        "device: cpu",
        "dtype: float32",
        f"diffusers: {diffusers.__version__}",
        f"job_id: {job['id']}",
        "Steps: 3, Sampler: FlowMatchEuler, CFG scale: 1.5, Seed: 987654321, Size: 128x96, Model: tiny",
    ):
        assert line in text.splitlines(), (line, text)
    as_json = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "info", "--json", path],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert json.loads(as_json) == answer
    assert answer["params"] == {**PARAMS, "num_images": 1}

    # The command never imports torch (it starts in a blink on a machine without it).
    check = (
        "import sys; from zimage_sse.cli import main; code = main(['info', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    subprocess.run([sys.executable, "-c", check, path], capture_output=True, check=True, cwd=ROOT)

    not_png = tmp_path / "notes.png"
    not_png.write_text("not an image")
    failed = subprocess.run(
        [sys.executable, "-m", "zimage_sse", "info", str(not_png)], capture_output=True, text=True, cwd=ROOT
    )
    assert failed.returncode == 1
    assert "is not a PNG image" in failed.stderr


def test_a_png_from_a_job_refills_the_form_and_runs_again(server: Server) -> None:
    with server.client() as client:
        job = run_job(client, **PARAMS)
        png = image_path(server, job).read_bytes()
        # The API, as a multipart upload and as the body itself.
        multipart = client.post("/api/jobs/from-png", files={"file": ("x.png", png, "image/png")})
        raw = client.post("/api/jobs/from-png", content=png, headers={"content-type": "image/png"})
        for response in (multipart, raw):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["params"] == job["params"] == PARAMS
            assert answer["source"] == "zimage-sse"
            assert answer["meta"]["model"] == "tiny" and answer["meta"]["job_id"] == job["id"]

        # The home page: a file input in a multipart form, answered by the form refilled (no JavaScript).
        home = Page(client.get("/").text)
        assert home.find("form", action="/from-png", enctype="multipart/form-data", method="post")
        assert home.find("input", type="file", name="file")
        page = client.post("/from-png", files={"file": ("x.png", png, "image/png")})
        assert page.status_code == 200
        form = Page(page.text)
        values = {attrs["name"]: attrs.get("value", "") for attrs in form.find("input") if "name" in attrs}
        assert {k: values[k] for k in ("width", "height", "steps", "guidance", "seed", "num_images")} == {
            "width": "128",
            "height": "96",
            "steps": "3",
            "guidance": "1.5",
            "seed": "987654321",
            "num_images": "2",
        }
        assert values["negative_prompt"] == PARAMS["negative_prompt"]
        assert f">{PARAMS['prompt']}</textarea>" in page.text
        # Submitting the refilled form queues the same parameters.
        submitted = client.post("/jobs", data={**values, "prompt": PARAMS["prompt"]})
        assert submitted.status_code == 303
        again = client.get("/api/jobs/" + submitted.headers["location"].rsplit("/", 1)[1]).json()
        assert again["params"] == PARAMS


def png_with(chunks: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_a1111_only_png_fills_what_it_says(server: Server) -> None:
    with server.client() as client:
        response = client.post(
            "/api/jobs/from-png", files={"file": ("a.png", png_with({"parameters": A1111_TEXT}))}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        page = client.post("/from-png", files={"file": ("a.png", png_with({"parameters": A1111_TEXT}))})
    assert answer["source"] == "parameters"
    assert answer["parameters"] == A1111_TEXT
    assert answer["params"] == {
        "prompt": "a cat in a hat, masterpiece\nsitting on a mat",
        "negative_prompt": "lowres, bad anatomy\nextra line",
        "steps": 20,
        "guidance": 7.5,
        "seed": 1234,
        "width": 512,
        "height": 768,
    }
    assert answer["meta"] == {
        "sampler": "DPM++ 2M",
        "schedule_type": "Karras",
        "model_hash": "6ce0161689",
        "model": "v1-5-pruned-emaonly",
        "lora_hashes": "add_detail: 7c6bad76eb54, x: 1",
        "version": "v1.10.1",
    }
    # What the file does not say keeps the form's default.
    values = {a["name"]: a.get("value", "") for a in Page(page.text).find("input") if "name" in a}
    assert values["seed"] == "1234" and values["width"] == "512" and values["num_images"] == "1"
    assert "made with v1-5-pruned-emaonly" in Page(page.text).text


def test_files_without_parameters_are_422_naming_the_file(server: Server) -> None:
    cases = {
        b"GIF89a not a png": "is not a PNG image",
        png_with({}): "carries no generation parameters",
        png_with({"parameters": "a cat\nSteps: many, Seed: 1, Size: 512x512"}): "Steps is 'many'",
        png_with({"parameters": "a cat\nSteps: 20, Seed: 1, Size: big"}): "Size is 'big', not WIDTHxHEIGHT",
        png_with({"zimage-sse": "{not json"}): "not valid JSON",
        png_with({"zimage-sse": json.dumps({"prompt": ["a", "list"]})}): "prompt is ['a', 'list'], not text",
    }
    with server.client() as client:
        before = len(client.get("/api/jobs", params={"limit": 500}).json()["jobs"])
        for body, reason in cases.items():
            for response in (
                client.post("/api/jobs/from-png", files={"file": ("f.png", body, "image/png")}),
                client.post("/api/jobs/from-png", content=body, headers={"content-type": "image/png"}),
            ):
                assert response.status_code == 422, response.text
                assert list(response.json()["errors"]) == ["file"]
                assert reason in response.json()["errors"]["file"], response.json()
            page = client.post("/from-png", files={"file": ("f.png", body, "image/png")})
            assert page.status_code == 422
            assert reason in Page(page.text).text
        empty = client.post("/api/jobs/from-png", content=b"", headers={"content-type": "image/png"})
        assert empty.status_code == 422 and "is required" in empty.json()["errors"]["file"]
        no_file = client.post("/from-png", files={"other": ("f.png", b"x", "image/png")})
        assert no_file.status_code == 422 and "is required" in Page(no_file.text).text
        assert len(client.get("/api/jobs", params={"limit": 500}).json()["jobs"]) == before


def test_run_again_repeats_the_pixels_and_vary_changes_them(server: Server) -> None:
    params = {"prompt": "repro: run again", "width": 128, "height": 128, "steps": 3, "seed": 4242}
    with server.client() as client:
        first = run_job(client, **params)
        response = client.post(f"/api/jobs/{first['id']}/again")
        assert response.status_code == 201, response.text
        assert response.headers["location"] == f"/api/jobs/{response.json()['id']}"
        again = response.json()
        assert again["params"] == first["params"] and again["id"] != first["id"]
        follow(client, again["id"])
        response = client.post(f"/api/jobs/{first['id']}/again", json={"vary": True})
        assert response.status_code == 201, response.text
        varied = response.json()
        assert varied["params"]["seed"] != 4242
        assert {k: v for k, v in varied["params"].items() if k != "seed"} == {
            k: v for k, v in first["params"].items() if k != "seed"
        }
        follow(client, varied["id"])

        # The job page's buttons: plain forms that answer with the new job's page.
        page = Page(client.get(f"/jobs/{first['id']}").text)
        assert len(page.find("form", action=f"/jobs/{first['id']}/again", method="post")) == 2
        assert page.find("input", type="hidden", name="vary", value="1")
        by_form = client.post(f"/jobs/{first['id']}/again", data={"vary": "1"})
        assert by_form.status_code == 303
        new_id = by_form.headers["location"].rsplit("/", 1)[1]
        assert client.get(f"/api/jobs/{new_id}").json()["params"]["seed"] != 4242
        same = client.post(f"/jobs/{first['id']}/again")
        assert client.get("/api/jobs/" + same.headers["location"].rsplit("/", 1)[1]).json()[
            "params"
        ] == params | {
            "negative_prompt": "",
            "guidance": 0.0,
            "num_images": 1,
        }

        assert client.post(f"/api/jobs/{first['id']}/again", json={"vary": "yes"}).json() == {
            "errors": {"vary": "must be true or false"}
        }
        assert client.post(f"/api/jobs/{first['id']}/again", json={"seed": 1}).status_code == 422
        assert client.post("/api/jobs/0123456789abcdef/again").status_code == 404

    def pixels(job: dict[str, Any]) -> bytes:
        with Image.open(image_path(server, job)) as image:
            return image.tobytes()

    assert pixels(again) == pixels(first)
    assert pixels(varied) != pixels(first)
    # The files differ only in the zimage-sse chunk, which names the job; the image data is the same.
    a, b = png_chunks(image_path(server, first)), png_chunks(image_path(server, again))
    assert [kind for kind, _ in a] == [kind for kind, _ in b]
    differing = {
        a_data.split(b"\0", 1)[0] for (_, a_data), (_, b_data) in zip(a, b, strict=True) if a_data != b_data
    }
    assert differing == {b"zimage-sse"}
    assert image_path(server, first).read_bytes() != image_path(server, again).read_bytes()


def test_in_chromium_without_javascript_upload_run_again_and_delete(
    server: Server, tmp_path: Path, browser: Browser
) -> None:
    """The file input, Run again and Delete are plain forms: they work with JavaScript off, and the
    pages they lead to raise no console error (the Content-Security-Policy blocks any inline code)."""
    with server.client() as client:
        job = run_job(client, **{**PARAMS, "num_images": 1})
    png = tmp_path / "result.png"
    png.write_bytes(image_path(server, job).read_bytes())
    errors: list[str] = []
    context = browser.new_context(java_script_enabled=False)
    try:
        tab = context.new_page()
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.goto(f"{server.url}/")
        tab.set_input_files("input[name=file]", str(png))
        tab.click("form.png-form button[type=submit]")
        assert tab.input_value("input[name=seed]") == "987654321"
        assert tab.input_value("textarea[name=prompt]") == PARAMS["prompt"]
        assert tab.input_value("input[name=guidance]") == "1.5"

        tab.goto(f"{server.url}/jobs/{job['id']}")
        tab.click("button.again")
        new_id = tab.url.rsplit("/", 1)[1]
        assert new_id != job["id"]
        with server.client() as client:
            assert client.get(f"/api/jobs/{new_id}").json()["params"]["seed"] == PARAMS["seed"]
            follow(client, new_id)
        tab.goto(f"{server.url}/jobs/{new_id}")
        assert tab.locator("table.step-timings tbody tr").count() == PARAMS["steps"]
        tab.click("button.delete")
        assert tab.url == f"{server.url}/history"
        assert tab.locator(f"a[href='/jobs/{new_id}']").count() == 0
    finally:
        context.close()
    assert errors == []
