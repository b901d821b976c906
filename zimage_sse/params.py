"""Job parameters and their validation: the one place that decides what a valid request is.

JSON requests are strict about types (a string is not a number, a bool is not an int); form posts
arrive as strings and are converted first. Every offending field is reported, each with a reason.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .config import Settings

MAX_SEED = 2**63 - 1

FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "seed", "num_images")


class InvalidRequest(Exception):
    """A request failed validation; `errors` maps each offending field to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class JobParams:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobParams:
        return cls(**{name: data[name] for name in FIELDS})


def validate(
    data: object, settings: Settings, *, from_form: bool = False, empty_prompt: bool = False
) -> JobParams:
    """Check a request body against the limits in `settings`; raise InvalidRequest listing every problem.

    `empty_prompt`: a missing or blank prompt is allowed (an unconditioned image, as AUTOMATIC1111's API
    allows); our own API and pages ask for one."""
    if not isinstance(data, Mapping):
        raise InvalidRequest({"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    for name in unknown:
        errors[name] = "unknown field"

    def get(name: str) -> object:
        value = data.get(name)
        if from_form and isinstance(value, str) and value.strip() == "" and name != "prompt":
            return None  # an empty form field means "use the default"
        return value

    given = get("prompt")
    prompt = _text(
        "" if empty_prompt and given is None else given,
        "prompt",
        settings.max_prompt_chars,
        errors,
        required=not empty_prompt,
    )
    negative = _text(get("negative_prompt"), "negative_prompt", settings.max_prompt_chars, errors)
    width = _int(
        get("width"), "width", settings.default_width, settings.min_size, settings.max_size, errors, from_form
    )
    height = _int(
        get("height"),
        "height",
        settings.default_height,
        settings.min_size,
        settings.max_size,
        errors,
        from_form,
    )
    for name, value in (("width", width), ("height", height)):
        if value is not None and value % settings.size_multiple:
            errors.setdefault(name, f"must be a multiple of {settings.size_multiple} (got {value})")
    pixels = width * height if width is not None and height is not None else 0
    if pixels > settings.max_pixels and not {"width", "height"} & errors.keys():
        errors["width"] = f"{width}×{height} is {pixels} pixels, more than the limit of {settings.max_pixels}"
    steps = _int(get("steps"), "steps", settings.default_steps, 1, settings.max_steps, errors, from_form)
    guidance = _float(
        get("guidance"), "guidance", settings.default_guidance, 0.0, settings.max_guidance, errors, from_form
    )
    seed = _int(get("seed"), "seed", None, 0, MAX_SEED, errors, from_form)
    num_images = _int(get("num_images"), "num_images", 1, 1, settings.max_images, errors, from_form)
    if errors:
        raise InvalidRequest(errors)
    assert prompt is not None and width is not None and height is not None and steps is not None
    assert guidance is not None and num_images is not None
    return JobParams(
        prompt=prompt,
        negative_prompt=negative or "",
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=secrets.randbelow(2**32) if seed is None else seed,
        num_images=num_images,
    )


def _text(value: object, name: str, limit: int, errors: dict[str, str], required: bool = False) -> str | None:
    if value is None:
        if required:
            errors[name] = "is required"
        return None
    if not isinstance(value, str):
        errors[name] = "must be a string"
        return None
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON can carry a lone surrogate ("\ud800"); SQLite cannot store it
            errors[name] = "must be valid Unicode text (it has a lone surrogate)"
            return None
    if required and not value.strip():
        errors[name] = "must not be empty"
        return None
    if len(value) > limit:
        errors[name] = f"is {len(value)} characters, more than the limit of {limit}"
        return None
    return value


def _int(
    value: object,
    name: str,
    default: int | None,
    low: int,
    high: int,
    errors: dict[str, str],
    from_form: bool,
) -> int | None:
    if value is None:
        return default
    if from_form and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            errors[name] = f"must be a whole number (got {value!r})"
            return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors[name] = "must be a whole number"
        return None
    if not low <= value <= high:
        errors[name] = f"must be between {low} and {high} (got {value})"
        return None
    return value


def _float(
    value: object, name: str, default: float, low: float, high: float, errors: dict[str, str], from_form: bool
) -> float | None:
    if value is None:
        return default
    if from_form and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            errors[name] = f"must be a number (got {value!r})"
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors[name] = "must be a number"
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float is out of range too
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        errors[name] = f"must be between {low:g} and {high:g} (got {value})"
        return None
    return number
