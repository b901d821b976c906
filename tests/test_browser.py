"""The pages in real Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from .browsing import SHOTS, Problems, watched_tab
from .conftest import Server, follow, start_server, submit

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
    const phase = panel.querySelector('.phase');
    window.__panels.push({status: panel.dataset.status, step: Number(panel.dataset.step),
                          phase: phase ? phase.textContent.trim() : null,
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


@pytest.fixture
def problems() -> Problems:
    return Problems()


@pytest.fixture
def page(browser: Browser, problems: Problems) -> Iterator[Page]:
    """A tab that records every job-panel state; no test may leave a console error or a dialog."""
    with watched_tab(browser, problems, init_script=RECORD_PANEL) as tab:
        yield tab


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


def eta_seconds(text: str) -> float:
    """The ETA as the page writes it (templating.duration): "4.2 s", "38 s", "2 min 05 s"."""
    match = re.fullmatch(r"(?:(\d+) min )?(\d+(?:\.\d)?) s", text)
    assert match is not None, f"not a duration: {text!r}"
    return 60 * int(match.group(1) or 0) + float(match.group(2))


def panels(page: Page) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = page.evaluate("window.__panels || []")
    return recorded


def test_submit_from_home_page_follows_every_step_to_the_image(web: Server, page: Page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    prompt = "<b>bold</b> fox & hound"
    with web.client() as client:  # one job of this size before, so the ETA is known from the start
        follow(client, submit(client, width=1024, height=1024, steps=12)["id"])
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
    # The screenshot shows the finished image, not one still arriving.
    page.wait_for_function(
        "() => { const i = document.querySelector('img.result'); return i && i.complete; }"
    )
    page.screenshot(path=str(SHOTS / "job-done.png"))

    # Every step is rendered while the page keeps up, but not guaranteed: the server renders the panel
    # from the job's current state and skips an event when a newer one is already waiting for this
    # stream (routes/streams.py job_fragments; the broadcaster also replaces an undelivered step with
    # the next once the stream is 8 events behind). So a step is skipped only when the stream falls a
    # whole step behind the worker, as it can on a busy machine; what the user sees is still a counter
    # that only goes up and ends at N/N.
    seen = panels(page)
    running = [p for p in seen if p["status"] == "running"]
    steps = [p["step"] for p in running]
    assert steps == sorted(steps), "the step counter never goes back"
    assert max(steps) == 12, f"the bar showed steps {sorted(set(steps))}"
    assert len(set(steps)) >= 6, f"the bar advanced step by step, not in one jump: {sorted(set(steps))}"
    percents = [p["percent"] for p in running if p["percent"] is not None]
    assert percents == sorted(percents) and percents[-1] > 50, percents

    # The ETA is shown from the start (learned from the job before) and counts down while denoising.
    # It is an honest estimate, not a timer: when steps slow down (another process takes the CPU) it
    # rises, as it should, so the check is that it mostly falls, ends denoising below where it began, and
    # reaches zero by the end (what is left after the last step is the decode, which on the tiny model
    # at 1024² takes longer than the steps).
    shown = [(p["phase"], p["step"], p["eta"]) for p in running if p["phase"] != "Starting…"]
    assert shown and all(eta != "estimating…" for _, _, eta in shown), shown
    denoising = [eta_seconds(eta) for phase, _, eta in shown if phase == "Denoising"]
    falls = sum(b < a for a, b in pairwise(denoising))
    rises = sum(b > a for a, b in pairwise(denoising))
    assert falls >= 4 and falls > 2 * rises, f"the ETA did not count down: {shown}"
    assert denoising[-1] < denoising[0], f"the ETA did not count down: {shown}"
    assert eta_seconds(shown[-1][2]) < 0.5 * eta_seconds(shown[0][2]), f"the ETA did not count down: {shown}"

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


def test_reload_mid_run_continues_where_it_was(web: Server, page: Page) -> None:
    with web.client() as client:
        job = submit(client, width=1024, height=1024, steps=40)
    page.goto(f"{web.url}/jobs/{job['id']}")
    wait_for_panel(page, "running", 3)
    before = page.locator(".job-panel").evaluate(
        "p => ({step: Number(p.dataset.step), percent: Number(p.querySelector('progress').value)})"
    )
    page.reload()

    # The first state the reloaded page shows is the server's render, before any event arrives.
    first = panels(page)[0]
    assert first["status"] == "running", first
    assert first["step"] >= before["step"], (before, first)
    assert first["percent"] >= before["percent"] > 0, (before, first)

    wait_for_panel(page, "done")
    seen = panels(page)
    running = [p for p in seen if p["status"] == "running"]
    assert [p["step"] for p in running] == sorted(p["step"] for p in running)
    assert [p["percent"] for p in running] == sorted(p["percent"] for p in running)
    assert running[-1]["step"] == 40
    assert page.locator(".job-panel progress").count() == 0
    assert page.locator("img.result").evaluate("img => img.complete && img.naturalWidth") == 1024


HOSTILE_PROMPT = """<script>alert(1)</script> " onmouseover="alert(2) ' onmouseover='alert(3)"""


def test_html_in_a_prompt_is_text_on_every_page(web: Server, page: Page, problems: Problems) -> None:
    with web.client() as client:
        job = submit(client, prompt=HOSTILE_PROMPT)
        assert follow(client, job["id"])[-1].event == "done"
    links = f"a[href='/jobs/{job['id']}']"

    def assert_inert() -> None:
        injected = page.evaluate(
            """() => ({
                handlers: document.querySelectorAll('[onmouseover]').length,
                scripts: [...document.scripts].filter(s => s.textContent.includes('alert(')).length,
            })"""
        )
        assert injected == {"handlers": 0, "scripts": 0}, page.url
        for link in page.locator(links).all():
            link.hover()  # where an injected handler would fire

    page.goto(web.url + "/")
    assert_inert()
    assert page.locator(f".recent {links}.card-image").get_attribute("title") == HOSTILE_PROMPT

    page.goto(f"{web.url}/jobs/{job['id']}")
    assert_inert()
    assert page.locator("h1.prompt-title").inner_text() == HOSTILE_PROMPT
    page.locator("h1.prompt-title").hover()

    page.goto(web.url + "/history")
    assert_inert()
    assert HOSTILE_PROMPT in page.locator(links).all_inner_texts()
    assert problems.dialogs == []


@pytest.mark.parametrize("name", ["home", "history", "reports"])
def test_pages_render_without_errors(web: Server, page: Page, name: str) -> None:
    """Screenshots of the pages (after the jobs above, so they have content); the page fixture fails
    the test on any console error, such as a Content-Security-Policy violation."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    response = page.goto(web.url + ("/" if name == "home" else f"/{name}"))
    assert response is not None and response.status == 200, name
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
