"""The server-rendered pages against real servers: what a person sees before any JavaScript runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser

import httpx

from zimage_sse.events import TERMINAL

from .conftest import SSE, BusyWorker, Server, follow, read_sse, submit

FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "seed", "num_images")
JOB_PAGE = re.compile(r"^/jobs/([0-9a-f]{16})$")
# A prompt that breaks out of an attribute and opens a script if it is not escaped.
HOSTILE = '<script>alert(1)</script>" onmouseover="x'


class Page(HTMLParser):
    """The elements of an HTML page with their attributes (entities decoded), and its visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._text: list[str] = []
        self.feed(html)
        self.close()
        self.text = " ".join(" ".join(self._text).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        """Elements `tag` with these attributes (a `_` in a keyword stands for `-`)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            found
            for name, found in self.elements
            if name == tag and all(found.get(k) == v for k, v in wanted.items())
        ]


def run_to_end(client: httpx.Client, job_id: str, busy: BusyWorker) -> list[SSE]:
    """Follow a queued job from its snapshot to its terminal event, releasing the worker once subscribed."""

    def on_event(event: SSE) -> bool:
        if event.event == "snapshot":
            busy.release()
        return False

    with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        events = read_sse(response, until=on_event)
    assert events and events[-1].event in TERMINAL, events
    return events


def history_row(html: str, job_id: str) -> dict[str, str]:
    """The history table's row for a job, as {column header: cell HTML}."""
    headers = [Page(cell).text for cell in re.findall(r"<th>(.*?)</th>", html, re.S)]
    rows = [row for row in re.findall(r"<tr[^>]*>(.*?)</tr>", html, re.S) if f"/jobs/{job_id}" in row]
    assert len(rows) == 1, f"job {job_id} is not listed once in the history"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0], re.S)
    assert len(cells) == len(headers), (headers, cells)
    return dict(zip(headers, cells, strict=True))


def job_count(client: httpx.Client) -> int:
    return len(client.get("/api/jobs", params={"limit": 500}).json()["jobs"])


def test_home_page_has_the_form_presets_live_queue_and_scripts(server: Server) -> None:
    with server.client() as client:
        response = client.get("/")
        assert response.status_code == 200
        page = Page(response.text)

        assert page.find("form", method="post", action="/jobs")
        named = {
            attrs["name"] for tag, attrs in page.elements if tag in ("input", "textarea") and "name" in attrs
        }
        assert set(FIELDS) <= named
        assert page.find("input", name="width", value="1024")
        assert page.find("input", name="steps", value="8")

        presets = {
            (attrs["data-width"], attrs["data-height"], attrs["data-steps"])
            for attrs in page.find("button", **{"class": "preset"})
        }
        assert presets == {("768", "768", "8"), ("1024", "1024", "8"), ("1536", "1024", "8")}
        for label in ("draft 768×768", "standard 1024×1024", "large 1536×1024"):
            assert label in page.text

        assert page.find("div", **{"hx-sse:connect": "/queue/stream"})
        scripts = {attrs.get("src") for attrs in page.find("script")}
        assert {"/static/vendor/htmx.min.js", "/static/vendor/ext/hx-sse.min.js"} <= scripts
        for src in ("/static/vendor/htmx.min.js", "/static/vendor/ext/hx-sse.min.js"):
            script = client.get(src)
            assert script.status_code == 200, src
            assert "javascript" in script.headers["content-type"], src
            assert len(script.content) > 1000, src

        # The embedded model's images are noise, and the page says how to use a real checkpoint.
        assert "noise" in page.text
        assert "zimage-sse serve --model" in page.text


def test_form_post_queues_a_job_and_its_page_follows_it(server: Server) -> None:
    form = {
        "prompt": "a red fox from the form",
        "negative_prompt": "",
        "width": "320",
        "height": "256",
        "steps": "4",
        "guidance": "0",
        "seed": "777",
        "num_images": "1",
    }
    with server.client() as client, BusyWorker(client) as busy:
        response = client.post("/jobs", data=form)
        assert response.status_code == 303
        match = JOB_PAGE.match(response.headers["location"])
        assert match, response.headers["location"]
        job_id = match.group(1)

        waiting = client.get(f"/jobs/{job_id}")
        assert waiting.status_code == 200
        page = Page(waiting.text)
        assert "a red fox from the form" in page.text
        assert "320×256" in page.text
        assert "777" in page.text
        assert page.find("div", **{"hx-sse:connect": f"/jobs/{job_id}/stream"})
        cancel = rf'<form[^>]*action="/jobs/{job_id}/cancel"[^>]*>\s*<button type="submit">\s*Cancel'
        assert page.find("form", method="post", action=f"/jobs/{job_id}/cancel")
        assert re.search(cancel, waiting.text)

        assert run_to_end(client, job_id, busy)[-1].event == "done"
        done = client.get(f"/jobs/{job_id}")
        page = Page(done.text)
        assert page.find("img", src=f"/images/{job_id}-0.png")
        assert "hx-sse:connect" not in done.text
        assert "a red fox from the form" in page.text and "777" in page.text


def test_invalid_form_is_shown_again_with_messages_and_nothing_queued(server: Server) -> None:
    form = {
        "prompt": "",
        "negative_prompt": "keep this negative",
        "width": "100",
        "height": "256",
        "steps": "0",
        "guidance": "0",
        "seed": "42",
        "num_images": "1",
    }
    with server.client() as client:
        before = job_count(client)
        response = client.post("/jobs", data=form)
        assert response.status_code == 422
        page = Page(response.text)
        assert "Nothing was queued" in page.text
        errors = re.findall(r'<span class="field-error">(.*?)</span>', response.text)
        assert "must not be empty" in errors
        assert "must be a multiple of 16 (got 100)" in errors
        assert "must be between 1 and 100 (got 0)" in errors
        for name in ("negative_prompt", "width", "height", "steps", "seed"):
            assert page.find("input", name=name, value=form[name]), name
        assert job_count(client) == before


def test_history_lists_done_and_failed_jobs(server: Server, make_server: Callable[..., Server]) -> None:
    with server.client() as client:
        job = submit(client, prompt="history: a quiet harbour", seed=31337, steps=3)
        follow(client, job["id"])
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "done"
        response = client.get("/history", params={"view": "table"})
        assert response.status_code == 200
        row = history_row(response.text, job["id"])
    assert Page(row[""]).find("img", src=f"/thumbs/{job['id']}-0.jpg")
    assert Page(row["Prompt"]).text == "history: a quiet harbour"
    assert Page(row["Size"]).text == "256×256"
    assert Page(row["Seed"]).text == "31337"
    assert Page(row["Status"]).text == "done"
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ min \d\d s", Page(row["Total"]).text), row["Total"]

    # The validator of this server accepts a width that the pipeline then rejects.
    failing = make_server(size_multiple="8")
    with failing.client() as client:
        job = submit(client, prompt="history: too wide", width=264)
        follow(client, job["id"])
        assert client.get(f"/api/jobs/{job['id']}").json()["status"] == "failed"
        row = history_row(client.get("/history", params={"view": "table"}).text, job["id"])
        status = Page(row["Status"]).text
        assert status.startswith("failed")
        assert "264" in status and "16" in status, status
        assert not Page(row[""]).find("img")
        assert "264" in Page(client.get(f"/jobs/{job['id']}").text).text


def test_prompts_are_escaped_everywhere(server: Server) -> None:
    def assert_escaped(html: str, where: str) -> None:
        assert "<script>alert" not in html, where
        assert 'onmouseover="x' not in html, where
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, where

    with server.client() as client, BusyWorker(client) as busy:
        job = submit(client, prompt=HOSTILE)
        home = client.get("/").text
        assert f"/jobs/{job['id']}" in home
        assert_escaped(home, "home queue")
        with client.stream("GET", "/queue/stream") as response:
            assert_escaped(read_sse(response, until=lambda e: True)[0].data, "queue stream")
        assert_escaped(client.get(f"/jobs/{job['id']}").text, "queued job page")
        assert HOSTILE in Page(client.get(f"/jobs/{job['id']}").text).text

        assert run_to_end(client, job["id"], busy)[-1].event == "done"
        assert_escaped(client.get(f"/jobs/{job['id']}").text, "done job page")
        recent = client.get("/").text
        assert f"/images/{job['id']}-0.png" in recent
        assert_escaped(recent, "home recent")
        history = client.get("/history").text
        assert f"/jobs/{job['id']}" in history
        assert_escaped(history, "history")


def test_unknown_job_page_is_a_404_page(server: Server) -> None:
    with server.client() as client:
        for job_id in ("0123456789abcdef", "not-a-job"):
            response = client.get(f"/jobs/{job_id}")
            assert response.status_code == 404, job_id
            assert response.headers["content-type"].startswith("text/html")
            page = Page(response.text)
            assert "Job not found" in page.text
            assert page.find("a", href="/")
