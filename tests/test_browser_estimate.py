"""The home page's estimate in real Chromium: it is there before anything is typed, follows the form's
size, steps and presets (htmx, debounced), and says what GET /api/estimate says for the same values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from .browsing import SHOTS, watched_tab
from .conftest import Server, follow, start_server, submit
from .test_estimate import preset_text

WAIT_MS = 90_000  # two cores shared with other work: generous, and only ever waited on a condition


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("browser-estimate"), models_dir)
    yield srv
    srv.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A tab that may leave no console error (a CSP violation, a failed request) and no dialog."""
    with watched_tab(browser) as tab:
        yield tab


def api(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/api/estimate", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def shown(page: Page) -> str:
    return page.locator("#estimate .estimate-text").inner_text().strip()


def wait_for_text(page: Page, text: str) -> None:
    """Until the estimate region says `text` (a refresh arrives after the debounce)."""
    page.wait_for_function(
        """(text) => {
            const shown = document.querySelector('#estimate .estimate-text');
            return shown && shown.textContent.trim() === text;
        }""",
        arg=text,
        timeout=WAIT_MS,
    )


def fill_size(page: Page, width: int, height: int, steps: int) -> None:
    page.fill("input[name=width]", str(width))
    page.fill("input[name=height]", str(height))
    page.fill("input[name=steps]", str(steps))


def test_estimate_follows_the_form_and_matches_the_api(web: Server, page: Page) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with web.client() as client:
        # Nothing has run: the page says it does not know, in the polite live region by the button.
        page.goto(web.url + "/")
        unknown = api(client)
        assert unknown["run_s"] is None
        assert shown(page) == unknown["text"]
        assert "unknown until the first job" in shown(page)
        region = page.locator("output#estimate")
        assert region.get_attribute("aria-live") == "polite"
        assert page.locator("button.preset .preset-eta").all_inner_texts() == ["time unknown"] * 3

        done = follow(client, submit(client, width=256, height=256, steps=4)["id"])[-1]
        assert done.event == "done"

        page.reload()
        # The size that has run: typed in, the estimate is its history's, word for word the API's.
        fill_size(page, 256, 256, 4)
        known = api(client, width=256, height=256, steps=4, num_images=1)
        assert known["source"] == "size" and known["run_s"] is not None
        wait_for_text(page, known["text"])
        assert shown(page).startswith("about ")

        # Another size: it changes, and says the figure comes without history of that size.
        fill_size(page, 512, 256, 4)
        unseen = api(client, width=512, height=256, steps=4, num_images=1)
        assert unseen["source"] in ("cost-model", "scaled")
        wait_for_text(page, unseen["text"])
        assert shown(page).startswith("no history for this size yet: roughly ")

        # More images: the estimate and every preset's figure follow.
        page.fill("input[name=num_images]", "2")
        doubled = api(client, width=512, height=256, steps=4, num_images=2)
        wait_for_text(page, doubled["text"])
        presets = [
            api(client, width=w, height=h, steps=8, num_images=2)
            for w, h in ((768, 768), (1024, 1024), (1536, 1024))
        ]
        page.wait_for_function(
            """(wanted) => {
                const etas = [...document.querySelectorAll('button.preset .preset-eta')];
                return etas.map(e => e.textContent.trim()).join('|') === wanted.join('|');
            }""",
            arg=[preset_text(answer) for answer in presets],
            timeout=WAIT_MS,
        )

        # A preset click fills the form (no input event of its own): the estimate refreshes for it.
        page.fill("input[name=num_images]", "1")
        page.locator("button.preset", has_text="draft").click()
        draft = api(client, width=768, height=768, steps=8, num_images=1)
        wait_for_text(page, draft["text"])
        assert page.locator("input[name=width]").input_value() == "768"
        assert page.locator("button.preset .preset-eta").first.inner_text().strip() == preset_text(draft)
        page.screenshot(path=str(SHOTS / "home-estimate.png"), full_page=True)

        # A value the server would refuse: said in the region, nothing else breaks.
        page.fill("input[name=width]", "17")
        wait_for_text(page, "no estimate until the form is valid: width must be between 64 and 2048 (got 17)")


def test_estimate_without_javascript_is_rendered_with_the_page(web: Server, browser: Browser) -> None:
    with watched_tab(browser, java_script_enabled=False) as tab:
        tab.goto(web.url + "/")
        with web.client() as client:
            assert tab.locator("#estimate .estimate-text").inner_text().strip() == api(client)["text"]
