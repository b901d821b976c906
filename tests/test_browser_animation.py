"""The denoising as an animation in real Chromium: a done job's page plays the animated WebP and its
slider steps through the kept previews, also in a panel that htmx swapped in when the job ended."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from .browsing import SHOTS, watched_tab
from .conftest import BusyWorker, Server, follow, start_server, submit
from .test_browser import wait_for_panel

LOADED = "img => img.complete && img.naturalWidth > 0"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("browser-animation"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Page]:
    with watched_tab(browser) as page:
        yield page


def wait_loaded(page: Page, selector: str, src_end: str = "") -> None:
    page.wait_for_function(
        """([selector, end]) => {
            const img = document.querySelector(selector);
            return img && img.src.endsWith(end) && img.complete && img.naturalWidth > 0;
        }""",
        arg=[selector, src_end],
        timeout=90_000,
    )


def check_slider(page: Page, job_id: str, steps: int) -> None:
    """The slider starts at the last preview; ArrowLeft and Home move the shown frame and its label."""
    slider = page.locator("input.frame-slider")
    label = page.locator(".frame-label")
    frame = page.locator("img.frame-image")
    assert slider.get_attribute("max") == str(steps)
    assert label.inner_text() == f"Step {steps}/{steps}"
    wait_loaded(page, "img.frame-image", f"/jobs/{job_id}/frames/{steps}.jpg")

    slider.focus()
    page.keyboard.press("ArrowLeft")
    assert label.inner_text() == f"Step {steps - 1}/{steps}"
    assert frame.get_attribute("src") == f"/jobs/{job_id}/frames/{steps - 1}.jpg"
    assert slider.get_attribute("aria-valuetext") == f"Step {steps - 1}/{steps}"
    wait_loaded(page, "img.frame-image", f"/frames/{steps - 1}.jpg")
    page.keyboard.press("Home")
    assert label.inner_text() == f"Step 1/{steps}"
    assert frame.get_attribute("src") == f"/jobs/{job_id}/frames/1.jpg"
    assert frame.get_attribute("alt") == f"Preview at step 1 of {steps}"
    wait_loaded(page, "img.frame-image", "/frames/1.jpg")


def test_done_job_page_plays_the_animation_and_its_slider_steps_through(web: Server, tab: Page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with web.client() as client:
        job = submit(client, prompt="animation in the browser", width=512, height=512, steps=6)
        follow(client, job["id"])
    tab.goto(f"{web.url}/jobs/{job['id']}")
    wait_for_panel(tab, "done")
    animation = tab.locator("img.animation-image")
    assert animation.get_attribute("src") == f"/jobs/{job['id']}/animation.webp"
    tab.wait_for_function(f"() => ({LOADED})(document.querySelector('img.animation-image'))", timeout=90_000)
    assert animation.evaluate("img => img.naturalWidth") == 512  # it decoded: a real WebP
    assert tab.get_by_role("slider", name="Step through the previews").is_visible()
    assert tab.get_by_role("link", name="Download WebP").get_attribute("href") == (
        f"/jobs/{job['id']}/animation.webp?download=1"
    )
    check_slider(tab, job["id"], 6)
    tab.screenshot(path=str(SHOTS / "job-done-animation.png"), full_page=True)


def test_the_slider_works_in_a_panel_swapped_in_when_the_job_ends(web: Server, tab: Page) -> None:
    with web.client() as client, BusyWorker(client) as busy:
        job = submit(client, prompt="animation after a swap", width=256, height=256, steps=4)
        tab.goto(f"{web.url}/jobs/{job['id']}")
        wait_for_panel(tab, "queued")
        assert tab.locator("input.frame-slider").count() == 0
        busy.release()
    wait_for_panel(tab, "done")  # the panel came over SSE: the page itself was never reloaded
    tab.wait_for_function(f"() => ({LOADED})(document.querySelector('img.animation-image'))", timeout=90_000)
    check_slider(tab, job["id"], 4)


def test_without_javascript_the_animation_and_frame_links_show(web: Server, browser: Browser) -> None:
    with web.client() as client:
        job = submit(client, prompt="animation without js", width=256, height=256, steps=3)
        follow(client, job["id"])
    with watched_tab(browser, java_script_enabled=False) as page:
        page.goto(f"{web.url}/jobs/{job['id']}")
        assert page.locator("img.animation-image").evaluate(LOADED)
        assert not page.locator("input.frame-slider").is_visible()  # it could move nothing
        links = page.locator(".frame-links a")
        assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
            f"/jobs/{job['id']}/frames/{step}.jpg" for step in (1, 2, 3)
        ]
