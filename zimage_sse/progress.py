"""How progress reads to people: the time-based percent, durations, and the median behind estimates.

Pure functions of plain numbers, shared by the server and the terminal client, so the bar on a page and
the bar in a terminal agree. Nothing here imports more than the standard library: the client imports it
and starts without torch or Starlette.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

# An unknown duration reads as a dash, never as a made-up number.
UNKNOWN = "–"


def percent(
    elapsed: float | None, remaining: float | None, floor: float = 0.0, *, done: bool = False
) -> float:
    """Time-based progress, 100·elapsed / (elapsed + remaining), so a slow phase (decode) does not make the
    bar jump; 100 only once `done`, at most 99.9 before.

    It never goes below `floor`, the value shown last: when a new estimate is longer than the last, the
    ETA grows and the bar waits for time to catch up instead of going back. Without an elapsed time or
    an estimate it stays at `floor`.
    """
    if done:
        return 100.0
    if elapsed is None or remaining is None or elapsed + remaining <= 0:
        return floor
    return max(floor, min(99.9, 100.0 * elapsed / (elapsed + remaining)))


def duration(seconds: float | None, *, compact: bool = False) -> str:
    """A duration for people: 4.2 s, 38 s, 2 min 05 s, 1 h 02 min; None is UNKNOWN.

    `compact` writes the same figures without spaces for a terminal line: 4.2s, 38s, 2m05s, 1h02m.
    """
    if seconds is None:
        return UNKNOWN
    space, minute = ("", "m") if compact else (" ", " min")
    # Thresholds on the rounded figure, so 9.96 s reads 10 s and 59.6 s reads 1 min 00 s, not 10.0 and 60.
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}{space}s"
    if round(seconds) < 60:
        return f"{seconds:.0f}{space}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}{minute}{space}{rest:02d}{space}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}{space}h{space}{minutes:02d}{minute}"


ENDINGS = {"done": "Done", "failed": "Failed", "cancelled": "Cancelled"}
TITLE_PROMPT_CHARS = 40


def tab_title(status: str, percent: float, eta_s: float | None, position: int | None, prompt: str) -> str:
    """What a job's browser tab says, before " · zimage-sse": "[42%] 3.0 s left" while it runs,
    "Queued (2)" while it waits, "Done · <prompt>" at the end, so a person in another tab sees it.

    A running job whose ETA is not known yet says so rather than show a number."""
    if status in ENDINGS:
        short = prompt if len(prompt) <= TITLE_PROMPT_CHARS else prompt[: TITLE_PROMPT_CHARS - 1] + "…"
        return f"{ENDINGS[status]} · {short}" if short else ENDINGS[status]
    if status == "queued":
        return f"Queued ({position})" if position else "Queued"
    left = "ETA unknown" if eta_s is None else f"{duration(eta_s)} left"
    return f"[{percent:.0f}%] {left}"


def median(values: Iterable[float | None]) -> float | None:
    """The median of the finite values given; None (unknown) when there are none.

    None, NaN and infinities stand for measurements that are missing, so they are passed over rather
    than let one skew an estimate.
    """
    known = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(known) if known else None
