"""A done job's kept previews and its animation (zimage_sse/frames.py holds the logic).

GET /jobs/{id}/frames/{step}.jpg     one kept preview
GET /jobs/{id}/animation.webp        the previews, then the final image (?format=gif, ?download=1)
GET /jobs/{id}/animation.gif         the same as a GIF (?download=1)
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .. import frames
from ..params import InvalidRequest
from ..service import JobState
from .api import job_id_of, manager_of, settings_of

# A job's previews and its final image never change once it is done (a deleted job's URLs answer 404).
CACHE = "public, max-age=31536000, immutable"
FLAGS = {"1": True, "true": True, "0": False, "false": False}


async def frame(request: Request) -> Response:
    job_id = job_id_of(request)
    state = await manager_of(request).get(job_id)
    step = int(request.path_params["step"])
    path = frames.frame_path(settings_of(request).frames_dir, job_id, step)
    if step not in state.frames or not await asyncio.to_thread(path.is_file):
        raise HTTPException(404, f"job {job_id} keeps no preview of step {step}")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": CACHE})


def _missing(state: JobState) -> str | None:
    """Why the job has no animation, or None when it has one to make."""
    if state.status != "done":
        return f"job {state.id} is {state.status}: an animation is made once a job is done"
    if state.pruned_at is not None or not state.images:
        return f"job {state.id} has no animation: its image was removed by retention"
    if not state.frames:
        return (
            f"job {state.id} has no animation: it kept no previews (previews were off, preview_every 0 "
            "or frames_max 0, when it ran)"
        )
    return None


async def animation(request: Request) -> Response:
    """GET /jobs/{id}/animation.webp[?format=gif][&download=1]: made on the first request, then kept."""
    job_id = job_id_of(request)
    query = request.query_params
    errors = {}
    fmt = query.get("format") or request.url.path.rpartition(".")[2]
    if fmt not in frames.FORMATS:
        errors["format"] = f"must be one of {', '.join(frames.FORMATS)} (got {fmt!r})"
    download = FLAGS.get(query.get("download") or "0")
    if download is None:
        errors["download"] = f"must be 1 or 0 (got {query.get('download')!r})"
    if errors:
        raise InvalidRequest(errors)
    state = await manager_of(request).get(job_id)
    reason = _missing(state)
    if reason is not None:
        raise HTTPException(404, reason)
    settings = settings_of(request)
    final = settings.images_dir / state.images[0]
    path = await asyncio.to_thread(frames.animation, settings.frames_dir, job_id, final, fmt)
    if path is None:
        raise HTTPException(404, f"job {job_id} has no animation: its previews or image are gone")
    name = f"zimage-{job_id}-animation.{fmt}"
    return FileResponse(
        path,
        media_type=frames.FORMATS[fmt],
        filename=name,
        content_disposition_type="attachment" if download else "inline",
        headers={"Cache-Control": CACHE},
    )


routes = [
    Route("/jobs/{job_id}/frames/{step:int}.jpg", frame, methods=["GET"]),
    Route("/jobs/{job_id}/animation.webp", animation, methods=["GET"]),
    Route("/jobs/{job_id}/animation.gif", animation, methods=["GET"]),
]
