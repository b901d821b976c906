"""PNG files: written under a temporary name and renamed, so a half-written image is never visible."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .params import JobParams

JOB_ID = re.compile(r"^[0-9a-f]{16}$")


def image_name(job_id: str, index: int) -> str:
    return f"{job_id}-{index}.png"


def a1111_parameters(params: JobParams, model: str) -> str:
    """The `parameters` text chunk that AUTOMATIC1111-compatible tools read."""
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    # A1111 writes "Batch size" only for batches; zimage_sse/repro.py reads it back as num_images.
    batch = f", Batch size: {params.num_images}" if params.num_images > 1 else ""
    lines.append(
        f"Steps: {params.steps}, Sampler: FlowMatchEuler, CFG scale: {params.guidance:g}, "
        f"Seed: {params.seed}, Size: {params.width}x{params.height}{batch}, Model: {_quoted(model)}"
    )
    return "\n".join(lines)


def _quoted(value: str) -> str:
    """A1111 quotes a value holding a comma, colon or quote as a JSON string, so the line still parses."""
    return json.dumps(value) if any(c in value for c in ',:"') else value


def save_png(image: Image.Image, path: Path, params: JobParams, meta: dict[str, Any]) -> None:
    info = PngInfo()
    info.add_text("parameters", a1111_parameters(params, str(meta.get("model", ""))))
    info.add_text("zimage-sse", json.dumps({**params.to_dict(), **meta}, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def remove(directory: Path, names: list[str]) -> None:
    for name in names:
        (directory / name).unlink(missing_ok=True)


def remove_partials(directory: Path) -> list[str]:
    """Temporary files a killed process left mid-write (never visible as images): removed at start."""
    removed = []
    for path in directory.glob(".*.partial"):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed
