"""The home page's form shortcuts and the tab title, in real Chromium: the aspect-ratio buttons give
valid sizes, Ctrl+Enter submits, and the tab title follows a job to its end on the job page and, for
the newest job queued from it, on the home page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from zimage_sse.config import Settings
from zimage_sse.params import validate

from .browsing import watched_tab
from .conftest import Server, start_server
from .test_browser import wait_for_panel

# Records every title the tab shows, from first paint on.
RECORD_TITLES = """
document.addEventListener('DOMContentLoaded', () => {
  window.__titles = [document.title];
  const title = document.querySelector('title');
  new MutationObserver(() => window.__titles.push(document.title))
    .observe(title, {childList: true, characterData: true, subtree: true});
});
"""
RUNNING = re.compile(r"^\[(\d+)%\] (?:.+ left|ETA unknown) · zimage-sse$")


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("browser-title"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Page]:
    with watched_tab(browser, init_script=RECORD_TITLES) as page:
        yield page


def titles(page: Page) -> list[str]:
    seen: list[str] = page.evaluate("window.__titles || []")
    return seen


def test_aspect_buttons_fill_valid_sizes_at_the_chosen_area(web: Server, tab: Page) -> None:
    tab.goto(web.url + "/")
    width, height = tab.locator("input[name=width]"), tab.locator("input[name=height]")
    sizes = []
    for area in ["1048576", "262144", "4194304"]:
        tab.select_option("[data-aspect-area]", area)
        for ratio in ["1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16"]:
            button = tab.locator("button.aspect", has_text=ratio)
            button.click()
            w, h = int(width.input_value()), int(height.input_value())
            assert button.locator(".aspect-size").inner_text() == f"{w}×{h}"
            across, down = map(int, ratio.split(":"))
            assert abs((w / h) / (across / down) - 1) < 0.04, (ratio, w, h)
            # The size is one a job accepts (this raises InvalidRequest if not).
            validate({"prompt": "x", "width": w, "height": h}, Settings())
            sizes.append((area, ratio, w, h))
    by = {(area, ratio): (w, h) for area, ratio, w, h in sizes}
    assert by[("1048576", "1:1")] == (1024, 1024)
    assert by[("1048576", "16:9")] == (1360, 768)
    assert by[("262144", "9:16")] == (384, 688)
    assert by[("4194304", "4:3")] == (2048, 1536), "4 MP is held within the 2048 px side"
    # An upright ratio is the landscape one turned.
    assert by[("1048576", "3:4")] == by[("1048576", "4:3")][::-1]


def test_ctrl_enter_submits_and_the_title_follows_the_job_to_its_end(web: Server, tab: Page) -> None:
    tab.goto(web.url + "/")
    assert tab.title() == "Generate · zimage-sse"
    tab.fill("textarea[name=prompt]", "a red kite over the dunes")
    tab.fill("input[name=width]", "1024")
    tab.fill("input[name=height]", "1024")
    tab.fill("input[name=steps]", "24")
    tab.locator("input[name=steps]").press("Control+Enter")
    tab.wait_for_url(re.compile(r"/jobs/[0-9a-f]{16}$"), timeout=60_000)
    wait_for_panel(tab, "done")
    tab.wait_for_function("() => document.title.startsWith('Done')", timeout=30_000)

    seen = titles(tab)
    assert seen[-1] == "Done · a red kite over the dunes · zimage-sse", seen
    running = [int(m.group(1)) for t in seen if (m := RUNNING.match(t))]
    assert len(running) >= 3, f"the title did not follow the run: {seen}"
    assert running == sorted(running), f"the title's percent went back: {seen}"
    # Before the end every title is a state of the job, never the page's name.
    assert all(RUNNING.match(t) or t.startswith("Queued") for t in seen[:-1]), seen
    # The phase changes and the end were announced, once each, not every step.
    announced = tab.locator("[data-announce]").inner_text()
    assert announced.startswith("Done"), announced


def test_the_home_page_title_follows_the_newest_job_queued_from_it(web: Server, tab: Page) -> None:
    tab.goto(web.url + "/")
    tab.fill("textarea[name=prompt]", "a slow long job")
    tab.fill("input[name=width]", "1024")
    tab.fill("input[name=height]", "1024")
    tab.fill("input[name=steps]", "60")
    tab.click("button.primary")
    tab.wait_for_url(re.compile(r"/jobs/[0-9a-f]{16}$"), timeout=60_000)
    job_url = tab.url
    wait_for_panel(tab, "running", 2)

    # Back on the home page (to queue the next one, say), the tab still says how the job is doing.
    tab.goto(web.url + "/")
    tab.wait_for_function("() => document.title.startsWith('Done')", timeout=120_000)
    seen = titles(tab)
    assert RUNNING.match(seen[0]), f"the home page's first paint did not show the job: {seen}"
    assert seen[-1] == "Done · a slow long job · zimage-sse", seen

    # Once it has ended, a new visit to the home page is the plain page again.
    tab.goto(web.url + "/")
    assert tab.title() == "Generate · zimage-sse"
    tab.goto(job_url)
    assert tab.title() == "Done · a slow long job · zimage-sse"
