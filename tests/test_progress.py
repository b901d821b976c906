"""The shared progress figures: the time-based percent, durations as people read them, the median."""

from __future__ import annotations

import math

import pytest

from zimage_sse.progress import UNKNOWN, duration, median, percent, tab_title


def test_percent_is_elapsed_over_elapsed_plus_remaining() -> None:
    assert percent(3.0, 1.0) == 75.0
    assert percent(0.0, 5.0) == 0.0


def test_percent_stops_short_of_100_until_done() -> None:
    assert percent(10.0, 0.0) == 99.9
    assert percent(10.0, 0.0, floor=99.9, done=True) == 100.0
    assert percent(None, None, done=True) == 100.0


def test_percent_never_goes_back_when_the_estimate_grows() -> None:
    shown = percent(5.0, 5.0)
    assert percent(6.0, 14.0, floor=shown) == shown == 50.0
    assert percent(15.0, 5.0, floor=shown) == 75.0


@pytest.mark.parametrize(("elapsed", "remaining"), [(None, 3.0), (3.0, None), (None, None), (0.0, 0.0)])
def test_percent_without_figures_stays_where_it_was(elapsed: float | None, remaining: float | None) -> None:
    assert percent(elapsed, remaining, floor=42.0) == 42.0


@pytest.mark.parametrize(
    ("seconds", "page", "terminal"),
    [
        (0.0, "0.0 s", "0.0s"),
        (4.24, "4.2 s", "4.2s"),
        (9.96, "10 s", "10s"),
        (38.4, "38 s", "38s"),
        (59.6, "1 min 00 s", "1m00s"),
        (125.0, "2 min 05 s", "2m05s"),
        (3599.4, "59 min 59 s", "59m59s"),
        (3725.0, "1 h 02 min", "1h02m"),
    ],
)
def test_duration_for_a_page_and_for_a_terminal(seconds: float, page: str, terminal: str) -> None:
    assert duration(seconds) == page
    assert duration(seconds, compact=True) == terminal


def test_an_unknown_duration_is_a_dash() -> None:
    assert duration(None) == duration(None, compact=True) == UNKNOWN == "–"


def test_median_passes_over_missing_and_non_finite_values() -> None:
    assert median([3.0, None, 1.0, math.nan, 2.0, math.inf]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) is None
    assert median([None, math.nan]) is None


@pytest.mark.parametrize(
    ("status", "percent_", "eta", "position", "title"),
    [
        ("running", 42.4, 3.04, None, "[42%] 3.0 s left"),
        ("running", 5, None, None, "[5%] ETA unknown"),
        ("queued", 0, 20.0, 2, "Queued (2)"),
        ("done", 100, 0.0, None, "Done · a fox"),
        ("failed", 30, None, None, "Failed · a fox"),
        ("cancelled", 30, None, None, "Cancelled · a fox"),
    ],
)
def test_tab_title_says_the_state_a_person_waits_on(
    status: str, percent_: float, eta: float | None, position: int | None, title: str
) -> None:
    assert tab_title(status, percent_, eta, position, "a fox") == title


def test_tab_title_shortens_a_long_prompt() -> None:
    title = tab_title("done", 100, 0.0, None, "a" * 100)
    assert title == "Done · " + "a" * 39 + "…"
