"""Accessibility, dark mode and phones, in real Chromium: axe-core (from the npm registry, installed by
scripts/setup.sh test) on every page in light and dark, no sideways scrolling at 375 px, and the
screenshots a person looks at (test-output/screenshots/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from .browsing import SHOTS, watched_tab
from .conftest import Server, follow, start_server, submit
from .test_browser import wait_for_panel

AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = {"serious", "critical"}
PHONE = {"width": 375, "height": 812}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("browser-a11y"), models_dir)
    with srv.client() as client:  # content for every page: done jobs for the gallery and the reports
        for width, height in [(256, 256), (384, 256), (256, 384)]:
            follow(client, submit(client, width=width, height=height, steps=4)["id"])
    yield srv
    srv.stop()


def pages(web: Server) -> dict[str, str]:
    with web.client() as client:
        done = client.get("/api/jobs", params={"status": "done", "limit": 1}).json()
    job_id = done["jobs"][0]["id"]
    return {"home": "/", "job": f"/jobs/{job_id}", "history": "/history", "reports": "/reports"}


def serious_violations(tab: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now. Evaluated through the
    DevTools protocol, which the page's Content-Security-Policy does not govern."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: scripts/setup.sh test installs axe-core with npm ci")
    tab.evaluate(AXE.read_text())
    result: dict[str, Any] = tab.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in result["violations"]
        if v["impact"] in SERIOUS
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_accessibility_violations_on_any_page(web: Server, browser: Browser, scheme: str) -> None:
    found = {}
    with watched_tab(browser, color_scheme=scheme) as tab:
        for name, path in pages(web).items():
            tab.goto(web.url + path)
            found[name] = serious_violations(tab)
            tab.screenshot(path=str(SHOTS / f"{name}-{scheme}.png"), full_page=True)
    assert found == {name: [] for name in found}, found


def test_a_running_job_page_is_accessible_and_its_bar_is_a_progressbar(web: Server, browser: Browser) -> None:
    with web.client() as client:
        job = submit(client, width=1024, height=1024, steps=40)
    with watched_tab(browser) as tab:
        tab.goto(f"{web.url}/jobs/{job['id']}")
        wait_for_panel(tab, "running", 2)
        bar = tab.get_by_role("progressbar")
        assert bar.count() == 1
        assert 0 < float(bar.evaluate("b => b.value")) < 100
        assert tab.locator("[aria-live=polite]").count() >= 1, "no live region announces the job's phases"
        assert serious_violations(tab) == []
        tab.screenshot(path=str(SHOTS / "job-running-light.png"), full_page=True)
        wait_for_panel(tab, "done")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_fits_a_375_px_phone(web: Server, browser: Browser, scheme: str) -> None:
    wide = {}
    with watched_tab(browser, color_scheme=scheme, viewport=PHONE, is_mobile=True, has_touch=True) as tab:
        for name, path in pages(web).items():
            tab.goto(web.url + path)
            overflow = tab.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            if overflow > 0:
                wide[name] = overflow
            if name in ("home", "history", "job"):
                tab.screenshot(path=str(SHOTS / f"{name}-375px-{scheme}.png"), full_page=True)
    assert wide == {}, f"pages that scroll sideways at 375 px (by px): {wide}"


def test_keyboard_reaches_the_form_and_shows_where_focus_is(web: Server, browser: Browser) -> None:
    reached = []
    with watched_tab(browser) as tab:
        tab.goto(web.url + "/")
        for _ in range(60):
            tab.keyboard.press("Tab")
            reached.append(
                tab.evaluate(
                    """() => {
                        const el = document.activeElement;
                        const style = getComputedStyle(el);
                        return {tag: el.tagName, name: el.name || el.textContent.trim().slice(0, 20),
                                outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0};
                    }"""
                )
            )
    names = {r["name"] for r in reached}
    assert {"prompt", "width", "height", "steps", "num_images"} <= names, names
    assert any(r["tag"] == "BUTTON" and r["name"].startswith("Generate") for r in reached), reached
    assert all(r["outline"] for r in reached if r["tag"] != "BODY"), [r for r in reached if not r["outline"]]
