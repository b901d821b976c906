"""History: filtering past jobs, running one again, deleting one, thumbnails, and retention.

Retention only ever touches ended jobs (done, failed, cancelled). By default it removes a pruned
job's image files (with thumbnails, kept previews and animation: zimage_sse/frames.py) but keeps
its row and its step, phase and ETA timings, marked `pruned_at`: the reports and the ETA go on
learning from it, and pages say "image removed by retention". With `retention_keep_timings` off it
deletes those jobs' rows and timings too. Files go first and the row changes after, so a crash in
between leaves a job that the next run prunes again rather than a row whose files are gone
unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from PIL import Image

from . import frames
from .config import Settings
from .db import JobStore
from .events import PHASES, STATUSES
from .params import validate
from .service import JobService, JobState

logger = logging.getLogger(__name__)

PAGE_SIZE = 24
MAX_PAGE_SIZE = 100
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# Thumbnails: the history lists up to 100 jobs a page; a 1024² PNG is about 1.5 MB, its thumbnail 5 kB.
THUMB_SIDE = 160
DAY_S = 86400.0
GB = 10**9


class JobActive(Exception):
    """A queued or running job cannot be deleted: cancel it first."""


@dataclass(frozen=True)
class JobFilter:
    """What the history is narrowed to: prompt text (matched literally), status, size."""

    search: str | None = None
    status: str | None = None
    size: tuple[int, int] | None = None

    def query(self) -> dict[str, str]:
        """The filter as query parameters, for links that keep it (pager)."""
        values = {"q": self.search or "", "status": self.status or ""}
        values["size"] = f"{self.size[0]}x{self.size[1]}" if self.size else ""
        return {k: v for k, v in values.items() if v}

    def store_args(self) -> dict[str, Any]:
        return {"status": self.status, "search": self.search, "size": self.size}


def parse_filter(query: Mapping[str, str], errors: dict[str, str]) -> JobFilter:
    """`q`, `status` and `size` (WIDTHxHEIGHT) from a query string; empty means "any"."""
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
        status = None
    size = None
    raw = query.get("size") or None
    if raw is not None:
        match = SIZE.match(raw)
        if match is None:
            errors["size"] = f"must be WIDTHxHEIGHT, e.g. 1024x1024 (got {raw!r})"
        else:
            size = (int(match.group(1)), int(match.group(2)))
    return JobFilter(search=query.get("q") or None, status=status, size=size)


async def run_again(manager: JobService, settings: Settings, job_id: str, *, vary: bool) -> JobState:
    """Queue a job's parameters again: the same seed (the same image on the same model, device and
    dtype), or with `vary` a new seed. Checked against today's limits, which may have changed."""
    source = await manager.get(job_id)
    values = source.params.to_dict()
    if vary:
        while values["seed"] == source.params.seed:
            values["seed"] = secrets.randbelow(2**32)
    return await manager.submit(validate(values, settings))


async def delete_job(manager: JobService, settings: Settings, job_id: str) -> None:
    """Delete an ended job: its image files, thumbnails, kept previews (and their animation), row and
    timings. Raises JobActive for a live one."""
    state = await manager.get(job_id)
    if not state.terminal:
        raise JobActive(job_id)
    await asyncio.to_thread(remove_files, settings, state.images)
    await asyncio.to_thread(frames.remove, settings.frames_dir, [job_id])
    await manager.store.delete_jobs([job_id])
    manager.forget([job_id])
    logger.info("deleted", extra={"job_id": job_id})


def remove_files(settings: Settings, names: Sequence[str]) -> int:
    """Unlink images and their thumbnails; returns the bytes freed (missing files count nothing)."""
    freed = 0
    for path in [
        *(settings.images_dir / n for n in names),
        *(settings.thumbs_dir / thumb_name(n) for n in names),
    ]:
        with suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
    return freed


def thumb_name(image: str) -> str:
    return image.removesuffix(".png") + ".jpg"


def thumbnail(settings: Settings, image: str) -> Path | None:
    """The thumbnail of an image, made on first request and kept; None when the image is gone."""
    target = settings.thumbs_dir / thumb_name(image)
    if target.is_file():
        return target
    source = settings.images_dir / image
    if not source.is_file():
        return None
    with Image.open(source) as picture:
        picture.thumbnail((THUMB_SIDE, THUMB_SIDE))
        small = picture.convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: two requests at once both succeed, neither sees half.
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            small.save(out, format="JPEG", quality=80)
        os.replace(partial, target)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(partial)
    return target


async def job_details(manager: JobService, state: JobState) -> dict[str, Any]:
    """What the job page shows besides the live panel: dtype, timestamps, the timing breakdown, and
    whether running it again here would repeat its image (same model, device and dtype)."""
    row = await manager.store.get_job(state.id) or {}
    # Where it would run again: the device that ran it, if this server still has it, else the first.
    runner = (manager.dispatcher(state.device) or manager.dispatchers[0]).runner
    dtype = row.get("dtype")
    elapsed = state.elapsed_s()
    phases = [
        {
            "name": name,
            "seconds": state.phases[name],
            "share": 100 * state.phases[name] / elapsed if elapsed else None,
        }
        for name in PHASES
        if name in state.phases
    ]
    steps = list(state.step_s) if state.terminal else []
    here = {"model": runner.model, "device": runner.device, "dtype": runner.dtype_name}
    ran = {"model": state.model, "device": state.device, "dtype": dtype}
    return {
        "dtype": dtype,
        "queued_s": None if state.started_at is None else state.started_at - state.created_at,
        "phases": phases,
        "steps": steps,
        "step_max": max(steps, default=0.0),
        "step_median": median(steps) if steps else None,
        "here": here,
        # A job that never started has no device: it would run here as it would have there.
        "same_setup": state.device is None or ran == here,
    }


# -- retention ---------------------------------------------------------------------------------


@dataclass
class Pruned:
    """What one retention run did."""

    pruned: list[str] = field(default_factory=list)  # images removed, row and timings kept
    deleted: list[str] = field(default_factory=list)  # rows and timings removed too
    bytes_freed: int = 0


def choose(
    jobs: Sequence[Mapping[str, Any]],
    sizes: Mapping[str, int],
    *,
    cutoff: float | None,
    budget: int | None,
    keep_timings: bool,
) -> tuple[list[str], list[str]]:
    """Which ended jobs (newest first) to prune and which to delete.

    By age: every job created before `cutoff`. By size: the newest images are kept while their total
    stays within `budget` bytes; from the first job that would exceed it, every older one goes.
    Keeping timings, only jobs that still have images are touched; otherwise the chosen jobs are
    deleted, including old ones without images (failed, cancelled, pruned before).
    """
    total = 0
    prune: list[str] = []
    delete: list[str] = []
    for job in jobs:
        has_images = bool(job["images"]) and job["pruned_at"] is None
        total += sizes.get(job["id"], 0) if has_images else 0
        too_old = cutoff is not None and job["created_at"] < cutoff
        too_big = budget is not None and has_images and total > budget
        if not (too_old or too_big):
            continue
        if not keep_timings:
            delete.append(job["id"])
        elif has_images:
            prune.append(job["id"])
    return prune, delete


def _sizes(settings: Settings, jobs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Bytes per job: its images, and its kept previews with their animation (they go together)."""
    sizes = {}
    for job in jobs:
        total = frames.size(settings.frames_dir, job["id"]) if job["images"] else 0
        for name in job["images"]:
            with suppress(FileNotFoundError):
                total += (settings.images_dir / name).stat().st_size
        sizes[job["id"]] = total
    return sizes


async def prune(
    store: JobStore,
    settings: Settings,
    *,
    now: float,
    days: float | None = None,
    gb: float | None = None,
    keep_timings: bool | None = None,
) -> Pruned:
    """One retention run as of `now`; each limit defaults to the setting (0: no limit)."""
    days = settings.retention_days if days is None else days
    gb = settings.retention_gb if gb is None else gb
    keep = settings.retention_keep_timings if keep_timings is None else keep_timings
    result = Pruned()
    if days <= 0 and gb <= 0:
        return result
    jobs = await store.ended_jobs()
    sizes = await asyncio.to_thread(_sizes, settings, jobs)
    result.pruned, result.deleted = choose(
        jobs,
        sizes,
        cutoff=now - days * DAY_S if days > 0 else None,
        budget=int(gb * GB) if gb > 0 else None,
        keep_timings=keep,
    )
    images = {job["id"]: job["images"] for job in jobs}
    doomed = [name for job_id in result.pruned + result.deleted for name in images[job_id]]
    result.bytes_freed = await asyncio.to_thread(remove_files, settings, doomed)
    gone = result.pruned + result.deleted
    result.bytes_freed += await asyncio.to_thread(frames.remove, settings.frames_dir, gone)
    if result.pruned:
        await store.mark_pruned(result.pruned, now)
    if result.deleted:
        await store.delete_jobs(result.deleted)
    return result


class Retention:
    """Runs retention at start and then every `retention_every_s`; it survives any failed run."""

    def __init__(self, manager: JobService, settings: Settings) -> None:
        self._manager = manager
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._settings.retention_days > 0 or self._settings.retention_gb > 0

    async def run_once(self) -> Pruned:
        result = await prune(self._manager.store, self._settings, now=time.time())
        self._manager.forget(result.pruned + result.deleted)
        if result.pruned or result.deleted:
            logger.info(
                "retention: removed the images of %d job(s), timings kept; deleted %d job(s); %.1f MB freed",
                len(result.pruned),
                len(result.deleted),
                result.bytes_freed / 1e6,
            )
        return result

    async def start(self) -> None:
        """The first run finishes before the server takes requests, so no page shows a doomed image."""
        if not self.enabled:
            return
        await self.run_once()
        self._task = asyncio.create_task(self._every(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self._settings.retention_every_s)
            try:
                await self.run_once()
            except Exception:
                logger.exception("retention failed; trying again next time")
