"""The gallery and its viewer in real Chromium: cards on the history page, the viewer opened from a
card's image, paged with the arrow keys, closed with Escape, downloading, copying, and "use these
settings" landing on a filled home form."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from .browsing import SHOTS, watched_tab
from .conftest import Server, follow, start_server, submit

WAIT_MS = 90_000  # two cores shared with other suites: generous waits, never sleeps
# A CR LF in the prompt: the copied parameters must still equal the PNG's chunk byte for byte.
PROMPT = "gallery viewer: a lighthouse\r\nat dusk & <b>fog</b>"
NEWEST: dict[str, Any] = {
    "prompt": PROMPT,
    "negative_prompt": "blurry",
    "width": 256,
    "height": 192,
    "steps": 3,
    "guidance": 1.5,
    "seed": 9001,
    "num_images": 2,
}
OLDER = [
    {"prompt": "gallery viewer: oldest, a red kite", "width": 192, "height": 256, "steps": 2, "seed": 11},
    {"prompt": "gallery viewer: middle, a blue door", "width": 256, "height": 256, "steps": 2, "seed": 12},
]
OPEN = "document.getElementById('viewer').open"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("gallery-browser"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def jobs(web: Server) -> list[dict[str, Any]]:
    """Three done jobs, newest first (as the gallery lists them)."""
    done = []
    with web.client() as client:
        for params in [*OLDER, NEWEST]:
            job = submit(client, **params)
            follow(client, job["id"])
            done.append(client.get(f"/api/jobs/{job['id']}").json())
    assert [job["status"] for job in done] == ["done"] * 3
    return done[::-1]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab allowed the clipboard; no test may leave a console error (a CSP violation) or a dialog."""
    with watched_tab(browser, permissions=["clipboard-read", "clipboard-write"]) as tab:
        tab.context.set_default_timeout(WAIT_MS)
        yield tab


def png(client: httpx.Client, url: str) -> tuple[bytes, str]:
    response = client.get(url)
    assert response.status_code == 200, url
    with Image.open(io.BytesIO(response.content)) as image:
        text: str = image.text["parameters"]  # type: ignore[attr-defined]
    return response.content, text


def shown(page: Page) -> str:
    """The path of the image the viewer shows, once it has loaded."""
    page.wait_for_function(
        "() => (i => i.complete && i.naturalWidth > 0)(document.querySelector('.viewer-image'))"
    )
    src: str = page.evaluate("new URL(document.querySelector('.viewer-image').src).pathname")
    return src


def focus_in_viewer(page: Page) -> bool:
    inside: bool = page.evaluate("!!document.activeElement.closest('#viewer')")
    return inside


def test_history_gallery_and_viewer(web: Server, jobs: list[dict[str, Any]], page: Page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(web.url + "/history")
    cards = page.locator("ul.gallery li.card")
    assert cards.count() == 3
    assert page.locator("table").count() == 0
    fulls = [job["images"][0] for job in jobs]
    assert page.locator("a.card-image").evaluate_all("links => links.map(a => a.dataset.full)") == fulls
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card-image img')].every(i => i.naturalWidth > 0)"
    )
    assert not page.evaluate(OPEN)
    page.screenshot(path=str(SHOTS / "history-gallery.png"), full_page=True)

    # Clicking an image opens the viewer on this page (not the job page), focus inside it.
    page.locator("a.card-image").nth(0).click()
    page.wait_for_function(OPEN)
    assert page.url == web.url + "/history"
    assert focus_in_viewer(page)
    assert shown(page) == fulls[0]
    assert page.locator(".viewer-title").text_content() == PROMPT  # the CR came through the attribute
    assert "256×192 · 1 of 3" in page.locator(".viewer-caption").inner_text()
    page.screenshot(path=str(SHOTS / "viewer-open.png"))

    # The arrow keys page through the cards, and back; the buttons do the same.
    page.keyboard.press("ArrowRight")
    assert shown(page) == fulls[1]
    page.keyboard.press("ArrowRight")
    assert shown(page) == fulls[2]
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert shown(page) == fulls[0]
    page.locator("[data-viewer=prev]").click()  # the first's neighbour is the last
    assert shown(page) == fulls[2]
    page.locator("[data-viewer=next]").click()
    assert shown(page) == fulls[0]

    # Download: the same bytes as GET /images/NAME, under that name.
    with web.client() as client:
        expected, parameters = png(client, fulls[0])
    with page.expect_download() as info:
        page.locator("[data-viewer=download]").click()
    download = info.value
    assert download.suggested_filename == f"{jobs[0]['id']}-0.png"
    assert Path(download.path()).read_bytes() == expected

    # Copy parameters: the A1111 text of the PNG's `parameters` chunk, said to be copied.
    page.locator("[data-viewer=copy-parameters]").click()
    page.wait_for_function(
        "() => document.querySelector('.viewer-said').textContent === 'Copied the parameters'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == parameters
    assert "Steps: 3, Sampler: FlowMatchEuler, CFG scale: 1.5, Seed: 9001, Size: 256x192" in parameters
    page.locator("[data-viewer=copy-prompt]").click()
    page.wait_for_function("() => document.querySelector('.viewer-said').textContent === 'Copied the prompt'")
    assert page.evaluate("navigator.clipboard.readText()") == PROMPT

    # Escape closes it; focus returns to the card last shown.
    page.keyboard.press("ArrowRight")
    assert shown(page) == fulls[1]
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => !{OPEN}")
    assert page.evaluate("document.activeElement.dataset.full") == fulls[1]

    # The close button closes it too; Enter on the focused card opens it again.
    page.keyboard.press("Enter")
    page.wait_for_function(OPEN)
    assert shown(page) == fulls[1]
    page.locator("[data-viewer=close]").click()
    page.wait_for_function(f"() => !{OPEN}")

    # The card's own link still goes to the job page.
    page.locator("a.card-prompt").nth(0).click()
    page.wait_for_url(f"{web.url}/jobs/{jobs[0]['id']}")


def test_use_these_settings_fills_the_home_form(web: Server, jobs: list[dict[str, Any]], page: Page) -> None:
    page.goto(web.url + "/history")
    page.locator("a.card-image").nth(0).click()
    page.wait_for_function(OPEN)
    page.locator("[data-viewer=use]").click()
    page.wait_for_url(f"{web.url}/?use={jobs[0]['id']}")
    form = page.locator("form.job-form")
    # A textarea's value has LF line ends (the HTML standard normalizes them).
    assert form.locator("[name=prompt]").input_value() == PROMPT.replace("\r\n", "\n")
    names = ("negative_prompt", "width", "height", "steps", "guidance", "seed", "num_images")
    values = {name: form.locator(f"[name={name}]").input_value() for name in names}
    assert values == {name: str(NEWEST[name]) for name in names}


def test_home_recent_opens_the_viewer(web: Server, jobs: list[dict[str, Any]], page: Page) -> None:
    page.goto(web.url + "/")
    recent = page.locator(".recent a.card-image")
    assert recent.count() == 3
    recent.nth(1).click()
    page.wait_for_function(OPEN)
    assert shown(page) == jobs[1]["images"][0]
    page.keyboard.press("ArrowRight")
    assert shown(page) == jobs[2]["images"][0]
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => !{OPEN}")


def test_gallery_fits_a_phone(web: Server, jobs: list[dict[str, Any]], browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740})
    context.set_default_timeout(WAIT_MS)
    try:
        tab = context.new_page()
        tab.goto(web.url + "/history")
        assert tab.evaluate("document.documentElement.scrollWidth") <= 375
        tab.locator("a.card-image").nth(0).click()
        tab.wait_for_function(OPEN)
        box = tab.locator("#viewer").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        assert tab.evaluate("document.documentElement.scrollWidth") <= 375
    finally:
        context.close()
