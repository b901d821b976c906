"""The README's first command, run as a user runs it: `make run` sets up and serves the demo model.

`make test` (which CI runs) covers the second command by running at all; without this test nothing
would notice if the first stopped working: the Makefile's `run` line, or the embedded demo model, which
no other test builds or serves.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .conftest import ROOT, follow, free_port, submit, wait_until_serving


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[str]:
    """`make run` on a free port, with its data (database, images, the demo model it builds) in a
    folder of the test's own; the URL it serves."""
    port = free_port()
    log = tmp_path / "make-run.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_SSE_")},
        "ZIMAGE_SSE_DATA_DIR": str(tmp_path / "data"),
    }
    process = subprocess.Popen(
        ["make", "run", "HOST=127.0.0.1", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and the server it starts stop together (killpg below)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # Setup runs first: it installs nothing that is already there, but still checks.
        wait_until_serving(url, process, lambda: log.read_text(errors="replace"), timeout_s=600)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.timeout(900)
def test_make_run_serves_the_demo_model_from_a_fresh_data_folder(make_run: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=make_run, timeout=120) as client:
        home = client.get("/")
        assert home.status_code == 200
        # The page says which model this is, and that its images are noise.
        assert "<strong>demo</strong>" in home.text
        assert "every image is noise" in home.text

        job = submit(client, width=256, height=256, steps=2)
        assert job["model"] == "demo"
        events = follow(client, job["id"])
        kinds = [event.event for event in events]
        assert kinds[-1] == "done", kinds
        # The first job builds and loads the model, then runs every step.
        assert any(e.event == "phase" and e.json()["phase"] == "loading" for e in events), kinds
        assert [e.json()["step"] for e in events if e.event == "step"] == [1, 2]

        ended = client.get(f"/api/jobs/{job['id']}").json()
        assert ended["status"] == "done"
        [image_url] = ended["images"]
        png = client.get(image_url)
        assert png.status_code == 200
        with Image.open(io.BytesIO(png.content)) as picture:
            assert (picture.format, picture.size) == ("PNG", (256, 256))

    # Built where the settings say, as a checkpoint `from_pretrained` can load.
    assert (tmp_path / "data" / "models" / "demo-v1" / "model_index.json").is_file()
