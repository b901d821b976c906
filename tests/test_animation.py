"""The denoising as an animation, against real servers: previews kept per job within their bounds,
the animated WebP (and GIF) made from them, and the frames going with the job (delete, retention)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from zimage_sse import frames, history

from .conftest import BusyWorker, Server, follow, read_sse, start_server, submit
from .test_history import prune
from .test_pages import Page


def run_job(client: httpx.Client, **params: Any) -> dict[str, Any]:
    job = submit(client, **params)
    follow(client, job["id"])
    ended: dict[str, Any] = client.get(f"/api/jobs/{job['id']}").json()
    assert ended["status"] == "done", ended
    return ended


def on_disk(server: Server, job_id: str) -> list[Path]:
    return sorted((server.data_dir / "frames" / job_id).glob("*.jpg"), key=lambda p: int(p.stem))


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def frame_count(data: bytes) -> int:
    """How many frames an animated image has (its plugin's `n_frames`; a still image has one)."""
    image = picture(data)
    count: int = getattr(image, "n_frames", 1)
    assert count == 1 or getattr(image, "is_animated", False)
    return count


def test_a_done_job_keeps_its_previews_and_offers_them_as_an_animation(server: Server) -> None:
    with server.client() as client:
        job = run_job(client, prompt="animation: four steps", steps=4, width=128, height=96)
        job_id = job["id"]
        assert job["frames"] == [1, 2, 3, 4]
        assert [p.name for p in on_disk(server, job_id)] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]

        response = client.get(f"/jobs/{job_id}/frames/2.jpg")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert picture(response.content).format == "JPEG"
        assert picture(response.content).size == (16, 12)  # the latent's size: the preview as it was sent
        assert client.get(f"/jobs/{job_id}/frames/5.jpg").status_code == 404

        response = client.get(f"/jobs/{job_id}/animation.webp")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/webp"
        assert "immutable" in response.headers["cache-control"]
        assert response.headers["content-disposition"].startswith("inline")
        animation = picture(response.content)
        assert animation.format == "WEBP" and getattr(animation, "is_animated", False)
        assert frame_count(response.content) == 4 + 1  # the previews, then the final image
        assert animation.size == (128, 96)  # the final image's size (under 512 px: not scaled)
        assert (server.data_dir / "frames" / job_id / "animation.webp").is_file()  # cached next to them
        assert client.get(f"/jobs/{job_id}/animation.webp").content == response.content

        download = client.get(f"/jobs/{job_id}/animation.webp", params={"download": "1"})
        assert download.headers["content-disposition"].startswith("attachment")
        assert f"zimage-{job_id}-animation.webp" in download.headers["content-disposition"]
        assert download.content == response.content

        gif = client.get(f"/jobs/{job_id}/animation.gif")
        assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
        assert picture(gif.content).format == "GIF" and frame_count(gif.content) == 5
        same = client.get(f"/jobs/{job_id}/animation.webp", params={"format": "gif"})
        assert same.content == gif.content

        bad = client.get(f"/jobs/{job_id}/animation.webp", params={"format": "bmp", "download": "yes"})
        assert bad.status_code == 422
        assert set(bad.json()["errors"]) == {"format", "download"}

        # The job page shows the animation, a download link, the slider and a link to every preview.
        page = Page(client.get(f"/jobs/{job_id}").text)
        assert page.find("img", src=f"/jobs/{job_id}/animation.webp")
        assert page.find("a", href=f"/jobs/{job_id}/animation.webp?download=1")
        (slider,) = page.find("input", type="range")
        assert (slider["min"], slider["max"], slider["data-steps"]) == ("1", "4", "1,2,3,4")
        assert page.find("label", **{"for": slider["id"]})
        assert all(page.find("a", href=f"/jobs/{job_id}/frames/{step}.jpg") for step in range(1, 5))
        assert "Step 4/4" in page.text

        # Deleted with the job: the frames and the cached animation go.
        assert client.delete(f"/api/jobs/{job_id}").status_code == 204
        assert not (server.data_dir / "frames" / job_id).exists()
        assert client.get(f"/jobs/{job_id}/animation.webp").status_code == 404

        # An unknown job has none.
        assert client.get(f"/jobs/{'0' * 16}/animation.webp").status_code == 404
        assert client.get(f"/jobs/{'0' * 16}/frames/1.jpg").status_code == 404


def test_a_cancelled_job_drops_its_previews(server: Server) -> None:
    with server.client() as client, BusyWorker(client) as busy:
        job_id = busy.job["id"]
        with client.stream("GET", f"/api/jobs/{job_id}/events") as response:
            read_sse(response, until=lambda event: event.event == "preview")
        assert client.get(f"/api/jobs/{job_id}").json()["frames"]  # kept while it runs
        busy.release()
        follow(client, job_id)
        ended = client.get(f"/api/jobs/{job_id}").json()
        assert ended["status"] == "cancelled" and ended["frames"] == []
        assert not (server.data_dir / "frames" / job_id).exists()
        assert client.get(f"/jobs/{job_id}/animation.webp").status_code == 404


def test_bounds_in_number_and_bytes_keep_evenly_spaced_previews_and_the_last(
    server: Server, make_server: Callable[..., Server]
) -> None:
    params = {"prompt": "animation: bounded", "steps": 7, "width": 128, "height": 128, "seed": 7}
    with server.client() as client:
        unbounded = run_job(client, **params)
    sizes = {int(p.stem): p.stat().st_size for p in on_disk(server, unbounded["id"])}
    assert sorted(sizes) == list(range(1, 8))

    # Three of seven: the first, the middle and the last.
    limit = sum(sorted(sizes.values())[-3:])  # room for three of them, at most
    srv = make_server(frames_max="3", preview_every="1")
    other = make_server(frames_max_bytes=str(limit))
    with srv.client() as client:
        job = run_job(client, **params)
        assert job["frames"] == [1, 4, 7]
        assert [int(p.stem) for p in on_disk(srv, job["id"])] == [1, 4, 7]
        assert frame_count(client.get(f"/jobs/{job['id']}/animation.webp").content) == 3 + 1
        page = Page(client.get(f"/jobs/{job['id']}").text)
        assert page.find("input", type="range", max="3")
        assert "Step 7/7 · preview 3 of 3" in page.text
    # Within the bytes: the same previews (the same seed), thinned to fit, the last one kept.
    with other.client() as client:
        job = run_job(client, **params)
        kept = [int(p.stem) for p in on_disk(other, job["id"])]
        assert job["frames"] == kept and kept[-1] == 7 and 1 < len(kept) <= 3
        assert sum(p.stat().st_size for p in on_disk(other, job["id"])) <= limit
        assert frame_count(client.get(f"/jobs/{job['id']}/animation.webp").content) == len(kept) + 1


def test_previews_off_means_no_frames_and_no_animation(make_server: Callable[..., Server]) -> None:
    srv = make_server(preview_every="0")
    with srv.client() as client:
        job = run_job(client, prompt="animation: previews off", steps=3, width=64, height=64)
        assert job["frames"] == []
        assert not (srv.data_dir / "frames" / job["id"]).exists()
        response = client.get(f"/jobs/{job['id']}/animation.webp")
        assert response.status_code == 404
        assert "kept no previews" in response.text
        page = Page(client.get(f"/jobs/{job['id']}").text)
        assert not page.find("input", type="range")
        assert not page.find("img", src=f"/jobs/{job['id']}/animation.webp")
        assert "Done" in page.text


def test_retention_removes_the_frames_with_the_images(
    make_server: Callable[..., Server], models_dir: Path
) -> None:
    srv = make_server()
    with srv.client() as client:
        old = run_job(client, prompt="animation: old", steps=2, width=64, height=64)
        assert client.get(f"/jobs/{old['id']}/animation.webp").status_code == 200  # cached too
        new = run_job(client, prompt="animation: new", steps=3, width=64, height=64)
    srv.stop()
    frames_dir = srv.data_dir / "frames"
    old_bytes = frames.size(frames_dir, old["id"])
    assert old_bytes > 0

    # By age: the cutoff falls between the two jobs.
    days = 30
    pruned = prune(srv.data_dir, now=new["created_at"] + days * history.DAY_S - 0.001, days=days)
    assert pruned.pruned == [old["id"]]
    assert not (frames_dir / old["id"]).exists()
    assert pruned.bytes_freed >= old_bytes
    assert [p.name for p in on_disk(srv, new["id"])] == ["1.jpg", "2.jpg", "3.jpg"]

    # A killed process's half-written animation is removed at start, never served.
    (frames_dir / new["id"] / ".animation.webp.x.partial").write_bytes(b"half")
    again = start_server(srv.data_dir, models_dir)
    try:
        assert not list(frames_dir.glob("*/.*.partial"))
        with again.client() as client:
            assert client.get(f"/api/jobs/{old['id']}").json()["frames"] == []
            response = client.get(f"/jobs/{old['id']}/animation.webp")
            assert response.status_code == 404 and "removed by retention" in response.text
            assert not Page(client.get(f"/jobs/{old['id']}").text).find("input", type="range")
            # The job that stays, read from the store after the restart: its frames from the disk.
            assert client.get(f"/api/jobs/{new['id']}").json()["frames"] == [1, 2, 3]
            listed = client.get("/api/jobs").json()["jobs"]
            assert [job["frames"] for job in listed if job["id"] == new["id"]] == [[1, 2, 3]]
            assert frame_count(client.get(f"/jobs/{new['id']}/animation.webp").content) == 3 + 1
    finally:
        again.stop()

    # The byte budget counts the frames (and the animation): a budget that holds the image alone
    # prunes the job.
    image = srv.data_dir / "images" / f"{new['id']}-0.png"
    assert prune(srv.data_dir, now=new["created_at"], gb=image.stat().st_size / 1e9).pruned == [new["id"]]
    assert not (frames_dir / new["id"]).exists()
