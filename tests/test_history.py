"""History against real servers: paging and filters, the job page, delete, and retention."""

from __future__ import annotations

import asyncio
import io
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from zimage_sse import history
from zimage_sse.config import Settings
from zimage_sse.db import Store

from .conftest import BusyWorker, Server, follow, start_server, submit
from .test_pages import Page, history_row


def run_job(client: httpx.Client, **params: Any) -> dict[str, Any]:
    job = submit(client, **params)
    follow(client, job["id"])
    ended: dict[str, Any] = client.get(f"/api/jobs/{job['id']}").json()
    return ended


def listed(client: httpx.Client, **query: str) -> list[str]:
    response = client.get("/api/jobs", params=query)
    assert response.status_code == 200, response.text
    return [job["params"]["prompt"] for job in response.json()["jobs"]]


def page_prompts(html: str) -> list[str]:
    return [
        Page(cell).text for cell in re.findall(r'<td><a href="/jobs/[0-9a-f]{16}">(.*?)</a></td>', html, re.S)
    ]


def test_paging_search_and_filters(make_server: Callable[..., Server]) -> None:
    # Size multiples of 8 are accepted here, and the pipeline fails a width of 72: a real failed job.
    srv = make_server(size_multiple="8")
    prompts = ["100% cotton shirt", "100 cotton shirt", "snake_case river", "blue cotton field"]
    with srv.client() as client:
        for prompt in prompts:
            size = (320, 160) if "river" in prompt else (64, 64)
            assert run_job(client, prompt=prompt, width=size[0], height=size[1], steps=1)["status"] == "done"
        assert run_job(client, prompt="fails: 72 wide", width=72, height=64, steps=1)["status"] == "failed"
        newest_first = ["fails: 72 wide", *reversed(prompts)]

        assert listed(client) == newest_first
        # % and _ are matched literally, letters without regard to case.
        assert listed(client, q="100%") == ["100% cotton shirt"]
        assert listed(client, q="100") == ["100 cotton shirt", "100% cotton shirt"]
        assert listed(client, q="e_c") == ["snake_case river"]  # "blue cotton" has "e c"
        assert listed(client, q="COTTON") == ["blue cotton field", "100 cotton shirt", "100% cotton shirt"]
        assert listed(client, status="failed") == ["fails: 72 wide"]
        assert listed(client, size="320x160") == ["snake_case river"]
        assert listed(client, q="cotton", size="64x64", status="done", limit="2") == [
            "blue cotton field",
            "100 cotton shirt",
        ]
        bad = client.get("/api/jobs", params={"size": "big", "status": "lost"})
        assert bad.status_code == 422
        assert set(bad.json()["errors"]) == {"size", "status"}

        # The page: newest first, two a page, the filter kept on every pager link.
        first = client.get("/history", params={"per_page": "2", "view": "table"})
        assert page_prompts(first.text) == newest_first[:2]
        text = Page(first.text).text
        assert "5 jobs · page 1 of 3" in text
        older = Page(first.text).find("a", rel="next")[0]["href"]
        second = client.get(older)
        assert page_prompts(second.text) == newest_first[2:4]
        assert page_prompts(client.get(Page(second.text).find("a", rel="next")[0]["href"]).text) == [
            newest_first[4]
        ]
        newer = Page(second.text).find("a", rel="prev")[0]["href"]
        assert page_prompts(client.get(newer).text) == newest_first[:2]

        filtered = client.get("/history", params={"q": "cotton", "per_page": "2", "view": "table"})
        assert page_prompts(filtered.text) == ["blue cotton field", "100 cotton shirt"]
        assert "3 jobs match · page 1 of 2" in Page(filtered.text).text
        next_href = Page(filtered.text).find("a", rel="next")[0]["href"]
        assert "q=cotton" in next_href and "per_page=2" in next_href
        assert page_prompts(client.get(next_href).text) == ["100% cotton shirt"]
        assert page_prompts(client.get("/history", params={"q": "100%", "view": "table"}).text) == [
            "100% cotton shirt"
        ]
        assert page_prompts(client.get("/history", params={"status": "failed", "view": "table"}).text) == [
            "fails: 72 wide"
        ]
        sized = client.get("/history", params={"size": "320x160", "view": "table"})
        assert page_prompts(sized.text) == ["snake_case river"]
        form = Page(sized.text)
        assert form.find("option", value="320x160", selected="")
        assert {o["value"] for o in form.find("option")} >= {"64x64", "320x160", "72x64", "done", "failed"}
        assert client.get("/history", params={"size": "huge"}).status_code == 422

        # Thumbnails: small JPEGs made from the images; failed jobs have none.
        row = history_row(
            client.get("/history", params={"view": "table"}).text,
            client.get("/api/jobs", params={"q": "river"}).json()["jobs"][0]["id"],
        )
        thumb = Page(row[""]).find("img")[0]["src"]
        response = client.get(thumb)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "JPEG"
            assert image.size == (history.THUMB_SIDE, history.THUMB_SIDE // 2)  # from 320×160


def test_job_page_shows_every_parameter_and_the_timing_breakdown(server: Server) -> None:
    params = {
        "prompt": "history: every parameter",
        "negative_prompt": "fog",
        "width": 96,
        "height": 64,
        "steps": 4,
        "guidance": 1.5,
        "seed": 24680,
        "num_images": 1,
    }
    with server.client() as client:
        job = submit(client, **params)
        events = follow(client, job["id"])
        done = events[-1].json()
        page = Page(client.get(f"/jobs/{job['id']}").text)
        html = client.get(f"/jobs/{job['id']}").text

    def cell(name: str) -> str:
        found = re.search(rf'<td class="{name}">(.*?)</td>', html, re.S)
        assert found, name
        return Page(found.group(1)).text

    for name, value in params.items():
        assert cell(name) == str(value), name
    assert (cell("model"), cell("device"), cell("dtype")) == ("tiny", "cpu", "float32")
    assert "same image" in page.text  # this server runs the model, device and dtype it ran on

    phases = dict(re.findall(r'<tr data-phase="(\w+)"><td>\w+</td><td class="seconds">([\d.]+) s</td>', html))
    assert list(phases) == ["encoding", "denoising", "decoding", "saving"] or list(phases) == [
        "loading",
        "encoding",
        "denoising",
        "decoding",
        "saving",
    ]
    for name, seconds in phases.items():
        assert abs(float(seconds) - done["phases"][name]) < 0.0006, name
    steps = re.findall(r'<tr data-step="(\d+)"><td>\d+</td><td class="ms">([\d.]+) ms</td>', html)
    assert [int(n) for n, _ in steps] == [1, 2, 3, 4]
    for (_, ms), seconds in zip(steps, done["step_s"], strict=True):
        assert abs(float(ms) - seconds * 1000) < 0.06
    assert len(page.find("meter")) == 4


def db_rows(server: Server, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.data_dir / 'zimage-sse.db'}?mode=ro", uri=True) as conn:
        return list(conn.execute(sql, args))


def test_delete_removes_the_files_and_the_row(server: Server) -> None:
    with server.client() as client:
        job = run_job(client, prompt="history: to delete", steps=2, num_images=2)
        images = [server.data_dir / "images" / f"{job['id']}-{i}.png" for i in range(2)]
        assert all(path.is_file() for path in images)
        assert client.get(f"/thumbs/{job['id']}-0.jpg").status_code == 200
        thumb = server.data_dir / "thumbs" / f"{job['id']}-0.jpg"
        assert thumb.is_file()
        assert db_rows(server, "SELECT COUNT(*) FROM step_timings WHERE job_id = ?", job["id"]) == [(2,)]

        response = client.delete(f"/api/jobs/{job['id']}")
        assert response.status_code == 204
        assert not any(path.exists() for path in [*images, thumb])
        assert client.get(f"/api/jobs/{job['id']}").status_code == 404
        assert client.get(f"/jobs/{job['id']}").status_code == 404
        assert client.get(f"/images/{job['id']}-0.png").status_code == 404
        for table in ("jobs", "step_timings", "phase_timings", "eta_predictions"):
            column = "id" if table == "jobs" else "job_id"
            assert db_rows(server, f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", job["id"]) == [(0,)]
        assert client.delete(f"/api/jobs/{job['id']}").status_code == 404

        # From the job page: a plain form, then back to the history, where it is gone.
        other = run_job(client, prompt="history: delete from the page", steps=1)
        assert Page(client.get(f"/jobs/{other['id']}").text).find(
            "form", action=f"/jobs/{other['id']}/delete"
        )
        response = client.post(f"/jobs/{other['id']}/delete")
        assert response.status_code == 303 and response.headers["location"] == "/history"
        assert f"/jobs/{other['id']}" not in client.get("/history").text
        assert not (server.data_dir / "images" / f"{other['id']}-0.png").exists()

        # A running or queued job is not deleted: 409, cancel it first.
        with BusyWorker(client) as busy:
            queued = submit(client, prompt="history: queued, not deletable", steps=1)
            for live in (busy.job, queued):
                response = client.delete(f"/api/jobs/{live['id']}")
                assert response.status_code == 409
                assert "cancel it first" in response.json()["error"]
                assert response.json()["job"]["status"] in ("queued", "running")
            page = client.post(f"/jobs/{busy.job['id']}/delete")
            assert page.status_code == 409 and "cancel it first" in Page(page.text).text
            assert not Page(client.get(f"/jobs/{queued['id']}").text).find(
                "form", action=f"/jobs/{queued['id']}/delete"
            )
        follow(client, busy.job["id"])
        assert client.delete(f"/api/jobs/{busy.job['id']}").status_code == 204


def prune(data_dir: Path, **kwargs: Any) -> history.Pruned:
    async def run() -> history.Pruned:
        store = await Store.open(data_dir / "zimage-sse.db")
        try:
            return await history.prune(store, Settings(data_dir=data_dir), **kwargs)
        finally:
            await store.close()

    return asyncio.run(run())


def job_files(data_dir: Path, job_id: str) -> list[Path]:
    return sorted((data_dir / "images").glob(f"{job_id}-*.png"))


def test_retention_by_age_and_size_keeps_timings(
    make_server: Callable[..., Server], models_dir: Path
) -> None:
    srv = make_server()
    with srv.client() as client:
        jobs = [run_job(client, prompt=f"retention {i}", steps=2, width=64, height=64) for i in range(5)]
        for job in jobs[:2]:
            assert client.get(f"/thumbs/{job['id']}-0.jpg").status_code == 200
    srv.stop()
    ids = [job["id"] for job in jobs]
    sizes = [job_files(srv.data_dir, job_id)[0].stat().st_size for job_id in ids]

    # By age, as of a `now` that puts the cutoff at job 2's creation: jobs 0 and 1 are older.
    days = 30
    pruned = prune(srv.data_dir, now=jobs[2]["created_at"] + days * history.DAY_S, days=days)
    assert pruned.pruned == [ids[1], ids[0]] and pruned.deleted == []
    assert pruned.bytes_freed >= sizes[0] + sizes[1]
    assert not job_files(srv.data_dir, ids[0]) and not job_files(srv.data_dir, ids[1])
    assert not list((srv.data_dir / "thumbs").glob("*.jpg"))
    assert all(job_files(srv.data_dir, job_id) for job_id in ids[2:])

    # By size: the newest images are kept while they fit; job 2 would pass the limit, so it goes.
    limit = (sizes[4] + sizes[3] + sizes[2] // 2) / 1e9
    pruned = prune(srv.data_dir, now=time.time(), gb=limit)
    assert pruned.pruned == [ids[2]]
    assert job_files(srv.data_dir, ids[3]) and job_files(srv.data_dir, ids[4])
    assert not job_files(srv.data_dir, ids[2])
    # Nothing more to do when run again.
    assert prune(srv.data_dir, now=time.time(), gb=limit) == history.Pruned()

    # The pruned jobs kept their rows and timings; the server shows them as removed by retention.
    again = start_server(srv.data_dir, models_dir)
    try:
        with again.client() as client:
            for job_id in ids[:3]:
                state = client.get(f"/api/jobs/{job_id}").json()
                assert state["pruned_at"] is not None and state["images"] == []
                assert set(state["phases"]) >= {"encoding", "denoising", "decoding", "saving"}
                page = client.get(f"/jobs/{job_id}").text
                assert "Image removed by retention" in Page(page).text
                assert 'data-step="2"' in page  # the per-step times are still there
                table = client.get("/history", params={"view": "table"}).text
                assert "image removed by retention" in Page(history_row(table, job_id)[""]).text
                # The gallery (the default view) has a card for it, without an image, saying why.
                card = client.get("/history").text.split(f'data-job="{job_id}"', 1)[1].split("</li>", 1)[0]
                assert "Image removed by retention" in Page(card).text and "<img" not in card
            assert client.get(f"/api/jobs/{ids[4]}").json()["pruned_at"] is None
    finally:
        again.stop()

    # Told to drop timings, the old jobs go entirely: rows, timings and any files left.
    pruned = prune(
        srv.data_dir, now=jobs[4]["created_at"] + days * history.DAY_S, days=days, keep_timings=False
    )
    assert pruned.deleted == [ids[3], ids[2], ids[1], ids[0]] and pruned.pruned == []
    assert not job_files(srv.data_dir, ids[3])
    with sqlite3.connect(srv.data_dir / "zimage-sse.db") as conn:
        assert [row[0] for row in conn.execute("SELECT id FROM jobs")] == [ids[4]]
        left = conn.execute("SELECT DISTINCT job_id FROM step_timings").fetchall()
        assert left == [(ids[4],)]


def test_retention_runs_at_start_and_then_periodically(
    make_server: Callable[..., Server], models_dir: Path
) -> None:
    srv = make_server()
    with srv.client() as client:
        old = [
            run_job(client, prompt=f"retention at start {i}", steps=1, width=64, height=64) for i in range(3)
        ]
    srv.stop()
    newest = job_files(srv.data_dir, old[2]["id"])[0].stat().st_size
    env = {"ZIMAGE_SSE_RETENTION_GB": str(newest * 1.5 / 1e9), "ZIMAGE_SSE_RETENTION_EVERY_S": "0.5"}
    # Restarted with a size limit that holds one image: the first run ends before the server answers.
    again = start_server(srv.data_dir, models_dir, env=env)
    try:
        with again.client() as client:
            states = [client.get(f"/api/jobs/{job['id']}").json() for job in old]
            assert [state["pruned_at"] is not None for state in states] == [True, True, False]
            # A new image pushes the last old one past the limit; a periodic run removes it.
            fresh = run_job(client, prompt="retention: the newest", steps=1, width=64, height=64)
            deadline = time.monotonic() + 60
            while client.get(f"/api/jobs/{old[2]['id']}").json()["pruned_at"] is None:
                assert time.monotonic() < deadline, "no periodic run pruned the job"
                time.sleep(0.1)  # polling for the periodic run's effect
            assert not job_files(again.data_dir, old[2]["id"])
            assert client.get(f"/api/jobs/{fresh['id']}").json()["pruned_at"] is None
            assert job_files(again.data_dir, fresh["id"])
    finally:
        again.stop()
