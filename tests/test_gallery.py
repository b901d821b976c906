"""The gallery against a real server, before any JavaScript runs: history and the home page's recent
jobs as cards carrying what the viewer needs, the table on request, and "use these settings" as a
plain link (`/?use=JOB_ID`) that fills the home form."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from .conftest import BusyWorker, Server, follow, start_server, submit
from .test_pages import Page, history_row

# A prompt with a CR LF and markup: the attribute must give back the PNG's text byte for byte.
CR_PROMPT = 'gallery: a harbour at night\r\n<b>lanterns</b> & "fog"'
FIELDS = ("negative_prompt", "width", "height", "steps", "guidance", "seed", "num_images")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    # Size multiples of 8 pass validation and a width of 72 fails in the pipeline: a real failed job.
    srv = start_server(tmp_path_factory.mktemp("gallery"), models_dir, env={"ZIMAGE_SSE_SIZE_MULTIPLE": "8"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def jobs(gallery: Server) -> dict[str, dict[str, Any]]:
    """One job of each kind a card shows, oldest first: cancelled (two), failed, done (two)."""
    with gallery.client() as client:
        with BusyWorker(client) as busy:
            queued = submit(client, prompt="gallery: cancelled while queued", steps=1)
            assert client.post(f"/api/jobs/{queued['id']}/cancel").status_code == 202
            busy.release()
            follow(client, busy.job["id"])
        failed = submit(client, prompt="gallery: fails, 72 wide", width=72, height=64, steps=1)
        follow(client, failed["id"])
        plain = submit(client, prompt="gallery: a plain one", steps=2, seed=7)
        follow(client, plain["id"])
        rich = submit(
            client,
            prompt=CR_PROMPT,
            negative_prompt="blurry, low contrast",
            width=256,
            height=192,
            steps=3,
            guidance=1.5,
            seed=4242,
            num_images=2,
        )
        follow(client, rich["id"])
        found = {
            name: client.get(f"/api/jobs/{job['id']}").json()
            for name, job in [
                ("blocker", busy.job),
                ("queued", queued),
                ("failed", failed),
                ("plain", plain),
                ("rich", rich),
            ]
        }
    assert [job["status"] for job in found.values()] == ["cancelled", "cancelled", "failed", "done", "done"]
    return found


def cards(text: str) -> dict[str, str]:
    """The gallery's cards by job id, as their HTML."""
    found = re.findall(r'<li class="card status-\w+" data-job="([0-9a-f]{16})">(.*?)</li>', text, re.S)
    return dict(found)


def png_parameters(client: httpx.Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", url
    with Image.open(io.BytesIO(response.content)) as image:
        text: str = image.text["parameters"]  # type: ignore[attr-defined]
    return text


def assert_image_card(client: httpx.Client, card: str, job: dict[str, Any]) -> None:
    page = Page(card)
    (link,) = page.find("a", **{"class": "card-image"})
    assert link["href"] == f"/jobs/{job['id']}"  # without JavaScript the card is a link to the job page
    assert link["data-full"] == job["images"][0] == f"/images/{job['id']}-0.png"
    assert link["data-name"] == f"{job['id']}-0.png"
    assert link["data-prompt"] == job["params"]["prompt"]
    assert link["data-use"] == f"/?use={job['id']}"
    # "Copy parameters" copies what every PNG of the job carries in its A1111 `parameters` chunk.
    assert link["data-parameters"] == png_parameters(client, link["data-full"])
    (img,) = page.find("img")
    assert img["src"] == f"/thumbs/{job['id']}-0.jpg"
    thumb = client.get(img["src"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    p = job["params"]
    assert p["prompt"].split()[0] in Page(card).text
    assert f"{p['width']}×{p['height']}" in page.text and "done" in page.text
    assert page.find("a", href=f"/?use={job['id']}", **{"class": "card-use"})


def test_history_is_a_gallery_of_cards(gallery: Server, jobs: dict[str, dict[str, Any]]) -> None:
    with gallery.client() as client:
        response = client.get("/history")
        assert response.status_code == 200
        text = response.text
        found = cards(text)
        # Newest first, every job a card, and no table.
        assert list(found) == [jobs[name]["id"] for name in ("rich", "plain", "failed", "queued", "blocker")]
        assert "<table" not in text
        for name in ("rich", "plain"):
            assert_image_card(client, found[jobs[name]["id"]], jobs[name])
        rich = Page(found[jobs["rich"]["id"]])
        assert "256×192 ×2" in rich.text
        assert rich.find("a", href=f"/jobs/{jobs['rich']['id']}", **{"class": "card-prompt"})
        assert "&lt;b&gt;lanterns&lt;/b&gt;" in found[jobs["rich"]["id"]]  # the prompt is text, not markup

        # Cards without an image say why.
        failed = Page(found[jobs["failed"]["id"]])
        assert not failed.find("img")
        assert "Failed:" in failed.text and "72" in failed.text, failed.text
        for name in ("queued", "blocker"):
            cancelled = Page(found[jobs[name]["id"]])
            assert not cancelled.find("img") and "Cancelled before it finished" in cancelled.text

        page = Page(text)
        assert page.find("dialog", id="viewer")
        assert page.find("a", href="/history?view=table")
        assert page.find("a", href="/history", aria_current="page")
        assert page.find("script", src="/static/viewer.js", defer="")


def test_table_view_on_request_keeps_filter_and_pages(
    gallery: Server, jobs: dict[str, dict[str, Any]]
) -> None:
    with gallery.client() as client:
        table = client.get("/history", params={"view": "table"})
        assert table.status_code == 200
        assert "<table" in table.text and 'class="gallery"' not in table.text
        row = history_row(table.text, jobs["plain"]["id"])
        assert Page(row["Prompt"]).text == "gallery: a plain one"
        assert Page(row["Seed"]).text == "7"
        page = Page(table.text)
        assert page.find("a", href="/history?view=table", aria_current="page")
        assert page.find("input", type="hidden", name="view", value="table")  # the filter keeps the view

        # The pager keeps the view and the filter; the switch keeps the filter.
        first = client.get("/history", params={"view": "table", "q": "gallery", "per_page": "2"})
        older = Page(first.text).find("a", rel="next")[0]["href"]
        assert "view=table" in older and "q=gallery" in older and "per_page=2" in older
        assert "<table" in client.get(older).text
        switch = {a["href"] for a in Page(first.text).find("a") if a.get("href", "").startswith("/history?")}
        assert "/history?q=gallery&per_page=2" in switch
        assert "/history?q=gallery&per_page=2&view=table" in switch
        grid = client.get("/history", params={"q": "plain"})
        assert list(cards(grid.text)) == [jobs["plain"]["id"]]

        bad = client.get("/history", params={"view": "carousel"})
        assert bad.status_code == 422
        assert "view" in Page(bad.text).text and "must be one of grid, table" in Page(bad.text).text


def test_home_recent_are_the_same_cards(gallery: Server, jobs: dict[str, dict[str, Any]]) -> None:
    with gallery.client() as client:
        text = client.get("/").text
        recent = text[text.index('<section class="recent">') :]
        found = cards(recent)
        # Only done jobs are recent.
        assert list(found) == [jobs["rich"]["id"], jobs["plain"]["id"]]
        for name in ("rich", "plain"):
            assert_image_card(client, found[jobs[name]["id"]], jobs[name])
        assert Page(text).find("dialog", id="viewer")


def textarea(text: str, name: str) -> str:
    found = re.search(rf'<textarea name="{name}"[^>]*>(.*?)</textarea>', text, re.S)
    assert found is not None, name
    return html.unescape(found.group(1))


def test_use_these_settings_fills_the_home_form(gallery: Server, jobs: dict[str, dict[str, Any]]) -> None:
    rich = jobs["rich"]
    with gallery.client() as client:
        response = client.get("/", params={"use": rich["id"]})
        assert response.status_code == 200
        page = Page(response.text)
        assert textarea(response.text, "prompt") == CR_PROMPT
        expected = {**rich["params"], "guidance": "1.5"}
        for name in FIELDS:
            assert page.find("input", name=name, value=str(expected[name])), (name, expected[name])
        assert "The form holds the settings of job" in page.text
        assert page.find("a", href=f"/jobs/{rich['id']}")

        # A failed job's settings can be used too (to fix them); the form shows them as they were.
        failed = client.get("/", params={"use": jobs["failed"]["id"]})
        assert Page(failed.text).find("input", name="width", value="72")

        # Unknown or malformed ids: the home page with the defaults, a 404, and words saying why.
        defaults = Page(client.get("/").text)
        for unknown in ("0123456789abcdef", "<script>x</script>"):
            missing = client.get("/", params={"use": unknown})
            assert missing.status_code == 404, unknown
            assert "<script>x" not in missing.text
            shown = Page(missing.text)
            assert f"No job {unknown} here" in shown.text
            assert "the form holds the defaults" in shown.text
            for name in ("width", "height", "steps", "seed"):
                (want,) = defaults.find("input", name=name)
                assert shown.find("input", name=name, value=want["value"]), name
            assert textarea(missing.text, "prompt") == ""
