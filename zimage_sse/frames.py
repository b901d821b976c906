"""The denoising as an animation: each job's live previews kept on disk, and an animated WebP (or GIF)
of preview → final image made from them on demand and cached (issue 18, the article's "progress GIF").

On disk: `<frames_dir>/<job_id>/<step>.jpg`, plus `animation.webp` / `animation.gif` once asked for.
The previews already exist as JPEG bytes (the worker encodes them for the `preview` event), so keeping
them costs the worker nothing: the dispatcher hands the bytes to `Frames.keep` on the event loop,
which decides there what to keep and writes on a thread of its own, in order.

A job keeps at most `frames_max` previews, chosen evenly over the steps that have one (always the last),
and at most `frames_max_bytes` of them. A job that fails or is cancelled drops its previews: nothing
shows them, and retention never touches a job without images (zimage_sse/history.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

FRAME = re.compile(r"^(\d{1,6})\.jpg$")
DATA_URL = "data:image/jpeg;base64,"
FORMATS = {"webp": "image/webp", "gif": "image/gif"}
# The animation's long side: the previews are 1/8 of the image (a 1024² job's are 128²) and are scaled
# up to it; the final image is scaled down. A 1024², 8-step WebP is then about 0.1–0.3 MB
# (bench/frames.py).
ANIMATION_SIDE = 512
# The previews play in about 2.4 s whatever their number (8 steps: 300 ms each), never faster than 40 ms
# a frame (browsers show GIF frames under 20 ms at 100 ms); the final image then stays 2 s.
PLAY_MS = 2400
FRAME_MS = (40, 300)
HOLD_MS = 2000


def job_dir(frames_dir: Path, job_id: str) -> Path:
    return frames_dir / job_id


def frame_path(frames_dir: Path, job_id: str, step: int) -> Path:
    return job_dir(frames_dir, job_id) / f"{step}.jpg"


def kept(frames_dir: Path, job_id: str) -> list[int]:
    """The steps whose preview a job keeps on disk, in order (none when it has no directory)."""
    try:
        names = os.listdir(job_dir(frames_dir, job_id))
    except FileNotFoundError:
        return []
    return sorted(int(match[1]) for name in names if (match := FRAME.match(name)))


def size(frames_dir: Path, job_id: str) -> int:
    """Bytes a job's previews and cached animations take (retention counts them with its images)."""
    total = 0
    with suppress(FileNotFoundError):
        for entry in os.scandir(job_dir(frames_dir, job_id)):
            with suppress(FileNotFoundError):
                total += entry.stat().st_size
    return total


def remove(frames_dir: Path, job_ids: list[str]) -> int:
    """Delete the jobs' previews and animations; returns the bytes freed."""
    freed = 0
    for job_id in job_ids:
        freed += size(frames_dir, job_id)
        shutil.rmtree(job_dir(frames_dir, job_id), ignore_errors=True)
    return freed


def remove_partials(frames_dir: Path) -> list[str]:
    """Files a killed process left mid-write (never served, as only renamed files are): removed at start."""
    removed = []
    for path in frames_dir.glob("*/.*.partial"):
        path.unlink(missing_ok=True)
        removed.append(f"{path.parent.name}/{path.name}")
    return removed


def plan(total: int, every: int, limit: int) -> frozenset[int]:
    """The steps to keep: the worker sends a preview after steps every, 2·every, … up to `total`;
    at most `limit` of them, evenly spaced, the first and the last always among them."""
    steps = list(range(every, total + 1, every)) if every > 0 else []
    if limit <= 0 or not steps:
        return frozenset()
    if len(steps) <= limit:
        return frozenset(steps)
    if limit == 1:
        return frozenset({steps[-1]})
    last = len(steps) - 1
    return frozenset(steps[round(i * last / (limit - 1))] for i in range(limit))


@dataclass
class _Job:
    """One running job's kept previews, as decided on the loop (the writes may still be on their way)."""

    wanted: frozenset[int]
    sizes: dict[int, int] = field(default_factory=dict)
    last: asyncio.Future[None] | None = None  # the newest write handed to the thread


class Frames:
    """Keeps the previews of running jobs within their bounds; every file operation runs, in order, on
    one thread of its own, so neither the event loop nor the worker waits for the disk."""

    def __init__(self, directory: Path, *, max_count: int, max_bytes: int) -> None:
        self.directory = directory
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0: no limit
        self._jobs: dict[str, _Job] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames")

    def keep(self, job_id: str, total: int, step: int, url: str) -> list[int]:
        """A preview arrived (on the loop): keep it if the plan wants it, dropping older ones to stay
        within the bytes; returns the steps kept now."""
        job = self._jobs.get(job_id)
        first = job is None
        if job is None:
            # The first preview comes after step `every` (worker.py), which fixes all the others.
            job = self._jobs[job_id] = _Job(plan(total, step, self.max_count))
        if step not in job.wanted or not url.startswith(DATA_URL):
            return sorted(job.sizes)
        try:
            data = base64.b64decode(url[len(DATA_URL) :], validate=True)
        except binascii.Error:
            logger.warning("a preview that is not base64 was not kept", extra={"job_id": job_id})
            return sorted(job.sizes)
        job.sizes[step] = len(data)
        dropped = self._fit(job)
        write = data if step in job.sizes else None
        job.last = asyncio.get_running_loop().run_in_executor(
            self._executor, self._apply, job_id, first, step, write, dropped
        )
        return sorted(job.sizes)

    def _fit(self, job: _Job) -> list[int]:
        """Drop previews until the job's fit in `max_bytes`: each time the one whose neighbours are
        closest (so the rest stay evenly spread), never the newest while another is left."""
        dropped = []
        while self.max_bytes and job.sizes and sum(job.sizes.values()) > self.max_bytes:
            steps = sorted(job.sizes)
            if len(steps) <= 2:
                victim = steps[0]
            else:
                gaps = {steps[i]: steps[i + 1] - steps[i - 1] for i in range(1, len(steps) - 1)}
                victim = min(gaps, key=lambda s: (gaps[s], s))
            del job.sizes[victim]
            dropped.append(victim)
        return dropped

    def _apply(self, job_id: str, first: bool, step: int, data: bytes | None, dropped: list[int]) -> None:
        directory = job_dir(self.directory, job_id)
        try:
            if first:  # a job run again after a crash starts from nothing
                shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            if data is not None:
                # No fsync: a preview lost to a power cut costs one frame; a killed process leaves only
                # the temporary name, which is never listed nor served.
                _write(frame_path(self.directory, job_id, step), data, sync=False)
            for old in dropped:
                frame_path(self.directory, job_id, old).unlink(missing_ok=True)
        except Exception:  # the disk is full or gone: the job goes on, with fewer frames
            logger.exception("keeping the preview of step %d failed", step, extra={"job_id": job_id})

    async def settle(self, job_id: str) -> list[int]:
        """The job is done: wait for its writes, and return the steps on disk."""
        job = self._jobs.pop(job_id, None)
        if job is not None and job.last is not None:
            await job.last
        return await asyncio.get_running_loop().run_in_executor(self._executor, kept, self.directory, job_id)

    async def discard(self, job_id: str) -> list[int]:
        """The job failed, was cancelled or goes back to the queue: its previews go."""
        self._jobs.pop(job_id, None)
        await asyncio.get_running_loop().run_in_executor(self._executor, remove, self.directory, [job_id])
        return []

    async def listed(self, job_ids: list[str]) -> list[list[int]]:
        """The steps on disk for each job (of jobs that ended before: nothing writes to them)."""
        return await asyncio.to_thread(lambda: [kept(self.directory, job_id) for job_id in job_ids])

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _write(path: Path, data: bytes, *, sync: bool) -> None:
    """Under a temporary name, then renamed: a reader sees the whole file or none."""
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(partial)


# -- the animation -----------------------------------------------------------------------------------


def frame_ms(count: int) -> int:
    return max(FRAME_MS[0], min(FRAME_MS[1], PLAY_MS // max(1, count)))


def bounded(width: int, height: int, side: int = ANIMATION_SIDE) -> tuple[int, int]:
    """The size scaled to at most `side` on its long side, never up."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def animation(frames_dir: Path, job_id: str, final: Path, fmt: str) -> Path | None:
    """The job's animation in `fmt` (webp or gif): its kept previews, then its final image held
    longer, looping. Made on first request and kept next to the frames; None without frames or image."""
    target = job_dir(frames_dir, job_id) / f"animation.{fmt}"
    if target.is_file():
        return target
    steps = kept(frames_dir, job_id)
    if not steps:
        return None
    try:
        with Image.open(final) as picture:
            picture_size = bounded(*picture.size)
            last = picture.convert("RGB").resize(picture_size, Image.Resampling.LANCZOS)
        pictures = []
        for step in steps:
            with Image.open(frame_path(frames_dir, job_id, step)) as frame:
                # Smooth, not blocky: a preview is 1/8 of the image's size.
                pictures.append(frame.convert("RGB").resize(picture_size, Image.Resampling.BILINEAR))
    except FileNotFoundError:  # deleted or pruned meanwhile
        return None
    pictures.append(last)
    durations = [frame_ms(len(steps))] * len(steps) + [HOLD_MS]
    options: dict[str, object] = {"quality": 80, "method": 4} if fmt == "webp" else {}
    buffer = io.BytesIO()
    pictures[0].save(
        buffer,
        format=fmt.upper(),
        save_all=True,
        append_images=pictures[1:],
        duration=durations,
        loop=0,
        **options,
    )
    try:
        _write(target, buffer.getvalue(), sync=True)
    except FileNotFoundError:  # the job's directory went meanwhile
        return None
    return target
