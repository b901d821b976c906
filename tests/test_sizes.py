"""Valid sizes: rounding a requested side, and sizes for an aspect ratio at an area."""

from __future__ import annotations

import pytest

from zimage_sse.config import Settings
from zimage_sse.params import validate
from zimage_sse.sizes import ASPECTS, aspect_choices, fit, for_aspect


@pytest.mark.parametrize(("asked", "got"), [(100, 96), (104, 112), (1, 64), (5000, 2048), (1023, 1024)])
def test_fit_rounds_to_the_nearest_multiple_within_the_limits(asked: int, got: int) -> None:
    assert fit(asked, Settings()) == got


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(max_pixels=1024 * 1024), Settings(max_size=1024), Settings(min_size=256)],
)
def test_every_offered_aspect_size_is_one_a_job_accepts(settings: Settings) -> None:
    choices = aspect_choices(settings)
    for ratio, by_area in choices.ratios:
        across, down = map(int, ratio.split(":"))
        for area, (width, height) in by_area.items():
            validate({"prompt": "x", "width": width, "height": height}, settings)
            assert width * height <= settings.max_pixels
            if max(width, height) < settings.max_size:  # not held in by the longest side
                assert abs(width * height / int(area) - 1) < 0.06, (ratio, area, width, height)
            assert abs((width / height) / (across / down) - 1) < 0.05, (ratio, area, width, height)


def test_areas_beyond_the_pixel_limit_are_not_offered() -> None:
    choices = aspect_choices(Settings(max_pixels=1024 * 1024))
    assert [label for _, label in choices.areas] == ["0.25 MP", "0.5 MP", "1 MP"]
    assert choices.default == 1024 * 1024


def test_upright_ratios_are_the_landscape_ones_turned() -> None:
    settings = Settings()
    for across, down in ASPECTS:
        landscape = for_aspect((across, down), 1024 * 1024, settings)
        assert for_aspect((down, across), 1024 * 1024, settings) == landscape[::-1]
