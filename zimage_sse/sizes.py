"""Valid image sizes: the nearest one to a requested width or height, and a size for an aspect ratio.

Z-Image works on a latent grid of 16-pixel patches (settings.size_multiple), within min_size..max_size
and at most max_pixels; the A1111 API rounds what its clients ask for, and the home page's aspect-ratio
buttons offer sizes computed here, so the page and the API agree on what a valid size is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Settings

# The ratios people ask for (width:height): square, photo, 35 mm, widescreen; each also upright.
ASPECTS = ((1, 1), (4, 3), (3, 4), (3, 2), (2, 3), (16, 9), (9, 16))
# The areas offered for them: about 0.25, 0.5, 1, 2 and 4 megapixels (1024² is Turbo's default size).
AREAS = {
    512 * 512: "0.25 MP",
    724 * 724: "0.5 MP",
    1024 * 1024: "1 MP",
    1448 * 1448: "2 MP",
    2048 * 2048: "4 MP",
}
DEFAULT_AREA = 1024 * 1024


def fit(value: float, settings: Settings) -> int:
    """The nearest multiple of size_multiple (halves up), within min_size..max_size."""
    step = settings.size_multiple
    low = -(-settings.min_size // step) * step
    high = settings.max_size // step * step
    return min(high, max(low, math.floor(value / step + 0.5) * step))


def for_aspect(ratio: tuple[int, int], area: int, settings: Settings) -> tuple[int, int]:
    """A valid (width, height) near `area` pixels with the shape `ratio`, never above max_pixels.

    Both sides come from the exact shape (so 3:4 is 4:3 turned), scaled down together where one would
    pass max_size, then rounded."""
    across, down = ratio
    scale = math.sqrt(area / (across * down))
    scale = min(scale, settings.max_size / across, settings.max_size / down)
    width, height = fit(across * scale, settings), fit(down * scale, settings)
    while width * height > settings.max_pixels and min(width, height) > settings.min_size:
        # Rounding up went past the limit: take one multiple off the longer side.
        if width >= height:
            width = fit(width - settings.size_multiple, settings)
        else:
            height = fit(height - settings.size_multiple, settings)
    return width, height


@dataclass(frozen=True)
class AspectChoices:
    """What the home page's aspect-ratio buttons offer: each ratio's size at every area within limits."""

    areas: list[tuple[int, str]]  # (pixels, label)
    default: int  # the area selected at first
    ratios: list[tuple[str, dict[str, tuple[int, int]]]]  # ("16:9", {"1048576": (1360, 768), ...})


def aspect_choices(settings: Settings) -> AspectChoices:
    areas = [a for a in AREAS if a <= settings.max_pixels] or [settings.max_pixels]
    return AspectChoices(
        areas=[(area, AREAS.get(area, f"{area / 1e6:.2g} MP")) for area in areas],
        default=DEFAULT_AREA if DEFAULT_AREA in areas else areas[-1],
        ratios=[
            (f"{w}:{h}", {str(area): for_aspect((w, h), area, settings) for area in areas})
            for w, h in ASPECTS
        ],
    )
