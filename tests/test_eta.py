"""The ETA engine (zimage_sse/eta.py) on synthetic histories whose right answers are known.

The histories are built from a generating cost curve (step seconds = 0.01 + 2e-5·T + 3e-9·T², T image
tokens, about the H200's 144 ms at 1024²), a decode line in pixels, and the H200 cold-start figures of
shared/data/h200-step-profile.json, so every prediction can be checked against the number it should be.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from zimage_sse.curves import Curve, fit_curve
from zimage_sse.estimate import LiveEstimate, accuracy_points, accuracy_report
from zimage_sse.eta import (
    CONFIDENCE,
    DECODE_PER_STEP,
    HISTORY_PER_SIZE,
    PRIOR_TOLERANCE,
    EtaModel,
    JobRecord,
    Key,
    Prediction,
    tokens,
)

KEY: Key = ("z-image-turbo", "cuda:0", "bfloat16")
A, B, C = 0.01, 2e-5, 3e-9
# Small deterministic scatter, as real step times have (under 6 % within a job on the H200).
JITTER = (1.0, 1.012, 0.991, 1.004, 0.996, 1.008, 0.993, 1.0)


def curve_step(token_count: float) -> float:
    return A + B * token_count + C * token_count * token_count


def curve_decode(pixels: float) -> float:
    return 0.005 + 8e-8 * pixels


def job(
    width: int,
    height: int,
    *,
    batch: int = 1,
    steps: int = 9,
    step: float | None = None,
    first: float | None = None,
    step_s: Sequence[float] | None = None,
    encode: float | None = 0.03,
    decode: float | None = None,
    save: float | None = 0.02,
    loading: float | None = None,
    warm_up: bool = False,
    gpu_util: float | None = None,
    key: Key = KEY,
    jitter: bool = False,
) -> JobRecord:
    """One finished job; by default its steps and decode follow the generating curves exactly, and
    its first step is 30 % slow, as a first step is (set-up costs)."""
    if step_s is None:
        base = curve_step(tokens(width, height, batch)) if step is None else step
        factors = itertools.cycle(JITTER) if jitter else itertools.repeat(1.0)
        rest = [base * next(factors) for _ in range(steps - 1)]
        step_s = [base * 1.3 if first is None else first, *rest]
    phases: dict[str, float] = {}
    if encode is not None:
        phases["encoding"] = encode
    phases["decoding"] = curve_decode(width * height * batch) if decode is None else decode
    if save is not None:
        phases["saving"] = save
    if loading is not None:
        phases["loading"] = loading
    model, device, dtype = key
    return JobRecord(
        model=model,
        device=device,
        dtype=dtype,
        width=width,
        height=height,
        batch=batch,
        step_s=tuple(step_s),
        phases=phases,
        warm_up=warm_up,
        gpu_util=gpu_util,
    )


def predict(
    model: EtaModel, width: int, height: int, batch: int = 1, steps: int = 9, **kw: Any
) -> Prediction:
    prediction = model.predict(KEY, width, height, batch, steps, **kw)
    assert prediction is not None
    return prediction


def known(value: float | None) -> float:
    assert value is not None
    return value


def total(prediction: Prediction | None) -> float:
    assert prediction is not None
    assert prediction.total_s is not None
    return prediction.total_s


# -- fit_curve ---------------------------------------------------------------------------------


def test_fit_curve_recovers_the_generating_quadratic() -> None:
    xs = [1024, 2304, 4096, 6144, 9216, 16384]  # 512² … 2048² in tokens
    curve = fit_curve([(x, curve_step(x), 1.0) for x in xs])

    assert curve is not None
    assert curve.a == pytest.approx(A, rel=1e-6)
    assert curve.b == pytest.approx(B, rel=1e-6)
    assert curve.c == pytest.approx(C, rel=1e-6)
    assert curve(25600) == pytest.approx(curve_step(25600), rel=1e-6)


def test_fit_curve_weights_do_not_bias_an_exact_fit_and_do_pull_a_noisy_one() -> None:
    xs = [1024, 2304, 4096, 9216, 16384]
    weighted = fit_curve([(x, curve_step(x), float(w)) for x, w in zip(xs, (1, 8, 3, 1, 2), strict=True)])
    assert weighted is not None
    assert (weighted.a, weighted.b, weighted.c) == pytest.approx((A, B, C), rel=1e-6)

    # Two readings at one x, one trusted 9×: the line goes nearer the trusted one.
    points = [(1000.0, 2.0, 1.0), (2000.0, 2.0, 1.0), (2000.0, 4.0, 9.0)]
    line = fit_curve(points, quadratic=False)
    assert line is not None
    assert line(2000) == pytest.approx(0.1 * 2.0 + 0.9 * 4.0, rel=1e-9)


def test_fit_curve_with_two_distinct_x_falls_back_to_a_line() -> None:
    points = [(1000.0, 0.03, 1.0), (4000.0, 0.09, 1.0), (4000.0, 0.09, 2.0)]
    curve = fit_curve(points)

    assert curve is not None
    assert curve.c == 0.0
    assert curve.b == pytest.approx(2e-5, rel=1e-9)
    assert curve.a == pytest.approx(0.01, rel=1e-9)
    assert curve(2500) == pytest.approx(0.06, rel=1e-9)


def test_fit_curve_quadratic_false_fits_a_line_through_three_sizes() -> None:
    xs = [1.0, 2.0, 3.0]
    ys = [2.0, 3.1, 3.9]
    curve = fit_curve([(x, y, 1.0) for x, y in zip(xs, ys, strict=True)], quadratic=False)
    expected_b, expected_a = np.polyfit(xs, ys, 1)

    assert curve is not None
    assert curve.c == 0.0
    assert (curve.a, curve.b) == pytest.approx((expected_a, expected_b), rel=1e-9)


def test_fit_curve_rejects_a_negative_c_for_the_line() -> None:
    """Concave data (cost per token falling with size) would give c < 0: a curve that turns down
    past the largest size. The straight line is used instead."""
    xs = [1.0, 4.0, 9.0, 16.0, 25.0]
    ys = [math.sqrt(x) for x in xs]
    unconstrained = np.polyfit(xs, ys, 2)
    assert unconstrained[0] < 0  # the data really would give a negative c

    curve = fit_curve([(x, y, 1.0) for x, y in zip(xs, ys, strict=True)])
    expected_b, expected_a = np.polyfit(xs, ys, 1)

    assert curve is not None
    assert curve.c == 0.0
    assert (curve.a, curve.b) == pytest.approx((expected_a, expected_b), rel=1e-9)
    assert curve(100.0) > curve(25.0)  # still rising past the known sizes


def test_fit_curve_rejects_a_cost_falling_at_the_smallest_size() -> None:
    """c > 0 but a slope below zero at the smallest x: smaller images would cost more. Rejected."""
    xs = [3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
    ys = [(x - 4.0) ** 2 + 1.0 for x in xs]
    curve = fit_curve([(x, y, 1.0) for x, y in zip(xs, ys, strict=True)])

    assert curve is not None
    assert curve.c == 0.0
    assert curve.b > 0
    # The least-squares line would cross zero at a positive size (intercept < 0): it goes through
    # the origin instead, so no size is predicted to cost nothing.
    assert curve.a == 0.0
    assert curve.b == pytest.approx(sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs))


def test_fit_curve_keeps_small_sizes_positive() -> None:
    """Decode measured at two large sizes whose line would reach zero before 512²."""
    points = [(896.0 * 896, 1.85, 1.0), (1024.0 * 1024, 2.55, 1.0)]
    line = fit_curve(points, quadratic=False)

    assert line is not None
    assert line.a == 0.0
    assert line(512 * 512) > 0.3


def test_fit_curve_cost_falling_with_size_is_none() -> None:
    assert fit_curve([(x, 10.0 - x, 1.0) for x in (1.0, 2.0, 3.0, 4.0)]) is None
    assert fit_curve([(1.0, 5.0, 1.0), (2.0, 5.0, 1.0)]) is None  # flat: no cost per token at all


FLAT_XS = [1024.0, 2304.0, 4096.0, 9216.0, 16384.0]  # 512² … 2048² in tokens


@pytest.mark.parametrize("noise", [0.0, 1e-15, 1e-9])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("quadratic", [True, False])
@pytest.mark.parametrize("sizes", [2, 3, 5])
def test_fit_curve_flat_history_has_no_cost_model_whatever_the_round_off(
    noise: float, seed: int, quadratic: bool, sizes: int
) -> None:
    """A constant cost with noise (or round-off, which another CPU's BLAS gives with another sign)
    around it: no line or curve rises by anything real, so there is no cost model on any machine."""
    rng = np.random.default_rng(seed)
    points = [(x, 5.0 + noise * float(rng.standard_normal()), float(rng.integers(1, 4))) for x in FLAT_XS]
    assert fit_curve(points[:sizes], quadratic=quadratic) is None


@pytest.mark.parametrize("noise", [0.0, 1e-9])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sizes", [2, 3, 5])
def test_fit_curve_keeps_a_tiny_but_real_slope(noise: float, seed: int, sizes: int) -> None:
    """Half a millisecond more at 2048² than at 512² on a 5 s cost (1e-4 of it): small, but far above
    the noise, so the line is kept and predicts the rise."""
    slope = 5e-4 / (FLAT_XS[-1] - FLAT_XS[0])
    rng = np.random.default_rng(seed)
    points = [(x, 5.0 + slope * x + noise * float(rng.standard_normal()), 1.0) for x in FLAT_XS]
    curve = fit_curve(points[:sizes])

    assert curve is not None
    assert curve.b + 2 * curve.c * FLAT_XS[0] > 0
    assert curve(FLAT_XS[-1]) - curve(FLAT_XS[0]) == pytest.approx(5e-4, rel=0.02)


def test_fit_curve_leaves_a_slope_within_its_noise_out() -> None:
    """Costs that scatter by ±0.05 s around 1 s with a fitted slope well inside one standard error:
    not a cost model. The same points with a rise ten times the scatter are one."""
    xs = [1024.0, 2304.0, 4096.0, 9216.0]
    scatter = [0.05, -0.05, -0.04, 0.045]
    flat = [(x, 1.0 + e, 1.0) for x, e in zip(xs, scatter, strict=True)]
    assert float(np.polyfit(xs, [y for _, y, _ in flat], 1)[0]) > 0  # the least-squares slope is > 0
    assert fit_curve(flat, quadratic=False) is None

    rising = [(x, 1.0 + e + 0.5 * x / xs[-1], 1.0) for x, e in zip(xs, scatter, strict=True)]
    assert fit_curve(rising, quadratic=False) is not None


def test_flat_history_predicts_a_new_size_from_the_nearest_one() -> None:
    """EtaModel on a history whose step time does not change with size (to round-off): no cost
    model, so a new size is the nearest known one scaled by its tokens."""
    model = EtaModel([job(w, w, step=0.2 + 1e-15 * i) for i, w in enumerate((512, 768, 1024))])
    assert model.step_curve(KEY) is None
    prediction = model.predict(KEY, 1280, 1280, 1, 8)
    assert prediction is not None
    assert prediction.source == "scaled"
    assert prediction.step_s == pytest.approx(0.2 * (1280 * 1280) / (1024 * 1024))


@pytest.mark.parametrize(
    "points",
    [[], [(4096.0, 0.144, 1.0)], [(4096.0, 0.144, 1.0), (4096.0, 0.150, 3.0)]],
    ids=["none", "one", "one-x-twice"],
)
def test_fit_curve_needs_two_distinct_x(points: list[tuple[float, float, float]]) -> None:
    assert fit_curve(points) is None
    assert fit_curve(points, quadratic=False) is None


# -- EtaModel.predict: sizes seen before -------------------------------------------------------


def test_seen_size_gets_the_median_step_and_phases() -> None:
    model = EtaModel(
        [
            job(1024, 1024, step=0.144, jitter=True, encode=0.031, decode=0.087, save=0.020),
            job(1024, 1024, step=0.144, jitter=True, encode=0.030, decode=0.085, save=0.021),
            job(1024, 1024, step=0.144, jitter=True, encode=0.090, decode=0.120, save=0.019),
        ]
    )
    prediction = predict(model, 1024, 1024, steps=9)

    assert prediction.source == "size"
    assert prediction.step_s == pytest.approx(0.144, rel=0.005)
    assert prediction.encode_s == pytest.approx(0.031)
    assert prediction.decode_s == pytest.approx(0.087)
    assert prediction.save_s == pytest.approx(0.020)
    assert prediction.warmup_s == 0.0
    assert total(prediction) == pytest.approx(0.031 + 9 * prediction.step_s + 0.087 + 0.020)


def test_a_device_that_got_faster_is_learned_from_its_newest_jobs() -> None:
    """After 10,000 jobs at 0.20 s a step, a driver update makes steps 0.15 s: the prior follows once
    half the window has been seen, where a median over all history would wait 10,000 more jobs."""
    model = EtaModel([job(1024, 1024, step=0.20) for _ in range(10_000)])
    for _ in range(HISTORY_PER_SIZE // 2 + 1):
        model.add(job(1024, 1024, step=0.15))

    prediction = model.predict(KEY, 1024, 1024, 1, 9)

    assert prediction is not None and prediction.step_s == pytest.approx(0.15)
    assert len(model.records(KEY)) == HISTORY_PER_SIZE  # what it learns from stays bounded


def test_one_outlier_job_barely_moves_a_seen_size() -> None:
    normal = [job(1024, 1024, step=0.144, jitter=True) for _ in range(4)]
    outlier = job(1024, 1024, step=0.400)  # contention throughout one job: a mean would say 0.195
    prediction = predict(EtaModel([*normal, outlier]), 1024, 1024)

    assert prediction.step_s == pytest.approx(0.144, rel=0.02)


def test_the_first_step_of_each_job_is_left_out() -> None:
    # Two-step jobs: half of all steps are slow first steps, so including them would double the prior.
    history = [job(1024, 1024, step_s=[1.0, 0.144]) for _ in range(3)]
    prediction = predict(EtaModel(history), 1024, 1024)

    assert prediction.step_s == pytest.approx(0.144)


# -- EtaModel.predict: sizes never seen --------------------------------------------------------

KNOWN = [(512, 512), (768, 768), (1024, 1024), (1536, 1536), (2048, 2048)]


def cost_model_history() -> EtaModel:
    return EtaModel(job(w, h, jitter=True) for w, h in KNOWN for _ in range(2))


@pytest.mark.parametrize(
    ("width", "height", "batch"),
    [(1024, 1536, 1), (1280, 1280, 1), (640, 640, 1), (1024, 1024, 2), (2560, 2560, 1), (2048, 3072, 1)],
    ids=["1024x1536", "1280x1280", "640x640", "1024x1024x2", "2560x2560", "2048x3072"],
)
def test_unseen_size_follows_the_cost_model(width: int, height: int, batch: int) -> None:
    prediction = predict(cost_model_history(), width, height, batch, steps=8)
    # A batch costs `batch` images of its size (the H200 profile: 1024² ×2 is 1.96× one image).
    expected_step = batch * curve_step(tokens(width, height, 1))
    expected_decode = batch * curve_decode(width * height)

    assert prediction.source == "cost-model"
    assert prediction.step_s == pytest.approx(expected_step, rel=0.10)
    assert prediction.decode_s == pytest.approx(expected_decode, rel=0.10)
    assert total(prediction) == pytest.approx(0.03 + 8 * expected_step + expected_decode + 0.02, rel=0.10)


def test_cost_model_with_three_sizes_is_within_ten_percent() -> None:
    model = EtaModel(job(w, h) for w, h in [(512, 512), (1024, 1024), (2048, 2048)])
    for width, height in [(768, 768), (1536, 1536), (1024, 2048), (2560, 2560)]:
        prediction = predict(model, width, height)
        assert prediction.source == "cost-model"
        assert prediction.step_s == pytest.approx(curve_step(tokens(width, height, 1)), rel=0.10)


def test_cost_model_predicts_a_measured_h200_size_it_never_saw() -> None:
    """shared/data/h200-step-profile.json, every run but 1024x1536: its measured 224.75 ms step and
    134.1 ms decode are predicted within 10 %."""
    runs = [  # width, height, batch, first step ms, steady step ms, encode ms, decode ms
        (512, 512, 1, 63.2, 43.13, 49.2, 21.7),
        (768, 768, 1, 85.72, 83.22, 30.7, 48.8),
        (1024, 1024, 1, 144.58, 143.86, 30.4, 86.7),
        (1536, 1536, 1, 359.0, 353.09, 37.1, 206.9),
        (2048, 2048, 1, 731.0, 724.52, 32.8, 398.9),
        (1024, 1024, 2, 285.0, 281.66, 30.4, 137.9),
    ]
    model = EtaModel(
        job(w, h, batch=n, first=f / 1000, step=s / 1000, jitter=True, encode=e / 1000, decode=d / 1000)
        for w, h, n, f, s, e, d in runs
    )
    prediction = predict(model, 1024, 1536)

    assert prediction.source == "cost-model"
    assert prediction.step_s == pytest.approx(0.22475, rel=0.10)
    assert prediction.decode_s == pytest.approx(0.1341, rel=0.10)


def test_one_known_size_is_scaled_by_tokens() -> None:
    model = EtaModel([job(1024, 1024, step=0.144, decode=0.087)])

    larger = predict(model, 2048, 2048)
    assert larger.source == "scaled"
    assert larger.step_s == pytest.approx(4 * 0.144)
    assert larger.decode_s == pytest.approx(4 * 0.087)

    smaller = predict(model, 512, 1024)
    assert smaller.source == "scaled"
    assert smaller.step_s == pytest.approx(0.072)
    assert smaller.decode_s == pytest.approx(0.0435)

    batch = predict(model, 1024, 1024, batch=2)
    assert batch.step_s == pytest.approx(0.288)


def test_two_known_sizes_give_a_line_in_tokens() -> None:
    model = EtaModel([job(512, 512, step=0.05), job(1024, 1024, step=0.14)])
    prediction = predict(model, 768, 768)

    # The line through (1024, 0.05) and (4096, 0.14) at 2304 tokens.
    assert prediction.source == "cost-model"
    assert prediction.step_s == pytest.approx(0.05 + (2304 - 1024) * 0.09 / 3072)


def test_no_history_for_the_key_is_none() -> None:
    assert EtaModel().predict(KEY, 1024, 1024, 1, 9) is None
    model = EtaModel([job(1024, 1024, key=("other-model", "cuda:0", "bfloat16"))])
    assert model.predict(KEY, 1024, 1024, 1, 9) is None
    assert model.step_curve(KEY) is None


def test_keys_do_not_leak_into_each_other() -> None:
    keys_and_steps: list[tuple[Key, float]] = [
        (KEY, 0.144),
        (("other-model", "cuda:0", "bfloat16"), 0.5),
        (("z-image-turbo", "cpu", "bfloat16"), 30.0),
        (("z-image-turbo", "cuda:0", "float32"), 0.3),
    ]
    model = EtaModel(job(1024, 1024, step=step, key=key) for key, step in keys_and_steps)

    for key, step in keys_and_steps:
        prediction = model.predict(key, 1024, 1024, 1, 9)
        assert prediction is not None
        assert prediction.step_s == pytest.approx(step)
        scaled = model.predict(key, 2048, 2048, 1, 9)
        assert scaled is not None
        assert scaled.step_s == pytest.approx(4 * step)
    assert model.predict(("other-model", "cpu", "float32"), 1024, 1024, 1, 9) is None


# -- EtaModel.predict: decode and save ---------------------------------------------------------


def test_decode_and_save_come_from_the_same_size() -> None:
    model = EtaModel(
        [
            job(512, 512, decode=0.0217, save=0.011),
            job(1024, 1024, decode=0.0867, save=0.031),
            job(1024, 1024, decode=0.0901, save=0.029),
            job(1024, 1024, decode=0.0700, save=0.030),
        ]
    )
    prediction = predict(model, 1024, 1024)

    assert prediction.decode_s == pytest.approx(0.0867)
    assert prediction.save_s == pytest.approx(0.030)


def test_decode_and_save_of_an_unseen_size_follow_a_line_in_pixels() -> None:
    model = EtaModel([job(512, 512, save=0.01), job(1024, 1024, save=0.04), job(2048, 2048, save=0.16)])
    prediction = predict(model, 768, 1024)
    pixels = 768 * 1024

    assert prediction.decode_s == pytest.approx(curve_decode(pixels), rel=1e-6)
    # saving: the least-squares line through (262144, .01), (1048576, .04), (4194304, .16)
    xs, ys = [512 * 512, 1024 * 1024, 2048 * 2048], [0.01, 0.04, 0.16]
    b, a = np.polyfit(xs, ys, 1)
    assert prediction.save_s == pytest.approx(a + b * pixels, rel=1e-6)


def test_decode_and_save_with_one_known_size_are_scaled_by_pixels() -> None:
    model = EtaModel([job(1024, 1024, decode=0.0867, save=0.02)])
    prediction = predict(model, 2048, 1024)

    assert prediction.decode_s == pytest.approx(2 * 0.0867)
    assert prediction.save_s == pytest.approx(2 * 0.02)


def test_decode_never_timed_is_a_fraction_of_a_step_and_save_zero() -> None:
    record = JobRecord(*KEY, 1024, 1024, 1, (0.2, 0.144, 0.144), {"encoding": 0.03})
    prediction = predict(EtaModel([record]), 1024, 1024)

    assert prediction.decode_s == pytest.approx(DECODE_PER_STEP * 0.144)
    assert prediction.save_s == 0.0


# -- EtaModel.predict: loading and warm-up -----------------------------------------------------


def test_not_loaded_adds_the_median_load_time() -> None:
    model = EtaModel(
        [
            job(1024, 1024, loading=4.0),
            job(1024, 1024),
            job(1024, 1024, loading=9.0),
            job(1024, 1024, loading=5.0),
        ]
    )
    resident = predict(model, 1024, 1024, loaded=True)
    cold = predict(model, 1024, 1024, loaded=False)

    assert resident.load_s == 0.0
    assert cold.load_s == pytest.approx(5.0)
    assert total(cold) - total(resident) == pytest.approx(5.0)


def test_not_loaded_with_no_load_ever_timed_has_no_total() -> None:
    model = EtaModel([job(1024, 1024)])
    cold = predict(model, 1024, 1024, loaded=False)

    assert cold.load_s is None
    assert cold.total_s is None
    assert predict(model, 1024, 1024).total_s is not None


# The H200 cold start (shared/data/h200-step-profile.json): encode 1278.2 ms, first step 1001.2 ms,
# decode 299.9 ms on the first generation after a load, against 30.4 / ~143.9 / 86.7 ms once warm.
WARM_STEP, WARM_ENCODE, WARM_DECODE = 0.1439, 0.0304, 0.0867
COLD_ENCODE, COLD_FIRST, COLD_DECODE = 1.2782, 1.0012, 0.2999
WARM_UP_EXCESS = (COLD_ENCODE - WARM_ENCODE) + (COLD_FIRST - WARM_STEP) + (COLD_DECODE - WARM_DECODE)


def steady_job() -> JobRecord:
    return job(1024, 1024, first=0.1446, step=WARM_STEP, encode=WARM_ENCODE, decode=WARM_DECODE)


def warm_up_job(width: int = 1024, height: int = 1024, step: float = WARM_STEP) -> JobRecord:
    return job(
        width,
        height,
        first=COLD_FIRST,
        step=step,
        encode=COLD_ENCODE,
        decode=COLD_DECODE,
        loading=6.5,
        warm_up=True,
    )


def test_warm_up_jobs_do_not_pollute_steady_priors() -> None:
    # Warm-up jobs outnumber steady ones, so a median over both would be a warm-up figure.
    model = EtaModel([warm_up_job(), steady_job(), warm_up_job(), warm_up_job()])
    prediction = predict(model, 1024, 1024, warm_up=False)

    assert prediction.step_s == pytest.approx(WARM_STEP)
    assert prediction.encode_s == pytest.approx(WARM_ENCODE)
    assert prediction.decode_s == pytest.approx(WARM_DECODE)
    assert prediction.warmup_s == 0.0


def test_a_one_step_warm_up_job_does_not_become_a_step_prior() -> None:
    # A one-step job has no steady step: its only step is the slow warm-up one.
    one_step = [job(1024, 1024, step_s=[COLD_FIRST], warm_up=True) for _ in range(3)]
    model = EtaModel([*one_step, steady_job()])

    assert predict(model, 1024, 1024).step_s == pytest.approx(WARM_STEP)


def test_warm_up_adds_the_learned_extra() -> None:
    model = EtaModel([steady_job(), steady_job(), warm_up_job(), warm_up_job()])
    warm = predict(model, 1024, 1024, warm_up=False)
    first = predict(model, 1024, 1024, warm_up=True)

    assert abs(WARM_UP_EXCESS - 2.318) < 0.001  # "about 2.2 s extra on the H200"
    assert first.warmup_s == pytest.approx(WARM_UP_EXCESS, rel=1e-6)
    assert total(first) - total(warm) == pytest.approx(WARM_UP_EXCESS, rel=1e-6)
    # The first job after a load: the load and the warm-up both come on top.
    cold = predict(model, 1024, 1024, loaded=False, warm_up=True)
    assert total(cold) == pytest.approx(total(warm) + 6.5 + WARM_UP_EXCESS, rel=1e-6)


def test_warm_up_extra_learned_at_one_size_applies_to_another() -> None:
    model = EtaModel([*(job(w, h) for w, h in KNOWN), warm_up_job(1024, 1024, step=curve_step(4096))])
    prediction = predict(model, 1536, 1536, warm_up=True)

    excess = (
        (COLD_ENCODE - 0.03) + (COLD_FIRST - curve_step(4096)) + (COLD_DECODE - curve_decode(1024 * 1024))
    )
    assert prediction.warmup_s == pytest.approx(excess, rel=1e-3)


def test_a_size_seen_only_in_a_warm_up_job_gets_a_step_prior() -> None:
    model = EtaModel([steady_job(), warm_up_job(768, 768, step=0.0832)])
    prediction = predict(model, 768, 768)

    assert prediction.source == "size"
    assert prediction.step_s == pytest.approx(0.0832)


def test_only_warm_up_jobs_still_predict() -> None:
    model = EtaModel([warm_up_job(768, 768, step=0.0832)])
    prediction = predict(model, 768, 768, warm_up=True)

    assert prediction.step_s == pytest.approx(0.0832)
    assert total(prediction) > 9 * 0.0832


# -- EtaModel.predict: GPU load ----------------------------------------------------------------


def loaded_history(sizes: Sequence[tuple[int, int]], utils: Sequence[float]) -> EtaModel:
    """Each size run at each utilisation; step time × (1 + 0.01·util)."""
    return EtaModel(
        job(w, h, step=curve_step(tokens(w, h, 1)) * (1 + 0.01 * u), gpu_util=u)
        for w, h in sizes
        for u in utils
    )


def test_gpu_load_scales_the_step_by_the_measured_relation() -> None:
    model = loaded_history(KNOWN[:4], [0.0, 40.0, 80.0])
    for width, height in [(1024, 1024), (1024, 1536)]:
        idle = predict(model, width, height, gpu_util=0.0)
        busy = predict(model, width, height, gpu_util=50.0)
        assert idle.step_s == pytest.approx(curve_step(tokens(width, height, 1)), rel=0.01)
        assert busy.step_s / idle.step_s == pytest.approx(1.5, rel=0.01)


def test_gpu_load_relation_from_one_size() -> None:
    model = loaded_history([(1024, 1024)], [0.0, 20.0, 40.0, 60.0, 80.0])
    idle = predict(model, 1024, 1024, gpu_util=0.0)
    busy = predict(model, 1024, 1024, gpu_util=50.0)

    assert idle.step_s == pytest.approx(curve_step(4096), rel=0.01)
    assert busy.step_s == pytest.approx(1.5 * curve_step(4096), rel=0.01)


def test_gpu_util_is_ignored_with_too_few_samples() -> None:
    model = loaded_history([(1024, 1024)], [0.0, 30.0, 60.0, 90.0])
    assert predict(model, 1024, 1024, gpu_util=50.0).step_s == predict(model, 1024, 1024).step_s

    # Jobs without a reading do not count towards the five.
    unread = [job(1024, 1024) for _ in range(4)]
    for record in unread:
        model.add(record)
    assert predict(model, 1024, 1024, gpu_util=50.0).step_s == predict(model, 1024, 1024).step_s


def test_gpu_util_is_ignored_without_spread() -> None:
    model = loaded_history([(1024, 1024)], [30.0, 31.0, 33.0, 35.0, 36.0, 38.0])
    assert predict(model, 1024, 1024, gpu_util=90.0).step_s == predict(model, 1024, 1024).step_s


# -- Prediction.total_s ------------------------------------------------------------------------


def test_total_adds_up_the_phases() -> None:
    prediction = Prediction(
        steps=9, step_s=0.144, encode_s=0.03, decode_s=0.087, save_s=0.02, load_s=6.5, warmup_s=2.2
    )
    assert prediction.total_s == pytest.approx(6.5 + 2.2 + 0.03 + 9 * 0.144 + 0.087 + 0.02)
    assert Prediction(9, 0.144, 0.03, 0.087, 0.02).total_s == pytest.approx(1.433)
    assert Prediction(9, 0.144, 0.03, 0.087, 0.02, load_s=None).total_s is None


# -- LiveEstimate ------------------------------------------------------------------------------

T0 = 1000.0
PRIOR = Prediction(steps=9, step_s=0.1, encode_s=0.03, decode_s=0.06, save_s=0.02, source="size")


def run_steps(live: LiveEstimate, durations: Sequence[float], start: float) -> float:
    """Feed step events as the steps finish; returns the time of the last one."""
    now = start
    for seconds in durations:
        now += seconds
        live.on_step(seconds, now)
    return now


def denoising(prior: Prediction | None, steps: int = 9) -> tuple[LiveEstimate, float]:
    live = LiveEstimate(prior, steps, T0)
    live.on_phase("encoding", T0)
    live.on_phase("denoising", T0 + 0.03)
    return live, T0 + 0.03


def test_live_before_any_phase_is_the_prior_total() -> None:
    live = LiveEstimate(PRIOR, 9, T0)
    assert live.remaining(T0) == pytest.approx(total(PRIOR))
    assert len(live.history) == 1
    assert live.history[0][0] == 0.0
    assert live.history[0][1] == pytest.approx(total(PRIOR))

    cold = Prediction(9, 0.1, 0.03, 0.06, 0.02, load_s=6.5, warmup_s=2.2)
    assert LiveEstimate(cold, 9, T0).remaining(T0) == pytest.approx(total(cold))
    unknown_load = Prediction(9, 0.1, 0.03, 0.06, 0.02, load_s=None)
    assert LiveEstimate(unknown_load, 9, T0).remaining(T0) is None


def test_live_loading_and_encoding_count_down_their_phase() -> None:
    cold = Prediction(9, 0.1, 0.03, 0.06, 0.02, load_s=6.5)
    live = LiveEstimate(cold, 9, T0)
    live.on_phase("loading", T0)
    after_load = 0.03 + 0.9 + 0.06 + 0.02
    assert live.remaining(T0 + 2.0) == pytest.approx(4.5 + after_load)
    assert live.remaining(T0 + 9.0) == pytest.approx(after_load)  # overran: the rest, never less

    live.on_phase("encoding", T0 + 7.0)
    assert live.remaining(T0 + 7.01) == pytest.approx(0.02 + 0.9 + 0.06 + 0.02)
    assert live.remaining(T0 + 8.0) == pytest.approx(0.9 + 0.06 + 0.02)


def test_live_without_a_prior_waits_for_two_steps() -> None:
    live, now = denoising(None)
    assert live.remaining(now) is None

    now = run_steps(live, [0.5], now)  # the first step says nothing about the rest
    assert live.remaining(now) is None

    now = run_steps(live, [0.2], now)
    assert live.remaining(now) == pytest.approx(7 * 0.2 + DECODE_PER_STEP * 0.2)

    now = run_steps(live, [0.3], now)  # median of the steady steps 0.2, 0.3
    assert live.remaining(now) == pytest.approx(6 * 0.25 + DECODE_PER_STEP * 0.25)
    assert [total for _, total in live.history[:4]] == [None, None, None, None]


def blend_weight(observed_steps: int, source: str, observed: float, prior: float) -> float:
    """The documented blend: n / (n + k), k the prior's confidence, which fades once two or more
    steady steps disagree with the prior by more than the steps' own spread."""
    confidence = CONFIDENCE[source]
    if observed_steps >= 2:
        confidence /= 1 + (abs(observed - prior) / prior / PRIOR_TOLERANCE) ** 2
    return observed_steps / (observed_steps + confidence)


def test_live_a_prior_that_agrees_with_the_steps_keeps_its_weight() -> None:
    live, now = denoising(PRIOR, steps=9)
    run_steps(live, [0.13, 0.102, 0.102, 0.102], now)  # 2 % off the prior: ordinary noise

    estimate = known(live.step_estimate())
    assert estimate == pytest.approx(0.1 + 3 / (3 + CONFIDENCE["size"] / 1.04) * 0.002)
    assert blend_weight(3, "size", 0.102, 0.1) < 0.4  # the prior still counts for most


def test_live_a_prior_far_from_the_steps_gives_way_within_two_steps() -> None:
    """An unseen size predicted 40 % short: two steady steps of 0.14 s outweigh a 0.1 s prior."""
    live, now = denoising(PRIOR, steps=9)
    run_steps(live, [0.2, 0.14, 0.14], now)

    # The prior alone would leave the ETA 29 % short; after two steps it is within 5 % of the truth.
    assert known(live.step_estimate()) == pytest.approx(0.14, rel=0.05)


def test_live_observed_steps_gain_weight_as_they_accumulate() -> None:
    live, now = denoising(PRIOR, steps=9)
    now = run_steps(live, [0.35], now)  # first step, excluded
    assert live.step_estimate() == pytest.approx(0.1)

    previous = 0.1
    for k in range(1, 9):
        now = run_steps(live, [0.2], now)
        weight = blend_weight(k, "size", 0.2, 0.1)
        expected = weight * 0.2 + (1 - weight) * 0.1
        estimate = known(live.step_estimate())
        assert estimate == pytest.approx(expected)
        assert previous < estimate < 0.2  # between prior and observed, nearer observed each step
        previous = estimate
        # What the user sees: the steps left at the blended time, decode and save scaled the same way.
        left = 9 - (k + 1)
        decode, save = 0.06 * expected / 0.1, 0.02 * expected / 0.1
        remaining = live.remaining(now)
        if left > 0:
            assert remaining == pytest.approx(left * expected + decode + save)
        else:
            assert remaining == pytest.approx(decode + save)


def test_live_observations_keep_gaining_weight_past_the_recent_window() -> None:
    """A long job under steady contention: after 20 observed steps the observations weigh 20/26,
    not the 8/14 of the last 8 steps only, so the ETA keeps converging on the real speed."""
    prior = Prediction(steps=30, step_s=0.1, encode_s=0.03, decode_s=0.06, save_s=0.02, source="size")
    live, now = denoising(prior, steps=30)
    now = run_steps(live, [0.3] + [0.2] * 20, now)

    weight = blend_weight(20, "size", 0.2, 0.1)
    expected = weight * 0.2 + (1 - weight) * 0.1
    assert live.step_estimate() == pytest.approx(expected)
    assert live.remaining(now) == pytest.approx(9 * expected + 0.08 * expected / 0.1)


@pytest.mark.parametrize("source", ["size", "cost-model", "scaled"])
def test_live_a_less_certain_prior_gives_way_sooner(source: str) -> None:
    prior = Prediction(9, 0.1, 0.03, 0.06, 0.02, source=source)
    live, now = denoising(prior)
    run_steps(live, [0.3, 0.2, 0.2, 0.2], now)

    weight = blend_weight(3, source, 0.2, 0.1)
    assert live.step_estimate() == pytest.approx(weight * 0.2 + (1 - weight) * 0.1)
    assert CONFIDENCE["size"] > CONFIDENCE["cost-model"] > CONFIDENCE["scaled"]


def test_live_one_slow_step_does_not_swing_the_estimate() -> None:
    live, now = denoising(PRIOR)
    now = run_steps(live, [0.13, 0.1, 0.1, 0.1, 1.0, 0.1, 0.1], now)  # one hiccup of 10×

    assert live.step_estimate() == pytest.approx(0.1)
    assert live.remaining(now) == pytest.approx(2 * 0.1 + 0.06 + 0.02)


def test_live_contention_moves_the_eta_up() -> None:
    live, now = denoising(PRIOR)
    prior_total = total(PRIOR)
    now = run_steps(live, [0.26] + [0.2] * 7, now)  # every step twice the prior

    totals = [t for _, t in live.history[3:]]  # after the second step: the blend starts to move
    assert all(t is not None for t in totals)
    known = [t for t in totals if t is not None]
    assert all(later > earlier for earlier, later in itertools.pairwise(known))
    assert known[-1] > prior_total + 0.8  # 0.8 s of slow steps already spent
    # The decode and save that remain are scaled by the same slow-down.
    weight = blend_weight(7, "size", 0.2, 0.1)
    step = weight * 0.2 + (1 - weight) * 0.1
    assert live.remaining(now) == pytest.approx(step + (0.06 + 0.02) * step / 0.1)  # one step to go


def test_live_decoding_and_saving_count_down_and_never_go_negative() -> None:
    live, now = denoising(PRIOR)
    now = run_steps(live, [0.13] + [0.1] * 8, now)
    assert live.remaining(now) == pytest.approx(0.06 + 0.02)

    live.on_phase("decoding", now)
    assert live.remaining(now) == pytest.approx(0.06 + 0.02)
    assert live.remaining(now + 0.04) == pytest.approx(0.02 + 0.02)
    assert live.remaining(now + 5.0) == pytest.approx(0.02)  # decode overran: the save is left

    live.on_phase("saving", now + 0.06)
    assert live.remaining(now + 0.07) == pytest.approx(0.01)
    assert live.remaining(now + 5.0) == 0.0


def test_live_remaining_falls_as_time_passes_within_a_step() -> None:
    live, now = denoising(PRIOR)
    now = run_steps(live, [0.13, 0.1], now)  # 7 steps to go
    floor = 6 * 0.1 + 0.06 + 0.02

    samples = [live.remaining(now + dt) for dt in (0.0, 0.02, 0.05, 0.09, 0.1, 0.5, 3.0)]
    values = [known(s) for s in samples]
    assert values[0] == pytest.approx(7 * 0.1 + 0.06 + 0.02)
    assert values[0] > values[1] > values[2] > values[3] > values[4]
    assert values[4:] == pytest.approx([floor] * 3)  # a late step: held at what is left, never below
    assert all(v >= 0 for v in values)


def test_live_first_step_of_a_warm_up_job_carries_the_warm_up() -> None:
    prior = Prediction(9, 0.1, 0.03, 0.06, 0.02, warmup_s=0.8)
    live, now = denoising(prior)
    assert live.remaining(now) == pytest.approx(0.8 + 0.9 + 0.06 + 0.02)
    now = run_steps(live, [0.9], now)
    assert live.remaining(now) == pytest.approx(0.8 + 0.06 + 0.02)


def test_live_history_records_each_event() -> None:
    live = LiveEstimate(PRIOR, 3, T0)
    live.on_phase("encoding", T0 + 0.01)
    live.on_phase("denoising", T0 + 0.04)
    run_steps(live, [0.12, 0.1, 0.1], T0 + 0.04)
    live.on_phase("decoding", T0 + 0.36)
    live.on_phase("saving", T0 + 0.42)

    elapsed = [e for e, _ in live.history]
    assert elapsed == pytest.approx([0.0, 0.01, 0.04, 0.16, 0.26, 0.36, 0.36, 0.42])
    totals = [t for _, t in live.history]
    prior_total = 0.03 + 3 * 0.1 + 0.06 + 0.02
    assert totals[0] == pytest.approx(prior_total)
    assert totals[1] == pytest.approx(0.01 + prior_total)  # encoding has only just begun
    assert totals[2] == pytest.approx(0.04 + 3 * 0.1 + 0.06 + 0.02)
    assert totals[3] == pytest.approx(0.16 + 2 * 0.1 + 0.06 + 0.02)
    assert totals[-1] == pytest.approx(0.42 + 0.02)


def test_live_warm_up_job_that_runs_as_learned_stays_near_its_actual_time() -> None:
    """A first generation after a load that replays the history it was predicted from (the H200 cold
    start): what the user is told at every event stays within 10 % of the real total."""
    model = EtaModel([steady_job(), steady_job(), warm_up_job()])
    prior = predict(model, 1024, 1024, warm_up=True)
    live = LiveEstimate(prior, 9, T0)
    now = T0
    live.on_phase("encoding", now)
    now += COLD_ENCODE
    live.on_phase("denoising", now)
    now = run_steps(live, [COLD_FIRST] + [WARM_STEP] * 8, now)
    live.on_phase("decoding", now)
    now += COLD_DECODE
    live.on_phase("saving", now)
    actual = now + 0.02 - T0

    assert total(prior) == pytest.approx(actual, rel=1e-6)
    for elapsed, predicted in live.history:
        assert predicted is not None
        assert predicted == pytest.approx(actual, rel=0.10), f"at {elapsed:.3f} s of {actual:.3f} s"


# -- accuracy_points ---------------------------------------------------------------------------


def test_accuracy_points_take_the_latest_prediction_at_or_before_each_point() -> None:
    history: list[tuple[float, float | None]] = [
        (0.0, 10.0),
        (0.5, 11.0),
        (1.0, 11.5),  # exactly 10 % of 10 s: counts
        (2.0, 12.0),
        (4.9, 13.0),
        (5.0, 14.0),  # exactly 50 %
        (7.0, 15.0),
    ]
    assert accuracy_points(history, 10.0) == {0.0: 10.0, 0.1: 11.5, 0.25: 12.0, 0.5: 14.0}


def test_accuracy_points_are_none_before_any_prediction() -> None:
    history: list[tuple[float, float | None]] = [(0.0, None), (0.8, None), (3.0, 9.0), (6.0, 9.5)]
    assert accuracy_points(history, 10.0) == {0.0: None, 0.1: None, 0.25: None, 0.5: 9.0}
    assert accuracy_points([], 10.0) == {0.0: None, 0.1: None, 0.25: None, 0.5: None}
    late: list[tuple[float, float | None]] = [(0.3, 2.0)]
    assert accuracy_points(late, 1.0) == {0.0: None, 0.1: None, 0.25: None, 0.5: 2.0}


def test_accuracy_points_of_a_live_job() -> None:
    live, now = denoising(PRIOR, steps=9)  # denoising from 0.03 s
    now = run_steps(live, [0.26] + [0.2] * 8, now)  # steps end at 0.29, 0.49, 0.69, 0.89, … 1.89 s
    live.on_phase("decoding", now)
    live.on_phase("saving", now + 0.15)
    actual = now + 0.17 - T0  # 2.06 s

    points = accuracy_points(live.history, actual)
    totals = [t for _, t in live.history]
    # 0 %: the prior; 10 % = 0.206 s: the denoising event at 0.03 s; 25 % = 0.515 s: the second step
    # at 0.49 s; 50 % = 1.03 s: the fourth step at 0.89 s.
    assert points == {0.0: totals[0], 0.1: totals[2], 0.25: totals[4], 0.5: totals[6]}
    assert points[0.0] == pytest.approx(total(PRIOR))
    assert len({points[p] for p in points}) == 4
    weight = blend_weight(3, "size", 0.2, 0.1)
    step = weight * 0.2 + (1 - weight) * 0.1
    assert points[0.5] == pytest.approx(0.89 + 5 * step + (0.06 + 0.02) * step / 0.1)


# -- accuracy_report ---------------------------------------------------------------------------


def rows_for(
    width: int, height: int, num_images: int, actual: float, predicted: Sequence[float | None]
) -> list[dict[str, Any]]:
    return [
        {
            "point": point,
            "predicted_total_s": value,
            "actual_total_s": actual,
            "width": width,
            "height": height,
            "num_images": num_images,
        }
        for point, value in zip((0.0, 0.1, 0.25, 0.5), predicted, strict=True)
    ]


def test_accuracy_report_matches_a_hand_computed_example() -> None:
    rows = [
        *rows_for(1024, 1024, 1, 10.0, [12.0, 11.0, 10.5, 10.0]),  # 20 %, 10 %, 5 %, 0 %
        *rows_for(1024, 1024, 1, 20.0, [None, 16.0, 19.0, 21.0]),  # -, 20 %, 5 %, 5 %
        *rows_for(512, 512, 2, 4.0, [5.0, 5.0, 3.0, 4.25]),  # 25 %, 25 %, 25 %, 6.25 %
    ]
    report = accuracy_report(rows)

    assert report["points"] == ["0%", "10%", "25%", "50%"]
    assert report["overall"] == {
        "0%": {"mape_percent": 22.5, "jobs": 2, "none": 1},
        "10%": {"mape_percent": 18.33, "jobs": 3, "none": 0},
        "25%": {"mape_percent": 11.67, "jobs": 3, "none": 0},
        "50%": {"mape_percent": 3.75, "jobs": 3, "none": 0},
    }
    assert list(report["by_size"]) == ["1024x1024", "512x512x2"]
    assert report["by_size"]["1024x1024"] == {
        "0%": {"mape_percent": 20.0, "jobs": 1, "none": 1},
        "10%": {"mape_percent": 15.0, "jobs": 2, "none": 0},
        "25%": {"mape_percent": 5.0, "jobs": 2, "none": 0},
        "50%": {"mape_percent": 2.5, "jobs": 2, "none": 0},
    }
    assert report["by_size"]["512x512x2"] == {
        "0%": {"mape_percent": 25.0, "jobs": 1, "none": 0},
        "10%": {"mape_percent": 25.0, "jobs": 1, "none": 0},
        "25%": {"mape_percent": 25.0, "jobs": 1, "none": 0},
        "50%": {"mape_percent": 6.25, "jobs": 1, "none": 0},
    }


def test_accuracy_report_with_no_rows_or_no_estimates() -> None:
    empty = accuracy_report([])
    nothing = {"mape_percent": None, "jobs": 0, "none": 0}
    assert empty["overall"] == dict.fromkeys(("0%", "10%", "25%", "50%"), nothing)
    assert empty["by_size"] == {}

    unknown = accuracy_report(rows_for(768, 768, 1, 3.0, [None, None, None, None]))
    assert unknown["overall"]["0%"] == {"mape_percent": None, "jobs": 0, "none": 1}
    assert unknown["by_size"]["768x768"]["50%"] == {"mape_percent": None, "jobs": 0, "none": 1}


def test_curve_evaluates_its_formula() -> None:
    assert Curve(0.01, 2e-5, 3e-9)(4096) == pytest.approx(curve_step(4096))
    assert Curve(1.0, 2.0)(3.0) == 7.0
