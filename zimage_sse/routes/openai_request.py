"""An OpenAI `POST /v1/images/generations` body as a job: its fields checked, the job's parameters
validated by params.py like every other way in, and what the answer should look like.

Field names and values follow the `openai` package (`types/image_generate_params.py`); the
generation extensions take vLLM-Omni's names (`negative_prompt`, `num_inference_steps`,
`guidance_scale`, `seed`). Every problem is reported under the OpenAI field it came from, so an
error's `param` names what the caller sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from ..config import Settings
from ..params import InvalidRequest, JobParams, validate

FORMATS = ("png", "jpeg", "webp")
RESPONSE_FORMATS = ("b64_json", "url")
# Every value the SDK may send (`quality` in image_generate_params.py); Turbo has one quality, so it
# is only echoed back.
QUALITIES = ("low", "medium", "high", "xhigh", "max", "auto", "standard", "hd")
MAX_PARTIAL_IMAGES = 3  # the OpenAI API's limit (image_generate_params.py, `partial_images`)
DEFAULT_COMPRESSION = 100  # OpenAI's default `output_compression`
# Accepted and ignored: Turbo has no transparent background, no moderation model and no styles, and
# the user fields only tag the request at OpenAI (README, "OpenAI-compatible API").
IGNORED = ("background", "moderation", "style", "user", "safety_identifier", "complexity")
# Our job fields under the OpenAI (and vLLM-Omni) names they are sent as, in the order errors list them.
OPENAI_NAMES = {
    "prompt": "prompt",
    "width": "size",
    "height": "size",
    "num_images": "n",
    "negative_prompt": "negative_prompt",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "seed": "seed",
}
KNOWN = frozenset(
    {
        *OPENAI_NAMES.values(),
        "model",
        "quality",
        "response_format",
        "output_format",
        "output_compression",
        "stream",
        "partial_images",
        *IGNORED,
    }
)
SIZE = re.compile(r"^(\d{1,9})x(\d{1,9})$")
T = TypeVar("T")
BODY = "body"  # the key of an error about the body as a whole (its `param` is null)


@dataclass(frozen=True)
class ImageRequest:
    """A valid generation request: the job to run and how to answer with its images."""

    params: JobParams
    quality: str
    response_format: str
    output_format: str
    compression: int
    stream: bool
    partial_images: int

    @property
    def size(self) -> str:
        return f"{self.params.width}x{self.params.height}"


def parse(data: object, settings: Settings) -> ImageRequest:
    """The request in `data` checked against `settings`; InvalidRequest keyed by OpenAI field names."""
    if not isinstance(data, Mapping):
        raise InvalidRequest({BODY: "must be a JSON object"})
    errors: dict[str, str] = {}
    for name in sorted(str(key) for key in data if key not in KNOWN):
        errors[name] = "is not a parameter this server knows (unrecognized request argument)"
    _optional(data, "model", str, "a string", errors)  # any model name: one model per server
    quality = _choice(data, "quality", QUALITIES, "auto", errors)
    response_format = _choice(data, "response_format", RESPONSE_FORMATS, "b64_json", errors)
    output_format = _choice(data, "output_format", FORMATS, "png", errors)
    compression = _whole(data, "output_compression", 0, 100, DEFAULT_COMPRESSION, errors)
    stream = _optional(data, "stream", bool, "true or false", errors) or False
    partial_images = _whole(data, "partial_images", 0, MAX_PARTIAL_IMAGES, 0, errors)
    for name in IGNORED:
        _optional(data, name, str, "a string", errors)
    width, height = _size(data.get("size"), settings, errors)
    job = {
        "prompt": data.get("prompt"),
        "negative_prompt": data.get("negative_prompt"),
        "width": width,
        "height": height,
        "steps": data.get("num_inference_steps"),
        "guidance": data.get("guidance_scale"),
        "seed": data.get("seed"),
        "num_images": data.get("n"),
    }
    params: JobParams | None = None
    try:
        params = validate(job, settings)
    except InvalidRequest as exc:
        for field, reason in exc.errors.items():
            errors.setdefault(OPENAI_NAMES[field], _reason(field, reason))
    if params is not None and stream and params.num_images > 1:
        errors["n"] = "must be 1 with stream: true (one image is streamed per request)"
    if errors or params is None:
        raise InvalidRequest(_ordered(errors))
    return ImageRequest(
        params=params,
        quality=quality,
        response_format=response_format,
        output_format=output_format,
        compression=compression,
        stream=stream,
        partial_images=partial_images,
    )


def error_message(errors: dict[str, str]) -> tuple[str, str | None]:
    """One message listing every problem, and the `param` an OpenAI error names (the first)."""
    message = "; ".join(
        reason if field == BODY else f"'{field}' {reason}" for field, reason in errors.items()
    )
    first = next(iter(errors))
    return message, None if first == BODY else first


def _size(value: object, settings: Settings, errors: dict[str, str]) -> tuple[int | None, int | None]:
    """`WIDTHxHEIGHT`, or `auto` / absent for the server's default size (1024x1024 unless changed)."""
    if value is None or value == "auto":
        return settings.default_width, settings.default_height
    match = SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        errors["size"] = "must be WIDTHxHEIGHT in pixels (e.g. 1024x1024) or auto"
        return None, None
    return int(match[1]), int(match[2])


def _reason(field: str, reason: str) -> str:
    """params.py's reason for `field`, said of the OpenAI field: a size's width or height says which."""
    if field in ("width", "height") and not reason[:1].isdigit():  # "256×256 is … pixels" names both
        return f"{field} {reason}"
    return reason


def _optional(
    data: Mapping[str, object], name: str, kind: type[T], what: str, errors: dict[str, str]
) -> T | None:
    value = data.get(name)
    if value is None or isinstance(value, kind):
        return value
    errors[name] = f"must be {what}"
    return None


def _choice(
    data: Mapping[str, object], name: str, choices: tuple[str, ...], default: str, errors: dict[str, str]
) -> str:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        errors[name] = f"must be one of {', '.join(choices)} (got {value!r:.40})"
        return default
    return value


def _whole(
    data: Mapping[str, object], name: str, low: int, high: int, default: int, errors: dict[str, str]
) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors[name] = f"must be a whole number from {low} to {high}"
        return default
    return value


def _ordered(errors: dict[str, str]) -> dict[str, str]:
    """The body first, then the job's own fields (prompt first), then the rest as found."""
    order = [BODY, *dict.fromkeys(OPENAI_NAMES.values())]
    rank = {name: index for index, name in enumerate(order)}
    return dict(sorted(errors.items(), key=lambda item: rank.get(item[0], len(order))))
