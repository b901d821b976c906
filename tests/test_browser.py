"""The pages in real Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from .conftest import Server, start_server, submit

CHROMIUM = "/usr/bin/chromium"
# The closed network here refuses Chromium's background connections; these flags keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"

# Records every state the job panel shows, from first paint on, so the test sees each SSE swap.
RECORD_PANEL = """
document.addEventListener('DOMContentLoaded', () => {
  const live = document.getElementById('job-live');
  if (!live) return;
  window.__panels = [];
  const record = () => {
    const panel = live.querySelector('.job-panel');
    if (!panel) return;
    const eta = panel.querySelector('.eta');
    const bar = panel.querySelector('progress');
    window.__panels.push({status: panel.dataset.status, step: Number(panel.dataset.step),
                          eta: eta ? eta.textContent : null, percent: bar ? Number(bar.value) : null});
  };
  record();
  new MutationObserver(record).observe(live, {childList: true, subtree: true});
});
"""


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("browser"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh test installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_init_script(RECORD_PANEL)
    tab = context.new_page()
    yield tab
    context.close()


def wait_for_panel(page: Page, status: str, min_step: int = 0, timeout_ms: int = 90_000) -> None:
    """Wait until the job panel shows `status` at step `min_step` or later (a slow page may skip steps)."""
    page.wait_for_function(
        """([status, step]) => {
            const panel = document.querySelector('.job-panel');
            return panel && panel.dataset.status === status && Number(panel.dataset.step) >= step;
        }""",
        arg=[status, min_step],
        timeout=timeout_ms,
    )


def panels(page: Page) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = page.evaluate("window.__panels || []")
    return recorded


def test_submit_from_home_page_follows_every_step_to_the_image(web: Server, page: Page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    prompt = "<b>bold</b> fox & hound"
    page.goto(web.url + "/")
    page.fill("textarea[name=prompt]", prompt)
    page.fill("input[name=width]", "1024")
    page.fill("input[name=height]", "1024")
    page.fill("input[name=steps]", "12")
    page.click("button.primary")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{16}$"))

    wait_for_panel(page, "running", 3)
    page.screenshot(path=str(SHOTS / "job-mid-run.png"))
    wait_for_panel(page, "done")
    page.screenshot(path=str(SHOTS / "job-done.png"))

    seen = panels(page)
    running = [p for p in seen if p["status"] == "running"]
    steps = [p["step"] for p in running]
    assert steps == sorted(steps), "the step counter never goes back"
    assert max(steps) == 12, f"the bar showed steps {sorted(set(steps))}"
    assert len(set(steps)) >= 6, f"the bar advanced step by step, not in one jump: {sorted(set(steps))}"
    percents = [p["percent"] for p in running if p["percent"] is not None]
    assert percents == sorted(percents) and percents[-1] > 50, percents
    etas = [p["eta"] for p in running if p["step"] >= 2]
    assert any(re.fullmatch(r"\d+(\.\d)? s", eta or "") for eta in etas), etas

    # The image replaced the bar, and the prompt's HTML shows as text.
    assert page.locator(".job-panel progress").count() == 0
    image = page.locator("img.result")
    assert image.evaluate("img => img.complete && img.naturalWidth") == 1024
    assert page.locator("h1.prompt-title").inner_text() == prompt
    assert page.locator("h1.prompt-title b").count() == 0


def test_second_tab_mid_run_shows_the_same_state_at_once(web: Server, browser: Browser, page: Page) -> None:
    with web.client() as client:
        job = submit(client, width=1024, height=1024, steps=30)
        url = f"{web.url}/jobs/{job['id']}"
        page.goto(url)
        wait_for_panel(page, "running", 4)

        # The page as the server renders it, before any SSE event: already mid-run.
        served = client.get(url).text
    match = re.search(r'data-status="(\w+)" data-step="(\d+)"', served)
    assert match is not None and match.group(1) == "running" and int(match.group(2)) >= 4, served[:500]

    context = browser.new_context()
    try:
        second = context.new_page()
        second.goto(url, wait_until="domcontentloaded")
        status, step = second.locator(".job-panel").evaluate(
            "p => [p.dataset.status, Number(p.dataset.step)]"
        )
        assert status == "running" and step >= 4
        wait_for_panel(second, "done")
        # htmx pauses the stream of a hidden tab; coming back to it resumes from Last-Event-ID.
        page.bring_to_front()
        wait_for_panel(page, "done")
        assert second.locator("img.result").count() == 1
        assert page.locator("img.result").count() == 1
    finally:
        context.close()


def test_cancel_button_stops_a_running_job(web: Server, page: Page) -> None:
    with web.client() as client:
        job = submit(client, width=2048, height=2048, steps=40)
        page.goto(f"{web.url}/jobs/{job['id']}")
        wait_for_panel(page, "running", 1)
        page.click(".job-panel .cancel button")
        wait_for_panel(page, "cancelled", timeout_ms=60_000)
        assert "Cancelled" in page.locator(".job-panel").inner_text()
        state = client.get(f"/api/jobs/{job['id']}").json()
    assert state["status"] == "cancelled"
    assert state["step"] < 40
    assert state["images"] == []
