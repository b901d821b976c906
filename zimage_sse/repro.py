"""Reproducibility: what a result PNG says about how it was made, read back.

Every PNG the worker writes carries an AUTOMATIC1111-style `parameters` text chunk and a `zimage-sse`
JSON chunk (zimage_sse/images.py). This module reads either back, parses A1111's text format for
PNGs made elsewhere, and names the model revision written into them. It imports no torch, so
`zimage-sse info` starts in a blink.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from .params import FIELDS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JSON_CHUNK = "zimage-sse"
A1111_CHUNK = "parameters"
# A 2048² PNG is about 12 MB; anything much larger is not one of ours.
MAX_PNG_BYTES = 64 * 1024 * 1024
# A1111's own pattern for its "Key: value, …" line (modules/infotext_utils.py, re_param_code): a value
# is a JSON-quoted string or runs to the next comma.
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class UnreadablePng(ValueError):
    """The file is not a PNG, or carries no generation parameters we can read; says which and why."""


@dataclass(frozen=True)
class PngParameters:
    """The job parameters a PNG carries, and the rest of what it says about its making."""

    params: dict[str, Any]  # the fields of a job request that were found (a subset of params.FIELDS)
    meta: dict[str, Any] = field(default_factory=dict)  # model, model_revision, device, diffusers, …
    source: str = JSON_CHUNK  # the chunk the parameters came from: "zimage-sse" or "parameters"
    parameters: str | None = None  # the A1111 text chunk as written

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "meta": self.meta,
            "source": self.source,
            "parameters": self.parameters,
        }


def read_png(data: bytes) -> PngParameters:
    """The parameters in a PNG: from its `zimage-sse` JSON chunk when present, else its A1111 text."""
    if not data.startswith(PNG_SIGNATURE):
        raise UnreadablePng("is not a PNG image")
    if len(data) > MAX_PNG_BYTES:
        raise UnreadablePng(f"is {len(data)} bytes, more than the limit of {MAX_PNG_BYTES}")
    try:
        # Only the chunks before the image data are read: nothing is decoded.
        with Image.open(BytesIO(data), formats=["PNG"]) as image:
            info = dict(image.info)
    except Exception as exc:  # Pillow raises many kinds for a damaged file
        raise UnreadablePng(f"is not a readable PNG image ({exc})") from exc
    text = info.get(A1111_CHUNK)
    text = str(text) if text is not None else None
    raw = info.get(JSON_CHUNK)
    if raw is not None:
        try:
            data_json = json.loads(str(raw))
        except ValueError as exc:
            raise UnreadablePng(f"has a {JSON_CHUNK} chunk that is not valid JSON ({exc})") from exc
        if not isinstance(data_json, dict):
            raise UnreadablePng(f"has a {JSON_CHUNK} chunk that is not a JSON object")
        params = {k: data_json[k] for k in FIELDS if k in data_json}
        for name, value in params.items():
            if not isinstance(value, _JSON_TYPES[name]) or isinstance(value, bool):
                raise UnreadablePng(
                    f"has a {JSON_CHUNK} chunk whose {name} is {value!r}, not {_JSON_KINDS[name]}"
                )
        meta = {k: v for k, v in data_json.items() if k not in FIELDS}
        return PngParameters(params, meta, JSON_CHUNK, text)
    if text is None:
        raise UnreadablePng(
            f"carries no generation parameters (neither a {A1111_CHUNK!r} nor a {JSON_CHUNK!r} text chunk)"
        )
    params, meta = parse_a1111(text)
    return PngParameters(params, meta, A1111_CHUNK, text)


def parse_a1111(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse AUTOMATIC1111's `parameters` text: the prompt, an optional "Negative prompt:" part, and a
    last line of "Key: value" pairs. Returns the job fields found and the other pairs (snake_case)."""
    lines = text.strip().split("\n")
    pairs = _A1111_PAIR.findall(lines[-1]) if lines else []
    if len(pairs) >= 3:  # A1111's test for "the last line holds the settings"
        lines = lines[:-1]
    else:
        pairs = []
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.startswith(_NEGATIVE):
            negative = [line.removeprefix(_NEGATIVE).strip()]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    params: dict[str, Any] = {"prompt": "\n".join(prompt).strip()}
    if negative is not None:
        params["negative_prompt"] = "\n".join(negative).strip()
    meta: dict[str, Any] = {}
    for key, raw in pairs:
        value = json.loads(raw) if raw.startswith('"') else raw.strip()
        if key == "Size":
            width, _, height = value.partition("x")
            params["width"] = _number(int, width, "Size", value)
            params["height"] = _number(int, height, "Size", value)
        elif key in _A1111_FIELDS:
            name, kind = _A1111_FIELDS[key]
            params[name] = _number(kind, value, key, value)
        else:
            meta[key.strip().lower().replace(" ", "_")] = value
    return params, meta


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "negative_prompt": str,
    "guidance": (int, float),
    **{name: int for name in ("width", "height", "steps", "seed", "num_images")},
}
_JSON_KINDS = {name: "text" if kind is str else "a number" for name, kind in _JSON_TYPES.items()}

_A1111_FIELDS: dict[str, tuple[str, type[int] | type[float]]] = {
    "Steps": ("steps", int),
    "CFG scale": ("guidance", float),
    "Seed": ("seed", int),
    "Batch size": ("num_images", int),
}


def _number(kind: type[int] | type[float], text: str, key: str, value: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        if key == "Size":
            what = "WIDTHxHEIGHT"
        raise UnreadablePng(f"has a {A1111_CHUNK} chunk whose {key} is {value!r}, not {what}") from None


def model_revision(location: str) -> str | None:
    """Something that names the exact checkpoint: the hub commit for a hub id or a hub cache snapshot,
    else a hash of the directory's configs and its weight files' names and sizes (hashing gigabytes of
    weights at every load would cost more than the load). None when nothing can be said."""
    path = Path(location)
    if path.is_dir():
        if path.parent.name == "snapshots" and _COMMIT.match(path.name):
            return path.name
        digest = hashlib.sha256()
        configs = [path / "model_index.json", *sorted(path.glob("*/*config.json"))]
        for file in configs:
            if file.is_file():
                digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
        for file in sorted(path.glob("*/*.safetensors")):
            digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}".encode())
        return "sha256:" + digest.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location, "model_index.json")
    except Exception:  # not a valid repo id, or no cache: nothing to name
        return None
    if isinstance(cached, str) and _COMMIT.match(Path(cached).parent.name):
        return Path(cached).parent.name
    return None


def info(path: Path, *, as_json: bool = False) -> int:
    """`zimage-sse info IMAGE.png`: print the parameters an image carries. Exit status 1 if none."""
    try:
        found = read_png(path.read_bytes())
    except (OSError, UnreadablePng) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"zimage-sse: {path}: {reason}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(found.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"from the {found.source!r} chunk")
    for key, value in [*found.params.items(), *sorted(found.meta.items())]:
        print(f"{key}: {value}")
    if found.parameters is not None:
        print(f"\n{A1111_CHUNK} (AUTOMATIC1111):\n{found.parameters}")
    return 0
