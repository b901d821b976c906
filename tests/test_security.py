"""Security against real servers: escaping, cross-site posts, path traversal, headers, the access token."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser

from zimage_sse.security import SESSION_COOKIE, SESSION_MAX_AGE_S, session_cookie

from .conftest import BusyWorker, Server, follow, read_sse, submit
from .test_browser import RECORD_PANEL
from .test_client import cli, client_env
from .test_pages import HOSTILE, Page, job_count

TOKEN = "correct horse battery staple"
EVIL = "http://evil.example"
HTML = {"Accept": "text/html,application/xhtml+xml"}


def assert_escaped(html: str, where: str) -> None:
    assert "<script>alert" not in html, where
    assert 'onmouseover="x' not in html, where
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, where


# -- escaping ------------------------------------------------------------------------------------------


def test_prompts_are_text_in_the_live_job_fragments_and_the_negative_prompt(server: Server) -> None:
    """What tests/test_pages.py does not reach: the job panel's SSE fragments (the done panel puts the
    prompt in the image's alt text) and the negative prompt on the job page."""
    with server.client() as client:
        job = submit(client, prompt=HOSTILE, negative_prompt=HOSTILE, steps=1)
        with client.stream("GET", f"/jobs/{job['id']}/stream") as response:
            fragments = read_sse(response)
        assert [f.event for f in fragments][-1] == "end"
        done = fragments[-2].data
        assert 'data-status="done"' in done
        assert_escaped(done, "done fragment")
        page = client.get(f"/jobs/{job['id']}").text
        assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # title, negative prompt, alt
        assert_escaped(page, "job page")


def test_ids_from_the_url_are_escaped_on_error_pages(server: Server) -> None:
    with server.client() as client:
        response = client.get("/jobs/<img src=x onerror=alert(1)>", headers=HTML)
    assert response.status_code == 404
    assert "<img src=x" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in response.text


# -- headers -------------------------------------------------------------------------------------------


def csp(response: httpx.Response) -> dict[str, str]:
    parts = (part.strip() for part in response.headers["content-security-policy"].split(";"))
    return {part.partition(" ")[0]: part.partition(" ")[2] for part in parts if part}


def test_every_answer_carries_the_csp_and_nosniff_headers(server: Server) -> None:
    with server.client() as client:
        job = submit(client, prompt="headers", steps=1)
        follow(client, job["id"])
        answers = {
            "page": client.get("/"),
            "api": client.get("/api/jobs"),
            "static": client.get("/static/app.css"),
            "image": client.get(f"/images/{job['id']}-0.png"),
            "404": client.get("/api/jobs/0123456789abcdef"),
            "422": client.post("/api/jobs", json={"prompt": ""}),
        }
        with client.stream("GET", f"/api/jobs/{job['id']}/events") as response:
            answers["sse"] = response
    for where, response in answers.items():
        policy = csp(response)
        assert policy["script-src"] == "'self'", where
        assert "unsafe" not in response.headers["content-security-policy"], where
        assert policy["img-src"] == "'self' data:", where  # previews are data: URLs
        assert policy["connect-src"] == "'self'", where
        assert policy["frame-ancestors"] == "'none'", where
        assert policy["form-action"] == "'self'", where
        assert policy["base-uri"] == "'none'", where
        assert response.headers["x-content-type-options"] == "nosniff", where
        assert response.headers["referrer-policy"] == "same-origin", where


def test_pages_have_no_inline_code_the_csp_would_block(server: Server) -> None:
    """Inline scripts, on* handlers and hx-on (run through `new Function`) all need 'unsafe-…'."""
    with server.client() as client:
        job = submit(client, prompt="inline code", steps=1)
        follow(client, job["id"])
        pages = {path: client.get(path).text for path in ("/", f"/jobs/{job['id']}", "/history")}
    for path, html in pages.items():
        page = Page(html)
        for tag, attrs in page.elements:
            if tag == "script":
                assert attrs.get("src", "").startswith("/static/"), (path, attrs)
            handlers = [name for name in attrs if name.startswith(("on", "hx-on"))]
            assert not handlers, (path, tag, handlers)
            assert "style" not in attrs, (path, tag)
        assert "<style" not in html, path


# -- cross-site requests -------------------------------------------------------------------------------


def test_cross_site_posts_are_refused_and_queue_nothing(server: Server) -> None:
    host = urlsplit(server.url).netloc
    body = {"prompt": "cross-site", "width": 256, "height": 256, "steps": 1}
    refused = [
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Referer": f"{EVIL}/page"},
        {"Sec-Fetch-Site": "cross-site", "Origin": EVIL},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://other.{host}"},
        {"Origin": f"https://{host}.evil.example"},
    ]
    with server.client() as client:
        before = job_count(client)
        for headers in refused:
            response = client.post("/api/jobs", json=body, headers=headers)
            assert response.status_code == 403, headers
            assert "Cross-site request refused" in response.json()["error"], headers
            form = client.post("/jobs", data={"prompt": "cross-site form"}, headers={**HTML, **headers})
            assert form.status_code == 403, headers
            assert "Cross-site request refused" in Page(form.text).text
        assert job_count(client) == before

        with BusyWorker(client):
            queued = submit(client, prompt="cancelled only from our own pages", steps=1)
            cancel = client.post(f"/jobs/{queued['id']}/cancel", headers={**HTML, "Origin": EVIL})
            assert cancel.status_code == 403
            assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "queued"

            # Our own pages, and clients that are not browsers (no Origin, Referer or Sec-Fetch-Site).
            own = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
            cancel = client.post(f"/jobs/{queued['id']}/cancel", headers={**HTML, **own})
            assert cancel.status_code == 303
            assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "cancelled"
        for headers in (own, {"Origin": server.url}, {"Referer": f"{server.url}/"}, {}):
            response = client.post("/api/jobs", json=body, headers=headers)
            assert response.status_code == 201, headers
            follow(client, response.json()["id"])


# -- path traversal ------------------------------------------------------------------------------------


def raw_get(server: Server, path: str) -> tuple[int, bytes]:
    """A request with the path exactly as written: httpx would resolve the dot segments itself."""
    netloc = urlsplit(server.url).netloc
    connection = http.client.HTTPConnection(netloc, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


TRAVERSALS = [
    "/images/../zimage-sse.db",
    "/images/..%2fzimage-sse.db",
    "/images/%2e%2e%2fzimage-sse.db",
    "/images/%2e%2e/zimage-sse.db",
    "/images/..%5czimage-sse.db",
    "/images/%2fetc%2fpasswd",
    "/images//etc/passwd",
    "/images/{job}-0.png/../../zimage-sse.db",
    "/images/{job}-0.png%2f..%2f..%2fzimage-sse.db",
    "/thumbs/../zimage-sse.db",
    "/thumbs/..%2fzimage-sse.db",
    "/thumbs/%2e%2e%2f%2e%2e%2fpyproject.toml",
    "/thumbs/%2fetc%2fpasswd",
    "/static/../pyproject.toml",
    "/static/%2e%2e/pyproject.toml",
    "/static/%2e%2e%2fpyproject.toml",
    "/static/..%2f..%2fpyproject.toml",
    "/static/..%5cpyproject.toml",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/vendor/../../pyproject.toml",
    "/static/vendor/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
    "/static/vendor/..%2f..%2f..%2fpyproject.toml",
]


def test_image_and_static_routes_serve_nothing_outside_their_folders(server: Server) -> None:
    with server.client() as client:
        job = submit(client, prompt="traversal", steps=1)
        follow(client, job["id"])
    # The routes work for what they are for…
    assert raw_get(server, f"/images/{job['id']}-0.png")[0] == 200
    assert raw_get(server, "/static/app.css")[0] == 200
    # …and for nothing else: not the database next to the images, nor the project or the system.
    for template in TRAVERSALS:
        path = template.replace("{job}", job["id"])
        status, body = raw_get(server, path)
        assert status in (400, 404), (path, status)
        for secret in (b"SQLite format", b"[project]", b"root:"):
            assert secret not in body, path


# -- the access token ----------------------------------------------------------------------------------


@pytest.fixture
def guarded(make_server: Callable[..., Server]) -> Server:
    return make_server(token=TOKEN)


PROTECTED = [
    ("GET", "/api/jobs"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs/{job}"),
    ("POST", "/api/jobs/{job}/cancel"),
    ("GET", "/api/jobs/{job}/events"),
    ("GET", "/api/events"),
    ("GET", "/api/status"),
    ("GET", "/api/openapi.json"),
    ("GET", "/images/{job}-0.png"),
    ("GET", "/jobs/{job}/stream"),
    ("GET", "/queue/stream"),
    ("GET", "/metrics"),
]


def test_without_the_token_the_api_streams_images_and_metrics_answer_401(guarded: Server) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with guarded.client() as client:
        job = submit(httpx.Client(base_url=guarded.url, headers=bearer, timeout=60), prompt="secret", steps=1)
        with client.stream("GET", f"/api/jobs/{job['id']}/events", headers=bearer) as response:
            assert read_sse(response)[-1].event == "done"
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, template in PROTECTED:
                path = template.replace("{job}", job["id"])
                response = client.request(method, path, headers=wrong, json={"prompt": "x"})
                assert response.status_code == 401, (method, path, wrong)
                assert response.headers["www-authenticate"].startswith("Bearer"), path
                assert "token" in response.json()["error"], path
        listed = client.get("/api/jobs", headers=bearer).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]  # the refused POSTs queued nothing
        assert client.get(f"/images/{job['id']}-0.png", headers=bearer).status_code == 200
        # Probes, static files and the login page stay open.
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code in (200, 503)
        assert client.get("/static/app.css").status_code == 200
        assert client.get("/login").status_code == 200


def test_pages_send_you_to_login_and_back_with_a_cookie_that_is_not_the_token(guarded: Server) -> None:
    with guarded.client(headers=HTML) as client:
        response = client.get("/history?page=2")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fhistory%3Fpage%3D2"

        wrong = client.post("/login", data={"token": "guess", "next": "/history"})
        assert wrong.status_code == 401
        assert "not this server's token" in Page(wrong.text).text
        assert SESSION_COOKIE not in client.cookies

        login = client.post("/login", data={"token": TOKEN, "next": "/history?page=2"})
        assert login.status_code == 303
        assert login.headers["location"] == "/history?page=2"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
        assert TOKEN not in cookie and TOKEN.replace(" ", "+") not in cookie
        assert client.get("/history").status_code == 200
        assert client.get("/").status_code == 200
        form = {"prompt": "by cookie", "width": "256", "height": "256", "steps": "1"}
        job = client.post("/jobs", data=form)
        assert job.status_code == 303
        job_id = job.headers["location"].rsplit("/", 1)[1]
        with client.stream("GET", f"/jobs/{job_id}/stream") as stream:  # what htmx's SSE sends
            assert stream.status_code == 200
            assert read_sse(stream)[-1].event == "end"
        assert client.get(f"/images/{job_id}-0.png").status_code == 200

        logout = client.post("/logout")
        assert logout.status_code == 303
        assert SESSION_COOKIE not in client.cookies
        assert client.get("/").status_code == 303


def test_login_goes_back_only_to_this_server(guarded: Server) -> None:
    with guarded.client(headers=HTML) as client:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
            login = client.post("/login", data={"token": TOKEN, "next": target})
            assert login.headers["location"] == "/", target
        form = client.get("/login", params={"next": '/"><script>alert(1)</script>'})
        assert "<script>alert" not in form.text
        assert Page(form.text).find("input", name="next", value='/"><script>alert(1)</script>')


def test_forged_and_expired_cookies_are_refused(guarded: Server) -> None:
    now = int(time.time())
    cookies = {
        "forged": session_cookie("another token", now),
        "expired": session_cookie(TOKEN, now - SESSION_MAX_AGE_S - 60),
        "from the future": session_cookie(TOKEN, now + 3600),
        "garbage": "x.y",
    }
    for name, value in cookies.items():
        with guarded.client(cookies={SESSION_COOKIE: value}) as client:
            assert client.get("/api/jobs").status_code == 401, name
    with guarded.client(cookies={SESSION_COOKIE: session_cookie(TOKEN, now)}) as client:
        assert client.get("/api/jobs").status_code == 200


def test_the_cli_sends_the_token(guarded: Server, tmp_path: Path) -> None:
    args = ["generate", "a guarded lighthouse", "--server", guarded.url, "--width", "256", "--height", "256"]
    args += ["--steps", "1", "--out", str(tmp_path / "out.png")]
    refused = cli(*args, cwd=tmp_path, env=client_env())
    assert refused.returncode == 6, refused.stderr
    assert "401" in refused.stderr
    done = cli(*args, cwd=tmp_path, env=client_env(ZIMAGE_SSE_TOKEN=TOKEN))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").stat().st_size > 0


# -- in Chromium: the CSP blocks nothing of ours, and the login cookie carries the live updates ----------


def test_in_chromium_login_presets_and_live_updates_work_under_the_csp(
    guarded: Server, browser: Browser
) -> None:
    context = browser.new_context()
    context.add_init_script(RECORD_PANEL)
    # Violations are reported as events in the page and as console errors; record both from the start.
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        page.goto(f"{guarded.url}/")
        assert urlsplit(page.url).path == "/login"
        page.fill("input[name=token]", TOKEN)
        page.click(".login-form button[type=submit]")
        page.wait_for_url(f"{guarded.url}/")

        page.click("button.preset >> nth=0")  # draft: 768×768, 8 steps (static/app.js)
        assert page.input_value("input[name=width]") == "768"
        page.fill("input[name=width]", "512")
        page.fill("input[name=height]", "512")
        page.fill("input[name=steps]", "30")
        page.fill("textarea[name=prompt]", "csp check")
        page.click("button.primary")
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{16}$"))
        # The panel is replaced by SSE fragments over the cookie-authenticated stream until the image.
        page.wait_for_selector(".job-panel[data-status=done] img.result", timeout=90_000)
        violations = page.evaluate("window.__violations")
        shown = page.evaluate("window.__panels.map(p => p.status)")
    finally:
        context.close()
    assert shown[0] in ("queued", "running") and shown[-1] == "done", shown  # it did go live
    assert violations == []
    assert not [line for line in console if "Content Security Policy" in line], console
