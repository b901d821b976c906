"""The cost model's curves: y = a + b·x + c·x², fitted by weighted least squares, and kept only where
the data says each term is real (zimage_sse/eta.py fits step, decode and save times with them)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# A fitted term must raise the cost across the sizes seen by more than this fraction of the mean cost
# (far above round-off, about 1e-16, and far below anything a timer can tell apart), and stand this
# many standard errors clear of zero where the points leave degrees of freedom to estimate them.
FIT_TOLERANCE = 1e-6
FIT_SIGNIFICANCE = 2.0


@dataclass(frozen=True)
class Curve:
    """y = a + b·x + c·x², fitted by least squares."""

    a: float
    b: float
    c: float = 0.0

    def __call__(self, x: float) -> float:
        return self.a + self.b * x + self.c * x * x


def fit_curve(points: Sequence[tuple[float, float, float]], quadratic: bool = True) -> Curve | None:
    """Fit (x, y, weight) points; quadratic needs 3 distinct x, linear 2. A fit that would predict
    a cost falling with size (negative b or c) is rejected for the simpler one, and a negative
    intercept (which would predict nothing, or less, for small sizes) for one through the origin.

    Each of those is decided with a tolerance from the data, never on the sign of round-off (which
    differs between CPUs' BLAS kernels): a term counts only if it raises the cost over the sizes seen
    by more than `FIT_TOLERANCE` of the mean cost and by more than `FIT_SIGNIFICANCE` standard errors.
    A flat history (a constant, with noise or round-off around it) has no cost model."""
    xs = {x for x, _, _ in points}
    if len(xs) < 2:
        return None
    low, high = min(xs), max(xs)
    weights = sum(p[2] for p in points)
    rise = FIT_TOLERANCE * abs(sum(p[1] * p[2] for p in points) / weights) if weights > 0 else 0.0
    for terms in (3, 2) if quadratic else (2,):
        if len(xs) < terms:
            continue
        fit = _lstsq(points, terms)
        if fit is not None and fit.curve.a < -rise:
            fit = _lstsq(points, terms, intercept=False)
        if fit is None:
            continue
        curve = fit.curve
        b_tol = max(rise / (high - low), FIT_SIGNIFICANCE * fit.se_b)
        if terms == 3:
            c_tol = max(rise / (high * high - low * low), FIT_SIGNIFICANCE * fit.se_c)
            if curve.c > c_tol and curve.b + 2 * curve.c * low > -b_tol:
                return curve
        elif curve.b > b_tol:
            return curve
    return None


@dataclass(frozen=True)
class _LeastSquares:
    curve: Curve
    se_b: float  # standard errors of b and c; 0 where the points leave no degree of freedom
    se_c: float


def _lstsq(
    points: Sequence[tuple[float, float, float]], terms: int, intercept: bool = True
) -> _LeastSquares | None:
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    weight = np.array([p[2] for p in points], dtype=float)
    w = np.sqrt(weight)
    scale = float(x.max()) or 1.0  # keeps the normal equations well conditioned
    columns = [np.ones_like(x), x / scale, (x / scale) ** 2][:terms]
    if not intercept:
        columns[0] = np.zeros_like(x)
    design = np.stack(columns, axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if not np.all(np.isfinite(coef)):
        return None
    # Weights count jobs, so the residual variance has (jobs - fitted terms) degrees of freedom.
    dof = float(weight.sum()) - (terms if intercept else terms - 1)
    se = np.zeros(terms)
    if dof > 0:
        residual = y * w - design @ coef
        variance = float(residual @ residual) / dof
        se = np.sqrt(np.clip(np.diag(np.linalg.pinv(design.T @ design)) * variance, 0.0, None))
    values = [float(coef[0]), float(coef[1]) / scale, float(coef[2]) / scale**2 if terms == 3 else 0.0]
    return _LeastSquares(
        Curve(0.0 if not intercept else values[0], values[1], values[2]),
        se_b=float(se[1]) / scale,
        se_c=float(se[2]) / scale**2 if terms == 3 else 0.0,
    )


Size = tuple[int, int, int]  # width, height, batch


def per_image_curve(
    per_size: Mapping[Size, float], counts: Mapping[Size, int]
) -> tuple[Curve | None, dict[int, float]]:
    """A phase's seconds per image as a curve in pixels (quadratic where that is significant: the VAE
    decoder's attention grows with the square of the latent), fitted on single images where two sizes
    of them are known, and for each batch count seen, what a batch costs against as many single images
    (on 2 CPU cores a batch of two 512² images decodes in 1.5 times one image's time, not 2)."""
    singles = {size: value for size, value in per_size.items() if size[2] == 1}
    fit_on = singles if len(singles) >= 2 else per_size
    curve = fit_curve([(s[0] * s[1], v / s[2], counts.get(s) or 1) for s, v in fit_on.items()])
    ratios: dict[int, list[float]] = {}
    if curve is not None and fit_on is singles:
        for (width, height, batch), value in per_size.items():
            expected = batch * curve(width * height)
            if batch > 1 and expected > 0:
                ratios.setdefault(batch, []).append(value / expected)
    return curve, {batch: statistics.median(values) for batch, values in ratios.items()}


def batch_ratio(ratios: Mapping[int, float], batch: int) -> float:
    """A batch's cost against as many single images: as learned for this batch count, else for the
    nearest one learned, else 1."""
    if batch == 1 or not ratios:
        return 1.0
    return ratios[min(ratios, key=lambda known: (abs(known - batch), known))]


def nearest(known: Mapping[Size, float], target: int, measure: Callable[[Size], int]) -> Size | None:
    if not known:
        return None
    return min(known, key=lambda s: abs(math.log(measure(s) / target)))
